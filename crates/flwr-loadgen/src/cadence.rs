//! `--mode cadence`: every node idles as a Flower 1.14 SuperNode does between runs.
//!
//! From `flwr/client/grpc_rere_client/connection.py` (BEHAVIOR.md §2.3, §2.4):
//!
//! - the ping thread sends `Ping{node, ping_interval: 30}` with a 5 s deadline right after
//!   CreateNode, then every `(30 − 5) × (0.8 + U(−0.1, 0.1))` s, i.e. 17.5–22.5 s; after a
//!   failed Ping it backs off exponentially from 1 s with full jitter;
//! - the main loop sends `PullTaskIns{node}` and sleeps 3 s after an empty answer.
//!
//! Unlike the reference, a node whose Ping answers `success: false` keeps pinging (the
//! reference's ping thread dies; that is counted as `ping_unsuccessful` here), and a TaskIns
//! is counted and dropped rather than run.
//!
//! Nodes start their loops as soon as they are registered, but each at a random phase of its
//! ping period and pull interval: a fleet at rest has nodes that joined at all times, while
//! nodes registered within a second of each other and started in step would all pull in the
//! same instant every 3 s and measure a burst instead. (CreateNode already keeps a node online
//! for 30 s, longer than the first ping may wait.) Only calls sent inside the measurement
//! window are recorded.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Rpc;
use crate::node::SimNode;
use crate::recorder::{Call, Outcome, Recorder};

/// `PING_DEFAULT_INTERVAL − PING_CALL_TIMEOUT` of the reference, in seconds.
const PING_PERIOD_SECONDS: f64 = 30.0 - 5.0;
/// The reference's `PING_BASE_MULTIPLIER`.
const PING_BASE_MULTIPLIER: f64 = 0.8;
/// The reference's `PING_RANDOM_RANGE` (symmetric).
const PING_RANDOM_RANGE: f64 = 0.1;
/// The reference's `PING_CALL_TIMEOUT`.
pub(crate) const PING_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off cap after failures; the reference has none, but a test has a bounded length.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The measurement window, set once registration is over.
#[derive(Debug, Default)]
pub(crate) struct Window {
    bounds: OnceLock<(Instant, Instant)>,
}

impl Window {
    /// Opens the window `[start, end)`.
    pub(crate) fn open(&self, start: Instant, end: Instant) {
        // Opened once per test; a second call would be a bug and keeps the first window.
        self.bounds.set((start, end)).ok();
    }

    /// Whether a call sent at `sent` belongs to the measurement.
    pub(crate) fn contains(&self, sent: Instant) -> bool {
        self.bounds
            .get()
            .is_some_and(|(start, end)| *start <= sent && sent < *end)
    }
}

/// What the loops of every node share.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    /// When to record.
    pub(crate) window: Arc<Window>,
    /// Where to record.
    pub(crate) recorder: Arc<Recorder>,
    /// Cancelled when the window closes; loops stop at their next sleep.
    pub(crate) stop: CancellationToken,
    /// Sleep after an answered PullTaskIns.
    pub(crate) pull_interval: Duration,
    /// Deadline of a PullTaskIns.
    pub(crate) call_timeout: Duration,
}

/// The reference's heartbeat loop for one node.
pub(crate) async fn ping_loop(node: Arc<SimNode>, shared: Shared) {
    let mut backoff = Backoff::default();
    let phase = ping_period().mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    if !pause_for(&shared, phase).await {
        return;
    }
    loop {
        let sent = Instant::now();
        let outcome = node.call(Rpc::Ping, PING_CALL_TIMEOUT).await;
        let wait = match outcome {
            Outcome::Failed(..) | Outcome::Local(..) => backoff.next(),
            _ => {
                backoff = Backoff::default();
                ping_period()
            }
        };
        if shared.window.contains(sent) {
            shared
                .recorder
                .record(node.index, Call::Ping, sent.elapsed(), outcome);
        }
        if !pause_for(&shared, wait).await {
            return;
        }
    }
}

/// The reference's main loop for one node, without tasks to run.
pub(crate) async fn pull_loop(node: Arc<SimNode>, shared: Shared) {
    let mut backoff = Backoff::default();
    let phase = shared
        .pull_interval
        .mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    if !pause_for(&shared, phase).await {
        return;
    }
    loop {
        let sent = Instant::now();
        let outcome = node.call(Rpc::Pull, shared.call_timeout).await;
        let wait = match outcome {
            Outcome::Failed(..) | Outcome::Local(..) => backoff.next(),
            _ => {
                backoff = Backoff::default();
                shared.pull_interval
            }
        };
        if shared.window.contains(sent) {
            shared
                .recorder
                .record(node.index, Call::PullTaskIns, sent.elapsed(), outcome);
        }
        if !pause_for(&shared, wait).await {
            return;
        }
    }
}

/// One wait of the reference's ping thread: `(30 − 5) × (0.8 + U(−0.1, 0.1))` seconds.
fn ping_period() -> Duration {
    let jitter = rand::thread_rng().gen_range(-PING_RANDOM_RANGE..PING_RANDOM_RANGE);
    Duration::from_secs_f64(PING_PERIOD_SECONDS * (PING_BASE_MULTIPLIER + jitter))
}

/// Sleeps for `duration`; `false` if the window closed first and the loop must end.
pub(crate) async fn pause_for(shared: &Shared, duration: Duration) -> bool {
    tokio::select! {
        () = shared.stop.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

/// Exponential back-off from 1 s with full jitter, as the reference's retry invoker.
#[derive(Debug)]
pub(crate) struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The next wait: uniform in `[0, ceiling)`, and the ceiling doubles up to [`MAX_BACKOFF`].
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.ceiling.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        self.ceiling = (self.ceiling * 2).min(MAX_BACKOFF);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_only_calls_sent_inside_it() {
        let window = Window::default();
        let now = Instant::now();
        assert!(!window.contains(now));
        window.open(now, now + Duration::from_secs(1));
        assert!(window.contains(now));
        assert!(!window.contains(now + Duration::from_secs(1)));
    }

    #[test]
    fn ping_periods_follow_the_reference_jitter() {
        for _ in 0..100 {
            let period = ping_period().as_secs_f64();
            assert!((17.5..=22.5).contains(&period), "{period}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::default();
        for _ in 0..20 {
            assert!(backoff.next() <= MAX_BACKOFF);
        }
        assert_eq!(backoff.ceiling, MAX_BACKOFF);
    }
}
