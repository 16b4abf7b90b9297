//! Wake-ups for held pulls: "a TaskIns for node N", "a TaskRes (or a status change) for run
//! R", "a run is pending" — events per key, never a scan.
//!
//! A held `PullTaskIns` subscribes to its node's topic, a held `PullTaskRes` to its run's; the
//! handlers that change what those pulls would return publish to the same topic after the
//! store accepted the change. A subscriber *arms* before it looks at the store, so a publish
//! that lands between its look and its wait still wakes it. Topics exist only while somebody
//! waits on them, and the number of held calls is capped ([`MAX_HELD`]): past it a pull is
//! answered at once, as the reference would.
//!
//! Within one process this is a [`Notify`] per topic. A store shared by several SuperLinks can
//! feed the same [`Wakeups::publish`] from its own notifications (e.g. PostgreSQL's
//! LISTEN/NOTIFY), so the handlers do not change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most calls held at once; a pull past it is answered immediately (a few KiB each, so the
/// cap bounds memory well below what the connection cap allows).
pub const MAX_HELD: usize = 131_072;

/// What a held call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// TaskIns for this consumer (`None`: anonymous consumers), or the node went away.
    Node(Option<u64>),
    /// A TaskRes for this run, or the run changed status.
    Run(u64),
}

/// The event hub of one SuperLink; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Wakeups {
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
    held: AtomicUsize,
    max_held: usize,
    closed: CancellationToken,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self::with_capacity(MAX_HELD)
    }
}

impl Wakeups {
    /// A hub that holds at most `max_held` calls at once.
    pub fn with_capacity(max_held: usize) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            max_held,
            closed: CancellationToken::new(),
        }
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<Topic, Arc<Notify>>> {
        // Plain map operations only; a panic elsewhere cannot leave it inconsistent.
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes every call held on `topic` (none is a no-op).
    pub fn publish(&self, topic: Topic) {
        if let Some(notify) = self.topics().get(&topic) {
            notify.notify_waiters();
        }
    }

    /// Ends every held call and refuses new holds: the server is shutting down.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Calls held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A subscription to `topic`, or `None` when the hub is closed or full (answer at once).
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> Option<Subscription> {
        if self.closed.is_cancelled() {
            return None;
        }
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max_held).then_some(held + 1)
            });
        if reserved.is_err() {
            return None;
        }
        let notify = Arc::clone(self.topics().entry(topic).or_default());
        Some(Subscription {
            hub: Arc::clone(self),
            topic,
            notify,
        })
    }
}

/// Why a held call stopped waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Something was published on the topic: look again.
    Published,
    /// The hold's bound passed.
    Expired,
    /// The server is shutting down.
    Closed,
}

/// One held call's interest in a topic; dropping it (also when the client goes away) releases
/// the topic once nobody else waits on it.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Wakeups>,
    topic: Topic,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Arms a wait: a publish from now on is not missed, even before [`Armed::wait`] runs.
    pub fn arm(&self) -> Armed<'_> {
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        Armed {
            notified,
            closed: &self.hub.closed,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.held.fetch_sub(1, Ordering::AcqRel);
        let mut topics = self.hub.topics();
        // The map's reference and ours: nobody else waits, so the topic goes.
        if Arc::strong_count(&self.notify) == 2 {
            topics.remove(&self.topic);
        }
    }
}

/// An armed wait of a [`Subscription`].
pub struct Armed<'a> {
    notified: std::pin::Pin<Box<Notified<'a>>>,
    closed: &'a CancellationToken,
}

impl std::fmt::Debug for Armed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").finish_non_exhaustive()
    }
}

impl Armed<'_> {
    /// Waits for a publish, the deadline or shutdown, whichever comes first (a publish wins a
    /// tie, so a result that arrived is never left behind).
    pub async fn wait(self, deadline: Instant) -> Wake {
        let Self { notified, closed } = self;
        tokio::select! {
            biased;
            () = notified => Wake::Published,
            () = closed.cancelled() => Wake::Closed,
            () = tokio::time::sleep_until(deadline) => Wake::Expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn later(millis: u64) -> Instant {
        Instant::now() + Duration::from_millis(millis)
    }

    #[tokio::test]
    async fn a_publish_between_arming_and_waiting_is_not_lost() {
        let hub = Arc::new(Wakeups::default());
        let subscription = hub.subscribe(Topic::Node(Some(7))).expect("room");
        let armed = subscription.arm();
        hub.publish(Topic::Node(Some(7)));
        assert_eq!(armed.wait(later(5_000)).await, Wake::Published);
    }

    #[tokio::test]
    async fn other_topics_do_not_wake_and_the_bound_ends_the_wait() {
        let hub = Arc::new(Wakeups::default());
        let subscription = hub.subscribe(Topic::Run(1)).expect("room");
        let armed = subscription.arm();
        hub.publish(Topic::Run(2));
        hub.publish(Topic::Node(Some(1)));
        assert_eq!(armed.wait(later(20)).await, Wake::Expired);
    }

    #[tokio::test]
    async fn close_ends_held_calls_and_refuses_new_ones() {
        let hub = Arc::new(Wakeups::default());
        let subscription = hub.subscribe(Topic::Run(1)).expect("room");
        let armed = subscription.arm();
        hub.close();
        assert_eq!(armed.wait(later(5_000)).await, Wake::Closed);
        assert!(hub.subscribe(Topic::Run(1)).is_none());
    }

    #[test]
    fn topics_and_counts_are_released_with_the_last_subscriber() {
        let hub = Arc::new(Wakeups::with_capacity(2));
        let first = hub.subscribe(Topic::Run(1)).expect("room");
        let second = hub.subscribe(Topic::Run(1)).expect("room");
        assert!(hub.subscribe(Topic::Run(2)).is_none(), "capacity is 2");
        assert_eq!(hub.held(), 2);
        drop(first);
        assert_eq!(hub.topics().len(), 1, "still waited on");
        drop(second);
        assert_eq!(hub.topics().len(), 0);
        assert_eq!(hub.held(), 0);
        assert!(hub.subscribe(Topic::Run(2)).is_some());
    }
}
