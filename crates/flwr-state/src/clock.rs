//! Injected wall-clock time and the reference's ISO-8601 timestamp format.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in unix seconds (like Python's `time.time()`).
///
/// Stores take an `Arc<dyn Clock>` so that tests control expiry and liveness.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time in seconds since the unix epoch.
    fn now(&self) -> f64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        // A clock before 1970 is a broken host; treat it as the epoch rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |elapsed| elapsed.as_secs_f64())
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    /// `f64` bit pattern of the current time.
    bits: AtomicU64,
}

impl ManualClock {
    /// A clock showing `now` (unix seconds).
    pub fn new(now: f64) -> Self {
        Self {
            bits: AtomicU64::new(now.to_bits()),
        }
    }

    /// Sets the time to `now`.
    pub fn set(&self, now: f64) {
        self.bits.store(now.to_bits(), Ordering::SeqCst);
    }

    /// Moves the time forward by `seconds`.
    pub fn advance(&self, seconds: f64) {
        // Single writer in practice (the test); a load/store pair is enough.
        self.set(self.now() + seconds);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::SeqCst))
    }
}

/// Formats unix seconds like Python's `datetime.fromtimestamp(t, timezone.utc).isoformat()`:
/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, without the fraction when the microseconds are 0
/// (PROTOCOL.md §4.7). The time is rounded to the nearest microsecond.
pub fn isoformat(unix_seconds: f64) -> String {
    // i64 microseconds cover ±292k years; `as` saturates for out-of-range input.
    let micros = (unix_seconds * 1e6).round() as i64;
    let secs = micros.div_euclid(1_000_000);
    let micro = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if micro != 0 {
        out.push_str(&format!(".{micro:06}"));
    }
    out.push_str("+00:00");
    out
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_matches_python() {
        // datetime.fromtimestamp(1711497600, timezone.utc).isoformat()
        assert_eq!(isoformat(1_711_497_600.0), "2024-03-27T00:00:00+00:00");
        assert_eq!(
            isoformat(1_711_497_600.5),
            "2024-03-27T00:00:00.500000+00:00"
        );
        assert_eq!(isoformat(0.000_001), "1970-01-01T00:00:00.000001+00:00");
        assert_eq!(isoformat(951_782_400.0), "2000-02-29T00:00:00+00:00");
        assert_eq!(
            isoformat(1_735_689_599.999_999),
            "2024-12-31T23:59:59.999999+00:00"
        );
        assert_eq!(
            isoformat(4_102_444_800.25),
            "2100-01-01T00:00:00.250000+00:00"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(10.0);
        assert_eq!(clock.now(), 10.0);
        clock.advance(2.5);
        assert_eq!(clock.now(), 12.5);
        clock.set(1.0);
        assert_eq!(clock.now(), 1.0);
    }
}
