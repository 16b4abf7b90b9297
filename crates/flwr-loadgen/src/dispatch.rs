//! `--mode dispatch`: how long a TaskIns takes from the ServerApp's PushTaskIns to the
//! SuperNode that has it.
//!
//! Every node keeps one PullTaskIns outstanding, asking for a hold with
//! [`flwr_core::hold::REQUEST_HEADER`]; when an empty reply comes back without
//! [`flwr_core::hold::REPLY_HEADER`] (a SuperLink that does not hold, like the Python one) it
//! sleeps `--pull-interval` (the reference's 3 s), as a 1.14 SuperNode does, and after a
//! TaskIns it pulls again at once, as a 1.14 SuperNode does after running one. With `--hold 0`
//! a node is a 1.14 SuperNode throughout: it asks for no hold and sleeps after every empty
//! reply, held or not. Nodes Ping as in
//! cadence mode ([`crate::cadence::ping_loop`]).
//!
//! Meanwhile the generator, acting as the ServerApp, pushes one TaskIns at a time through the
//! ServerAppIo API at `--rate` per second, each to a node chosen at random. The push time is
//! taken just before the PushTaskIns call and kept under a sequence number that the TaskIns
//! carries in its `group_id`, so a node that receives the TaskIns before the push is even
//! answered still finds it; latency = receive time − push time, both on this process's
//! monotonic clock. Nodes push no TaskRes: a ServerApp's round keeps its TaskIns stored too,
//! until it pulls the replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{Node, PushTaskInsRequest, RecordSet, Task, TaskIns};
use flwr_runtime::clock::unix_now;
use hdrhistogram::Histogram;
use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::cadence::{self, Backoff};
use crate::node::SimNode;
use crate::recorder::{Call, Outcome, Recorder};
use crate::report::{DispatchReport, Latency};

/// `group_id` of a pushed TaskIns: this prefix and the push's sequence number.
const GROUP_PREFIX: &str = "flwr-loadgen-dispatch-";

/// PushTaskIns calls in flight at once; past it the pusher waits, so a SuperLink that stops
/// answering slows the schedule instead of piling up calls.
const MAX_PUSHES_IN_FLIGHT: usize = 256;

/// Lifetime of a TaskIns beyond the window and grace, so none expires before it can be
/// delivered, and leftovers do expire.
const TTL_MARGIN: Duration = Duration::from_secs(60);

/// Largest latency recorded exactly, in microseconds; longer ones count as this.
const MAX_MICROS: u64 = 60_000_000;

/// The pushed TaskIns of one test, from push to delivery.
#[derive(Debug)]
pub(crate) struct Tracker {
    run_id: u64,
    book: Mutex<Book>,
    pushed: AtomicU64,
    push_failed: AtomicU64,
    delivered: AtomicU64,
    unexpected: AtomicU64,
    pull_replies: AtomicU64,
    held_replies: AtomicU64,
}

/// What the tracker's lock guards: the TaskIns not yet delivered and the latencies of those
/// that were.
#[derive(Debug)]
struct Book {
    /// By sequence number: when the push started, and whether the SuperLink stored it.
    pending: HashMap<u64, Pending>,
    /// Push → delivery, in microseconds.
    latency: Histogram<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    sent: Instant,
    stored: bool,
}

impl Tracker {
    /// A tracker for TaskIns of run `run_id`.
    pub(crate) fn new(run_id: u64) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            run_id,
            book: Mutex::new(Book {
                pending: HashMap::new(),
                latency: Histogram::new_with_bounds(1, MAX_MICROS, 3)?,
            }),
            pushed: AtomicU64::new(0),
            push_failed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            pull_replies: AtomicU64::new(0),
            held_replies: AtomicU64::new(0),
        })
    }

    /// The run the TaskIns belong to.
    pub(crate) fn run_id(&self) -> u64 {
        self.run_id
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Held for a map operation or one record, never across an await; a panic elsewhere
        // cannot leave the map inconsistent.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Push `sequence` starts now.
    fn begin(&self, sequence: u64, sent: Instant) {
        self.book().pending.insert(
            sequence,
            Pending {
                sent,
                stored: false,
            },
        );
    }

    /// The SuperLink stored push `sequence` (it may have been delivered already).
    fn stored(&self, sequence: u64) {
        self.pushed.fetch_add(1, Ordering::Relaxed);
        if let Some(pending) = self.book().pending.get_mut(&sequence) {
            pending.stored = true;
        }
    }

    /// Push `sequence` failed: it is not waited for.
    fn failed(&self, sequence: u64) {
        self.push_failed.fetch_add(1, Ordering::Relaxed);
        self.book().pending.remove(&sequence);
    }

    /// A node received `task_ins` at `received`.
    fn deliver(&self, task_ins: &TaskIns, received: Instant) {
        let sequence = (task_ins.run_id == self.run_id)
            .then(|| task_ins.group_id.strip_prefix(GROUP_PREFIX))
            .flatten()
            .and_then(|number| number.parse::<u64>().ok());
        let mut book = self.book();
        let Some(pending) = sequence.and_then(|sequence| book.pending.remove(&sequence)) else {
            drop(book);
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let micros =
            u64::try_from(received.duration_since(pending.sent).as_micros()).unwrap_or(MAX_MICROS);
        book.latency.saturating_record(micros.max(1));
        drop(book);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A PullTaskIns was answered, held or not.
    fn reply(&self, held: bool) {
        self.pull_replies.fetch_add(1, Ordering::Relaxed);
        if held {
            self.held_replies.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pushes not yet answered plus stored TaskIns not yet delivered.
    fn waiting(&self) -> usize {
        self.book().pending.len()
    }

    /// Waits until every push is answered and delivered, or until `deadline`.
    pub(crate) async fn settle(&self, deadline: Instant) {
        // Polling is cheap at this period and keeps the delivery path free of wake-ups.
        while self.waiting() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The report's dispatch section.
    pub(crate) fn report(
        &self,
        rate: f64,
        hold: Option<Duration>,
        grace: Duration,
        push_latency: Latency,
    ) -> DispatchReport {
        let book = self.book();
        let not_delivered = book
            .pending
            .values()
            .filter(|pending| pending.stored)
            .count() as u64;
        DispatchReport {
            run_id: self.run_id,
            rate,
            hold_ms: hold.map_or(0, |hold| {
                u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)
            }),
            pushed: self.pushed.load(Ordering::Relaxed),
            push_failed: self.push_failed.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            not_delivered,
            unexpected: self.unexpected.load(Ordering::Relaxed),
            grace_s: grace.as_secs_f64(),
            pull_replies: self.pull_replies.load(Ordering::Relaxed),
            held_replies: self.held_replies.load(Ordering::Relaxed),
            latency: Latency::of(&book.latency),
            push_latency,
        }
    }
}

/// What the pull loops of every node share.
#[derive(Clone, Debug)]
pub(crate) struct Pulls {
    /// Window, recorder, stop and the sleep after an unheld empty pull.
    pub(crate) cadence: cadence::Shared,
    /// The [`flwr_core::hold::REQUEST_HEADER`] value, `None` to ask for no hold.
    pub(crate) hold: Option<MetadataValue<Ascii>>,
    /// Deadline of one PullTaskIns: the hold plus a call's own deadline.
    pub(crate) deadline: Duration,
    /// Where deliveries go.
    pub(crate) tracker: Arc<Tracker>,
}

/// One node's main loop: a PullTaskIns always outstanding, held where the SuperLink holds.
pub(crate) async fn pull_loop(node: Arc<SimNode>, pulls: Pulls) {
    let shared = &pulls.cadence;
    let mut backoff = Backoff::default();
    // Without holds the nodes poll; spread their phases as cadence mode does.
    if pulls.hold.is_none() {
        let phase = shared
            .pull_interval
            .mul_f64(rand::thread_rng().gen_range(0.0..1.0));
        if !cadence::pause_for(shared, phase).await {
            return;
        }
    }
    loop {
        let sent = Instant::now();
        let answer = tokio::select! {
            // A held pull is cut short at the end; it is not recorded.
            () = shared.stop.cancelled() => return,
            answer = node.pull_held(pulls.hold.as_ref(), pulls.deadline) => answer,
        };
        let received = Instant::now();
        let (outcome, wait) = match answer {
            Ok(pulled) => {
                backoff = Backoff::default();
                pulls.tracker.reply(pulled.held);
                for task_ins in &pulled.task_ins_list {
                    pulls.tracker.deliver(task_ins, received);
                }
                if pulled.task_ins_list.is_empty() {
                    // Without a hold asked for, the node is a 1.14 SuperNode, which reads no
                    // reply header and sleeps even when a SuperLink held the pull unasked.
                    let wait = if pulled.held && pulls.hold.is_some() {
                        Duration::ZERO
                    } else {
                        shared.pull_interval
                    };
                    (Outcome::Answered, wait)
                } else {
                    (Outcome::TaskInsReceived, Duration::ZERO)
                }
            }
            Err(outcome) => (outcome, backoff.next()),
        };
        if shared.window.contains(sent) {
            shared
                .recorder
                .record(node.index, Call::PullTaskIns, received - sent, outcome);
        }
        if wait.is_zero() {
            if shared.stop.is_cancelled() {
                return;
            }
        } else if !cadence::pause_for(shared, wait).await {
            return;
        }
    }
}

/// The ServerApp's side: pushes TaskIns to random nodes of `node_ids` at `rate` per second
/// from `start` until `end`, then waits for the pushes in flight (each bounded by the
/// client's own timeout) until `drain_deadline`.
#[derive(Debug)]
pub(crate) struct Pusher {
    /// The ServerAppIo client.
    pub(crate) client: ServerAppIoClient<Channel>,
    /// The registered nodes' ids.
    pub(crate) node_ids: Arc<[u64]>,
    /// Where pushes go.
    pub(crate) tracker: Arc<Tracker>,
    /// Where PushTaskIns calls are recorded.
    pub(crate) recorder: Arc<Recorder>,
    /// TaskIns per second.
    pub(crate) rate: f64,
    /// Lifetime of each TaskIns.
    pub(crate) ttl: Duration,
}

impl Pusher {
    /// Pushes from `start` until `end`; returns once every push is answered or abandoned at
    /// `drain_deadline`.
    pub(crate) async fn run(self, start: Instant, end: Instant, drain_deadline: Instant) {
        if self.node_ids.is_empty() {
            return;
        }
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(MAX_PUSHES_IN_FLIGHT));
        let mut calls = JoinSet::new();
        let mut ticks = tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / this.rate));
        // Open loop: a late tick is caught up, so a slow answer does not lower the rate.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut sequence = 0_u64;
        loop {
            let tick = ticks.tick().await;
            if tick >= end {
                break;
            }
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => permit,
                () = tokio::time::sleep_until(end) => break,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { break };
            while calls.try_join_next().is_some() {}
            sequence += 1;
            let node_id = this.node_ids[rand::thread_rng().gen_range(0..this.node_ids.len())];
            let pusher = Arc::clone(&this);
            calls.spawn(async move {
                pusher.push(sequence, node_id).await;
                drop(permit);
            });
        }
        crate::drain(&mut calls, drain_deadline).await;
    }

    /// One PushTaskIns of TaskIns `sequence` for `node_id`.
    async fn push(&self, sequence: u64, node_id: u64) {
        let request = PushTaskInsRequest {
            task_ins_list: vec![task_ins(self.tracker.run_id, sequence, node_id, self.ttl)],
            run_id: self.tracker.run_id,
        };
        let sent = Instant::now();
        self.tracker.begin(sequence, sent);
        let outcome = match self.client.clone().push_task_ins(request).await {
            Ok(response) => {
                let stored = response
                    .into_inner()
                    .task_ids
                    .first()
                    .is_some_and(|id| !id.is_empty());
                if stored {
                    Outcome::Answered
                } else {
                    Outcome::Local("NOT_STORED", "PushTaskIns returned no task id".to_owned())
                }
            }
            Err(status) => Outcome::Failed(status.code(), status.message().to_owned()),
        };
        let latency = sent.elapsed();
        match outcome {
            Outcome::Answered => self.tracker.stored(sequence),
            _ => self.tracker.failed(sequence),
        }
        // Shard by sequence: pushes belong to no node.
        self.recorder.record(
            usize::try_from(sequence).unwrap_or_default(),
            Call::PushTaskIns,
            latency,
            outcome,
        );
    }
}

/// TaskIns `sequence` for `node_id`, as a ServerApp's (BEHAVIOR.md §6.1: producer anonymous
/// 0, consumer the node, `created_at` now, no ancestry, a RecordSet).
fn task_ins(run_id: u64, sequence: u64, node_id: u64, ttl: Duration) -> TaskIns {
    TaskIns {
        task_id: String::new(),
        group_id: format!("{GROUP_PREFIX}{sequence}"),
        run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(crate::signed::node(node_id)),
            created_at: unix_now(),
            delivered_at: String::new(),
            pushed_at: 0.0,
            ttl: ttl.as_secs_f64(),
            ancestry: Vec::new(),
            task_type: "query".to_owned(),
            recordset: Some(RecordSet::default()),
            error: None,
        }),
    }
}

/// The grace after the last push during which deliveries still count: one unheld poll
/// interval and two seconds for the pull that follows it.
pub(crate) fn grace(pull_interval: Duration) -> Duration {
    pull_interval + Duration::from_secs(2)
}

/// The TTL of every TaskIns of a test with this window and grace.
pub(crate) fn ttl(window: Duration, grace: Duration) -> Duration {
    window + grace + crate::CALL_TIMEOUT + TTL_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_find_their_push_and_strangers_are_counted() {
        let tracker = Tracker::new(7).unwrap();
        let start = Instant::now();
        tracker.begin(1, start);
        tracker.begin(2, start);
        tracker.begin(3, start);
        tracker.stored(1);
        tracker.failed(3);
        // Delivered before its push was answered.
        tracker.deliver(
            &task_ins(7, 2, 5, Duration::from_secs(1)),
            start + Duration::from_millis(4),
        );
        tracker.stored(2);
        tracker.deliver(
            &task_ins(8, 1, 5, Duration::from_secs(1)),
            start + Duration::from_millis(1),
        );
        tracker.deliver(
            &task_ins(7, 2, 5, Duration::from_secs(1)),
            start + Duration::from_millis(1),
        );
        assert_eq!(tracker.waiting(), 1);
        let report = tracker.report(1.0, None, Duration::from_secs(5), Latency::default());
        assert_eq!((report.pushed, report.push_failed), (2, 1));
        assert_eq!((report.delivered, report.not_delivered), (1, 1));
        assert_eq!(report.unexpected, 2);
        assert_eq!(report.hold_ms, 0);
        assert!((report.latency.max_ms - 4.0).abs() < 0.01, "{report:?}");
    }

    #[test]
    fn task_ins_are_valid_for_the_superlink() {
        let task_ins = task_ins(3, 9, 42, Duration::from_secs(90));
        assert_eq!(task_ins.group_id, "flwr-loadgen-dispatch-9");
        assert!(task_ins.task_id.is_empty());
        let task = task_ins.task.unwrap();
        assert_eq!(task.consumer, Some(crate::signed::node(42)));
        assert!(task.producer.unwrap().anonymous);
        assert!(task.created_at > 1_711_497_600.0 && task.ttl == 90.0);
        assert!(task.ancestry.is_empty() && task.recordset.is_some() && task.error.is_none());
    }
}
