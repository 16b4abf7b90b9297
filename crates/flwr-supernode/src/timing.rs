//! Retry back-off, heartbeat and idle-poll timing as pure functions of attempt counts, elapsed
//! time and injected randomness (BEHAVIOR.md §2.3, §2.8, §12).
//!
//! Nothing here sleeps or reads a clock: callers pass the elapsed time and a uniform sample in
//! `[0, 1)`, and get back what to do. That keeps the reference's arithmetic testable exactly.

use std::time::Duration;

/// Cap of the main-loop sequence: 1, 2, 4, 8, 16, 20, 20, ... seconds.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(20);

/// `ping_interval` sent in `CreateNode` and `Ping`, in seconds.
pub const PING_INTERVAL_SECONDS: f64 = 30.0;

/// Deadline of one `Ping` call.
pub const PING_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two `PullTaskIns` calls that returned nothing usable.
pub const IDLE_POLL: Duration = Duration::from_secs(3);

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Retry {
    /// Stop retrying and surface the last error.
    GiveUp,
    /// Sleep this long, then attempt again.
    Wait(Duration),
}

/// The retry limits of `--max-retries` and `--max-wait-time`, applied per call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (`None`: unlimited). `Some(0)` means a single attempt.
    pub max_retries: Option<u32>,
    /// Time after the first attempt's start past which no new attempt starts (`None`: unlimited).
    pub max_wait: Option<Duration>,
}

impl RetryPolicy {
    /// Decides what follows the failure of attempt number `tries` (1-based).
    ///
    /// `started_after` is how long after the *first* attempt this failed attempt started (the
    /// reference measures elapsed time before calling), and `jitter` a uniform sample in
    /// `[0, 1)`. Mirrors the reference's invoker: give up when the attempt budget is spent or
    /// the attempt started at or after `max_wait`; otherwise wait a "full jitter" fraction of
    /// the nominal delay, truncated to the time left.
    pub fn after_failure(&self, tries: u32, started_after: Duration, jitter: f64) -> Retry {
        let max_tries_reached = self
            .max_retries
            .is_some_and(|retries| u64::from(tries) > u64::from(retries));
        let max_time_reached = self.max_wait.is_some_and(|max| started_after >= max);
        if max_tries_reached || max_time_reached {
            return Retry::GiveUp;
        }
        let mut wait = full_jitter(exponential(tries, Some(MAX_RETRY_DELAY)), jitter);
        if let Some(max) = self.max_wait {
            wait = wait.min(max.saturating_sub(started_after));
        }
        Retry::Wait(wait)
    }
}

/// `UNAUTHENTICATED` answers in a row that one call retries before giving up. The reference
/// gives up on the first; a SuperLink whose allow-list is being rewritten may refuse a listed
/// key for a moment, so a few refusals are ridden out with the usual back-off.
pub const UNAUTHENTICATED_RETRIES: u32 = 3;

impl RetryPolicy {
    /// Decides what follows an `UNAUTHENTICATED` answer: give up after the
    /// [`UNAUTHENTICATED_RETRIES`]th refusal in a row (`refusals` is 1-based), otherwise as
    /// [`RetryPolicy::after_failure`], whose limits still apply.
    pub fn after_refusal(
        &self,
        refusals: u32,
        tries: u32,
        started_after: Duration,
        jitter: f64,
    ) -> Retry {
        if refusals > UNAUTHENTICATED_RETRIES {
            return Retry::GiveUp;
        }
        self.after_failure(tries, started_after, jitter)
    }
}

/// Nominal delay after failure number `tries` (1-based): 1 s doubled per failure, optionally
/// capped. `tries == 0` is treated as 1.
pub fn exponential(tries: u32, cap: Option<Duration>) -> Duration {
    let doublings = tries.saturating_sub(1);
    // Past 2^63 s the delay is unrepresentable anyway; saturate instead of overflowing.
    let nominal = 1_u64
        .checked_shl(doublings)
        .map_or(Duration::MAX, Duration::from_secs);
    match cap {
        Some(cap) => nominal.min(cap),
        None => nominal,
    }
}

/// "Full jitter": a uniform fraction of `nominal`. `jitter` is clamped into `[0, 1]`.
pub fn full_jitter(nominal: Duration, jitter: f64) -> Duration {
    let fraction = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    nominal.mul_f64(fraction)
}

/// Pause after a successful `Ping`: `(30 − 5) × (0.8 + U(−0.1, 0.1))`, i.e. 17.5 to 22.5 s,
/// given a uniform sample `jitter` in `[0, 1)`.
pub fn ping_pause(jitter: f64) -> Duration {
    let sample = if jitter.is_nan() {
        0.5
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let offset = -0.1 + 0.2 * sample;
    let seconds = (PING_INTERVAL_SECONDS - PING_CALL_TIMEOUT.as_secs_f64()) * (0.8 + offset);
    Duration::from_secs_f64(seconds)
}

/// Wait after failed ping number `tries`: full jitter over 1, 2, 4, ... s, reduced by the 5 s
/// call deadline when the attempt timed out (never below zero).
///
/// The reference never caps this sequence; after a long SuperLink outage its pings could be
/// minutes apart while the node already works again, and the SuperLink would treat it as
/// offline. We cap it at [`MAX_RETRY_DELAY`], which stays well inside the 30 s ping interval.
pub fn ping_retry_wait(tries: u32, timed_out: bool, jitter: f64) -> Duration {
    let wait = full_jitter(exponential(tries, Some(MAX_RETRY_DELAY)), jitter);
    if timed_out {
        wait.saturating_sub(PING_CALL_TIMEOUT)
    } else {
        wait
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn nominal_sequence_matches_reference() {
        let seq: Vec<u64> = (1..=8)
            .map(|t| exponential(t, Some(MAX_RETRY_DELAY)).as_secs())
            .collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(exponential(11, None).as_secs(), 1024);
        assert_eq!(exponential(u32::MAX, None), Duration::MAX);
    }

    #[test]
    fn max_retries_counts_attempts() {
        let policy = RetryPolicy {
            max_retries: Some(2),
            max_wait: None,
        };
        // N retries = N + 1 attempts.
        assert!(matches!(
            policy.after_failure(1, Duration::ZERO, 0.5),
            Retry::Wait(_)
        ));
        assert!(matches!(
            policy.after_failure(2, Duration::ZERO, 0.5),
            Retry::Wait(_)
        ));
        assert_eq!(policy.after_failure(3, Duration::ZERO, 0.5), Retry::GiveUp);
        let single = RetryPolicy {
            max_retries: Some(0),
            max_wait: None,
        };
        assert_eq!(single.after_failure(1, Duration::ZERO, 0.5), Retry::GiveUp);
    }

    #[test]
    fn max_wait_truncates_last_sleep() {
        let policy = RetryPolicy {
            max_retries: None,
            max_wait: Some(secs(4.0)),
        };
        // Nominal 4 s with jitter 1.0 would overshoot; only 0.5 s are left.
        assert_eq!(
            policy.after_failure(3, secs(3.5), 1.0),
            Retry::Wait(secs(0.5))
        );
        assert_eq!(policy.after_failure(5, secs(4.0), 0.1), Retry::GiveUp);
    }

    #[test]
    fn refusals_are_retried_a_bounded_number_of_times() {
        let unlimited = RetryPolicy::default();
        for refusals in 1..=UNAUTHENTICATED_RETRIES {
            assert!(matches!(
                unlimited.after_refusal(refusals, refusals, Duration::ZERO, 0.5),
                Retry::Wait(_)
            ));
        }
        let last = UNAUTHENTICATED_RETRIES + 1;
        assert_eq!(
            unlimited.after_refusal(last, last, Duration::ZERO, 0.5),
            Retry::GiveUp
        );
        // `--max-retries` still bounds the call.
        let single = RetryPolicy {
            max_retries: Some(0),
            max_wait: None,
        };
        assert_eq!(
            single.after_refusal(1, 1, Duration::ZERO, 0.5),
            Retry::GiveUp
        );
    }

    #[test]
    fn ping_pause_range() {
        assert_eq!(ping_pause(0.0), secs(17.5));
        assert_eq!(ping_pause(0.5), secs(20.0));
        assert!((ping_pause(1.0).as_secs_f64() - 22.5).abs() < 1e-9);
    }

    #[test]
    fn ping_deadline_shortens_wait() {
        assert_eq!(ping_retry_wait(4, true, 1.0), secs(3.0));
        assert_eq!(ping_retry_wait(1, true, 1.0), Duration::ZERO);
        assert_eq!(ping_retry_wait(4, false, 1.0), secs(8.0));
    }

    proptest! {
        // Waits stay inside [0, nominal] and never pass the wait budget.
        #[test]
        fn wait_is_bounded(
            tries in 1_u32..200,
            started_ms in 0_u64..100_000,
            jitter in 0.0_f64..1.0,
            max_retries in proptest::option::of(0_u32..50),
            max_wait_ms in proptest::option::of(0_u64..100_000),
        ) {
            let policy = RetryPolicy {
                max_retries,
                max_wait: max_wait_ms.map(Duration::from_millis),
            };
            let started = Duration::from_millis(started_ms);
            match policy.after_failure(tries, started, jitter) {
                Retry::GiveUp => {
                    let by_tries = max_retries.is_some_and(|r| tries > r);
                    let by_time = max_wait_ms.is_some_and(|m| started_ms >= m);
                    prop_assert!(by_tries || by_time);
                }
                Retry::Wait(wait) => {
                    prop_assert!(wait <= exponential(tries, Some(MAX_RETRY_DELAY)));
                    prop_assert!(wait <= MAX_RETRY_DELAY);
                    if let Some(m) = max_wait_ms {
                        prop_assert!(started + wait <= Duration::from_millis(m));
                    }
                    if let Some(r) = max_retries {
                        prop_assert!(tries <= r);
                    }
                }
            }
        }

        // The nominal sequence never decreases and doubles until the cap.
        #[test]
        fn nominal_is_monotonic(tries in 1_u32..1000) {
            let now = exponential(tries, Some(MAX_RETRY_DELAY));
            let next = exponential(tries + 1, Some(MAX_RETRY_DELAY));
            prop_assert!(next >= now);
            prop_assert!(next == MAX_RETRY_DELAY || next == now * 2);
        }

        // Jitter scales linearly: the wait is `jitter × nominal`.
        #[test]
        fn jitter_is_linear(tries in 1_u32..10, jitter in 0.0_f64..1.0) {
            let policy = RetryPolicy::default();
            let nominal = exponential(tries, Some(MAX_RETRY_DELAY)).as_secs_f64();
            match policy.after_failure(tries, Duration::ZERO, jitter) {
                Retry::Wait(wait) => prop_assert!((wait.as_secs_f64() - nominal * jitter).abs() < 1e-6),
                Retry::GiveUp => prop_assert!(false, "unlimited policy gave up"),
            }
        }

        // Pings are always 17.5 to 22.5 s apart.
        #[test]
        fn ping_pause_in_range(jitter in any::<f64>()) {
            let pause = ping_pause(jitter).as_secs_f64();
            prop_assert!((17.5 - 1e-9..=22.5 + 1e-9).contains(&pause));
        }
    }
}
