//! A small least-recently-used map for the SuperNode's per-run state.
//!
//! A SuperNode lives for months and serves run after run, but Fleet never says when a run ends
//! (only `PERMISSION_DENIED` hints at it). Runs, FABs and contexts are therefore kept in maps
//! with a fixed capacity that forget the entry used longest ago. Capacities are a few dozen, so
//! eviction scans the map instead of keeping an ordered index.

use std::collections::HashMap;
use std::hash::Hash;

/// A map of at most `capacity` entries that evicts the least recently used one.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    capacity: usize,
    /// Each value with the tick of its last use.
    entries: HashMap<K, (u64, V)>,
    tick: u64,
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            tick: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// The value for `key`, marked as just used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let tick = self.next_tick();
        let (used, value) = self.entries.get_mut(key)?;
        *used = tick;
        Some(value)
    }

    /// Stores `value` under `key`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let tick = self.next_tick();
        self.entries.insert(key, (tick, value));
    }

    /// Forgets `key`.
    pub(crate) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// How many entries are stored.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert(1, "a");
        lru.insert(2, "b");
        // Using 1 makes 2 the oldest.
        assert_eq!(lru.get_mut(&1).copied(), Some("a"));
        lru.insert(3, "c");
        assert_eq!(lru.len(), 2);
        assert!(lru.get_mut(&2).is_none());
        assert!(lru.get_mut(&1).is_some() && lru.get_mut(&3).is_some());
        // Replacing an entry evicts nothing.
        lru.insert(3, "d");
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get_mut(&3).copied(), Some("d"));
        lru.remove(&3);
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn never_grows_past_capacity() {
        let mut lru = Lru::new(64);
        for run in 0..1000_u64 {
            lru.insert(run, run);
        }
        assert_eq!(lru.len(), 64);
        assert!(lru.get_mut(&999).is_some());
        assert!(lru.get_mut(&0).is_none());
    }
}
