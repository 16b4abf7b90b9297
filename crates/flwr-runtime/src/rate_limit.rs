use std::time::{Duration, Instant};

/// Lets an event through at most once per interval and counts what it held back, so that a
/// peer that can trigger a log line at will cannot flood the log.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// At most one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event should be reported, `n` being how many were held back since
    /// the last report; `None` when it falls inside the interval.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_with_the_count_held_back() {
        let mut limit = RateLimited::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.check_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(limit.check_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(limit.check_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(limit.check_at(start + Duration::from_secs(11)), None);
        assert_eq!(limit.check_at(start + Duration::from_secs(21)), Some(1));
    }
}
