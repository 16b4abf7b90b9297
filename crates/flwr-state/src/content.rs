//! Record sets stored once however many TaskIns carry them.
//!
//! A ServerApp sends the same model to every node it samples, one TaskIns each; kept per
//! TaskIns, a 128 MiB model to 1 000 nodes would be 125 GiB. [`RecordSets`] keeps one copy per
//! distinct content with a reference count, so memory grows with distinct content, not with
//! the number of nodes.
//!
//! Content is matched in two steps so that work stays linear in the request: a [`Sketch`] —
//! sizes, names and the ends of every array, cheap to compute whatever the payload size — finds
//! candidates, and only a candidate with the same sketch is compared in full.

use std::collections::HashMap;
use std::sync::Arc;

use flwr_proto::RecordSet;
use prost::Message;
use sha2::{Digest, Sha256};

/// Bytes taken from each end of an array's data for its sketch.
const SAMPLE: usize = 64;

/// A cheap fingerprint of a record set: equal record sets have equal sketches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sketch([u8; 32]);

impl Sketch {
    /// The sketch of `recordset`, in time proportional to its number of fields, not its bytes.
    pub(crate) fn of(recordset: &RecordSet) -> Self {
        let mut hasher = Sha256::new();
        hasher.update((recordset.encoded_len() as u64).to_le_bytes());
        let mut names: Vec<&String> = recordset.parameters.keys().collect();
        names.sort_unstable();
        for name in names {
            hasher.update(name.as_bytes());
            let Some(record) = recordset.parameters.get(name) else {
                continue;
            };
            for (key, array) in record.data_keys.iter().zip(&record.data_values) {
                hasher.update(key.as_bytes());
                hasher.update((array.data.len() as u64).to_le_bytes());
                let head = &array.data[..array.data.len().min(SAMPLE)];
                let tail = &array.data[array.data.len().saturating_sub(SAMPLE)..];
                hasher.update(head);
                hasher.update(tail);
            }
        }
        Self(hasher.finalize().into())
    }
}

/// Distinct record sets with the number of stored TaskIns holding each.
#[derive(Debug, Default)]
pub(crate) struct RecordSets {
    by_sketch: HashMap<Sketch, Vec<Shared>>,
    distinct: usize,
}

#[derive(Debug)]
struct Shared {
    recordset: Arc<RecordSet>,
    holders: usize,
}

/// Where a stored record set lives, to get it back or release it.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    sketch: Sketch,
    recordset: Arc<RecordSet>,
}

impl Handle {
    /// The record set.
    pub(crate) fn recordset(&self) -> &RecordSet {
        &self.recordset
    }
}

impl RecordSets {
    /// Keeps `recordset`, or one more reference to an equal one already kept.
    pub(crate) fn insert(&mut self, recordset: RecordSet) -> Handle {
        let sketch = Sketch::of(&recordset);
        let candidates = self.by_sketch.entry(sketch).or_default();
        if let Some(shared) = candidates
            .iter_mut()
            .find(|shared| *shared.recordset == recordset)
        {
            shared.holders += 1;
            return Handle {
                sketch,
                recordset: Arc::clone(&shared.recordset),
            };
        }
        let recordset = Arc::new(recordset);
        candidates.push(Shared {
            recordset: Arc::clone(&recordset),
            holders: 1,
        });
        self.distinct += 1;
        Handle { sketch, recordset }
    }

    /// Drops one reference; the record set goes with its last holder.
    pub(crate) fn release(&mut self, handle: &Handle) {
        let Some(candidates) = self.by_sketch.get_mut(&handle.sketch) else {
            return;
        };
        let Some(index) = candidates
            .iter()
            .position(|shared| Arc::ptr_eq(&shared.recordset, &handle.recordset))
        else {
            return;
        };
        candidates[index].holders -= 1;
        if candidates[index].holders == 0 {
            candidates.swap_remove(index);
            self.distinct -= 1;
            if candidates.is_empty() {
                self.by_sketch.remove(&handle.sketch);
            }
        }
    }

    /// How many distinct record sets are kept.
    pub(crate) fn distinct(&self) -> usize {
        self.distinct
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flwr_proto::{Array, ParametersRecord};

    use super::*;

    fn model(fill: u8, len: usize) -> RecordSet {
        RecordSet {
            parameters: HashMap::from([(
                "model".to_owned(),
                ParametersRecord {
                    data_keys: vec!["w".to_owned()],
                    data_values: vec![Array {
                        dtype: "float32".to_owned(),
                        shape: vec![],
                        stype: "numpy.ndarray".to_owned(),
                        data: vec![fill; len].into(),
                    }],
                },
            )]),
            ..RecordSet::default()
        }
    }

    #[test]
    fn equal_content_is_kept_once_until_its_last_holder_goes() {
        let mut sets = RecordSets::default();
        let first = sets.insert(model(1, 1000));
        let second = sets.insert(model(1, 1000));
        assert!(Arc::ptr_eq(&first.recordset, &second.recordset));
        assert_eq!(sets.distinct(), 1);
        sets.release(&first);
        assert_eq!(sets.distinct(), 1);
        sets.release(&second);
        assert_eq!(sets.distinct(), 0);
        assert!(sets.by_sketch.is_empty());
    }

    #[test]
    fn content_that_differs_only_inside_an_array_is_kept_apart() {
        let mut sets = RecordSets::default();
        let plain = model(1, 1000);
        let mut changed = model(1, 1000);
        // Same length and ends, so the same sketch: only the full comparison tells them apart.
        if let Some(record) = changed.parameters.get_mut("model") {
            let mut data = record.data_values[0].data.to_vec();
            data[500] = 2;
            record.data_values[0].data = data.into();
        }
        assert_eq!(Sketch::of(&plain), Sketch::of(&changed));
        let a = sets.insert(plain);
        let b = sets.insert(changed);
        assert!(!Arc::ptr_eq(&a.recordset, &b.recordset));
        assert_eq!(sets.distinct(), 2);
        sets.release(&b);
        assert_eq!(sets.distinct(), 1);
        assert_eq!(
            a.recordset().parameters["model"].data_values[0].data[500],
            1
        );
    }
}
