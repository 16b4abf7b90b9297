//! The wall clock as Flower's messages and runs count it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now, as the reference's `time.time()`: the unit of `created_at`, `pushed_at`
/// and the run timestamps. A clock set before 1970 reads as 0.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2024() {
        // 2024-01-01T00:00:00Z
        assert!(unix_now() > 1_704_067_200.0);
    }
}
