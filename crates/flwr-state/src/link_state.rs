//! The [`LinkState`] trait: everything the SuperLink remembers about runs, nodes and tasks.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flwr_proto::{ConfigsRecord, Context, Run, RunStatus, Scalar, TaskIns, TaskRes};

use crate::task::{PushTaskInsError, TaskInsDropped};
use crate::StateError;

/// The SuperLink's state store (BEHAVIOR.md §4–§8, AUTH.md §7–§8).
///
/// Every method is synchronous. A store whose [`blocks`](Self::blocks) is `true` (SQLite does
/// I/O) must be called from `tokio::task::spawn_blocking` through an `Arc<dyn LinkState>`; one
/// that returns `false` may be called inline on an async worker. Each call is atomic with
/// respect to the others.
///
/// # Cost at scale
///
/// The SuperNode-facing calls stay cheap with tens of thousands of registered nodes: none of
/// [`task_ins_for_node`](Self::task_ins_for_node), [`acknowledge_ping`](Self::acknowledge_ping),
/// [`create_node`](Self::create_node), [`node_id_for_public_key`](Self::node_id_for_public_key)
/// or [`is_node_online`](Self::is_node_online) scans all nodes or all tasks (hash, B-tree or
/// index lookups, plus the requesting node's own queue). "Now" always comes from the store's injected
/// [`Clock`](crate::Clock); ISO-8601 timestamps use [`isoformat`](crate::isoformat).
///
/// Both stores implement the reference's *in-memory* semantics (BEHAVIOR.md §8.3, left
/// column) minus its stale key→id bug, and never drop a task's `error`.
pub trait LinkState: Send + Sync + fmt::Debug {
    /// Whether calls may block the thread on I/O. `false` promises that every call only takes
    /// a lock for work proportional to the request (or to its answer), so the server may run
    /// it on an async worker instead of `spawn_blocking`.
    fn blocks(&self) -> bool {
        true
    }

    /// Whether other processes (SuperLink replicas) may use the same store at the same time.
    /// `false` means this process is the only one: runs a previous process left `starting` or
    /// `running` are orphans at start, and [launch leases](Self::claim_pending_run) are moot.
    fn shared(&self) -> bool {
        false
    }

    /// Asks to hear of changes other processes make (held pulls and the launcher wait for
    /// them). A store only this process uses has nothing to tell: the default ignores the sink.
    /// Delivery is best effort; listeners bound their waits, so a lost change only delays.
    fn watch(&self, sink: ChangeSink) -> Result<(), StateError> {
        let _ = sink;
        Ok(())
    }

    // ----- tasks -----

    /// Validates and stores the TaskIns a ServerApp pushed for `run_id` (one `PushTaskIns`);
    /// returns, in order, each one's new task id (UUID4, canonical lowercase) or why it was
    /// dropped.
    ///
    /// The store overwrites every `task.pushed_at` with its clock's now, then refuses the whole
    /// batch when it is empty, or any TaskIns fails [§6.1 validation](crate::validate_task_ins)
    /// or names another run. Of an accepted batch, a TaskIns whose run does not exist, or whose
    /// consumer is a named node that is not registered (online or not), is dropped
    /// ([`TaskInsDropped`]). A stored TaskIns carries its new `task_id`. Run guards (§5.3) are
    /// the handler's.
    ///
    /// # Errors
    ///
    /// [`PushTaskInsError::Rejected`] with the reason, nothing stored; or
    /// [`PushTaskInsError::State`].
    fn store_task_ins(
        &self,
        run_id: u64,
        task_ins_list: Vec<TaskIns>,
    ) -> Result<Vec<Result<String, TaskInsDropped>>, PushTaskInsError>;

    /// Up to `limit` undelivered, unexpired TaskIns for a consumer, oldest first; `None` asks
    /// for TaskIns addressed to anonymous consumers.
    ///
    /// Returned TaskIns get `delivered_at = isoformat(now)` and are never returned again.
    /// Expired means `created_at + ttl <= now`. No node-existence or liveness check.
    fn task_ins_for_node(
        &self,
        node_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskIns>, StateError>;

    /// Validates and stores a TaskRes from a SuperNode (BEHAVIOR.md §6.2 steps 1–6); returns
    /// its new task id, or `Ok(None)` if it was rejected (the handler replies `"None"`).
    ///
    /// The store overwrites `task.pushed_at` with now before validating. A second reply to
    /// the same TaskIns replaces the first.
    ///
    /// # Errors
    ///
    /// [`StateError::InvalidUuid`] if the TaskRes is valid but `ancestry[0]` is not a UUID
    /// (the reference's `badly formed hexadecimal UUID string`).
    fn store_task_res(&self, task_res: TaskRes) -> Result<Option<String>, StateError>;

    /// The replies to the given TaskIns ids (BEHAVIOR.md §6.3), in request order; ids
    /// without a reply yet are skipped. Duplicate ids count once.
    ///
    /// An unknown or expired TaskIns yields a synthetic [`message_unavailable_reply`]
    /// (run id 0); an expired TaskRes is replaced by a [`reply_unavailable_reply`]. Every
    /// TaskIns/TaskRes pair that produced a result is deleted.
    ///
    /// # Errors
    ///
    /// [`StateError::InvalidUuid`] if any id is not a UUID; nothing is returned or deleted.
    ///
    /// [`message_unavailable_reply`]: crate::message_unavailable_reply
    /// [`reply_unavailable_reply`]: crate::reply_unavailable_reply
    fn task_res(&self, task_ids: &[String]) -> Result<Vec<TaskRes>, StateError>;

    /// How many of `task_ids` still wait for a reply: their TaskIns is stored and no TaskRes
    /// answers it yet. Changes nothing; a held `PullTaskRes` waits while this is not zero.
    ///
    /// Duplicate ids count once; ids that are not UUIDs, and unknown TaskIns, do not wait (the
    /// pull that follows answers them). Expiry is not looked at, so that SQLite need not decode
    /// stored payloads: a TaskIns that expires unanswered keeps a hold until its bound.
    fn replies_pending(&self, task_ids: &[String]) -> Result<usize, StateError>;

    /// Deletes every TaskIns and TaskRes of a run (Exec `StopRun`). Unknown runs are a no-op.
    fn delete_tasks_of_run(&self, run_id: u64) -> Result<(), StateError>;

    /// How many TaskIns and TaskRes are stored (delivered or not); for tests and metrics.
    fn task_counts(&self) -> Result<TaskCounts, StateError>;

    // ----- nodes -----

    /// Registers a node with a fresh random non-zero id, online until now + `ping_interval`,
    /// optionally bound to a public key (PEM SPKI bytes).
    ///
    /// # Errors
    ///
    /// [`StateError::PublicKeyInUse`] if the key is bound to another node (the auth layer
    /// looks up [`node_id_for_public_key`](Self::node_id_for_public_key) first).
    fn create_node(&self, ping_interval: f64, public_key: Option<&[u8]>)
        -> Result<u64, StateError>;

    /// Removes a node *and* its public-key binding, so that the next `CreateNode` with that
    /// key gets a fresh id (AUTH.md §7.1; unlike the reference's in-memory store). Its queued
    /// TaskIns stay and expire.
    ///
    /// # Errors
    ///
    /// [`StateError::NodeNotFound`]; the handler turns it into
    /// `Exception calling application: Node <id> not found`.
    fn delete_node(&self, node_id: u64) -> Result<(), StateError>;

    /// The node id bound to a public key, if any.
    fn node_id_for_public_key(&self, public_key: &[u8]) -> Result<Option<u64>, StateError>;

    /// Refreshes a node's liveness: online until now + `ping_interval`. Returns `false` (and
    /// changes nothing) for an unknown node.
    fn acknowledge_ping(&self, node_id: u64, ping_interval: f64) -> Result<bool, StateError>;

    /// Whether `node_id` is registered and online now (`online_until > now`); `false` for an
    /// unknown or deleted node. One lookup, unlike searching [`online_nodes`](Self::online_nodes)
    /// (the auth binding of Fleet `GetRun` asks this on every request).
    fn is_node_online(&self, node_id: u64) -> Result<bool, StateError>;

    /// How many nodes are registered and how many of them are online now; for metrics.
    fn node_counts(&self) -> Result<NodeCounts, StateError>;

    /// Ids of all nodes online now (`online_until > now`), ascending. Not filtered by run:
    /// the run only has to exist.
    ///
    /// # Errors
    ///
    /// [`StateError::RunNotFound`].
    fn online_nodes(&self, run_id: u64) -> Result<Vec<u64>, StateError>;

    // ----- runs -----

    /// Creates a run with a fresh random non-zero id, status `pending`, `pending_at = now`,
    /// and, in the same transaction, its ServerApp context if one is given (its `run_id` is
    /// set to the new id). Exec `StartRun` passes one, so a crash never leaves a pending run
    /// without the context its ServerApp needs.
    fn create_run(
        &self,
        fab_id: &str,
        fab_version: &str,
        fab_hash: &str,
        override_config: HashMap<String, Scalar>,
        federation_options: ConfigsRecord,
        context: Option<Context>,
    ) -> Result<u64, StateError>;

    /// The full run (status and all timestamps; unreached ones are `""`), if it exists.
    fn run(&self, run_id: u64) -> Result<Option<Run>, StateError>;

    /// Every run, in creation order.
    fn runs(&self) -> Result<Vec<Run>, StateError>;

    /// The oldest run whose status is `pending` (a run stopped while pending is finished,
    /// hence not reported). A [shared](Self::shared) store skips runs whose launch another
    /// process has [claimed](Self::claim_pending_run).
    fn pending_run_id(&self) -> Result<Option<u64>, StateError>;

    // ----- launch leases (shared stores) -----

    /// Claims the launch of the oldest pending run for this process until now + `lease`, so
    /// that of several replicas exactly one starts its ServerApp. A shared store takes a run
    /// that nobody claimed, whose lease expired or that this process already holds; two
    /// concurrent callers never get the same run. The default (one process) is
    /// [`pending_run_id`](Self::pending_run_id).
    fn claim_pending_run(&self, lease: Duration) -> Result<Option<u64>, StateError> {
        let _ = lease;
        self.pending_run_id()
    }

    /// Extends this process's leases on `run_ids` to now + `lease` (runs it still holds and
    /// that have not finished). The launcher calls it while their ServerApps live.
    fn renew_leases(&self, run_ids: &[u64], lease: Duration) -> Result<(), StateError> {
        let _ = (run_ids, lease);
        Ok(())
    }

    /// Takes over the runs whose launcher died: every unfinished run with an expired lease is
    /// reset to `pending` (its tasks deleted, since its ServerApp starts again from the
    /// beginning) and leased to this process; returns their ids. Runs never leased are never
    /// taken. The default (one process) has nobody to take over from.
    fn take_over_orphans(&self, lease: Duration) -> Result<Vec<u64>, StateError> {
        let _ = lease;
        Ok(Vec::new())
    }

    /// Applies a status update if [`transition_allowed`](crate::transition_allowed); returns
    /// whether it was applied. An accepted update replaces status, sub-status and details
    /// and stamps `starting_at`/`running_at`/`finished_at` with now. Refused transitions
    /// change nothing. pending → starting is atomic: of two concurrent callers one gets
    /// `true`.
    ///
    /// # Errors
    ///
    /// [`StateError::RunNotFound`].
    fn update_run_status(&self, run_id: u64, new_status: RunStatus) -> Result<bool, StateError>;

    /// The federation options stored with a run, if the run exists.
    fn federation_options(&self, run_id: u64) -> Result<Option<ConfigsRecord>, StateError>;

    // ----- ServerApp context -----

    /// Stores (replaces) the ServerApp context of a run.
    ///
    /// # Errors
    ///
    /// [`StateError::RunNotFound`].
    fn set_serverapp_context(&self, run_id: u64, context: Context) -> Result<(), StateError>;

    /// The ServerApp context of a run, if the run exists and one was stored.
    fn serverapp_context(&self, run_id: u64) -> Result<Option<Context>, StateError>;

    // ----- ServerApp logs -----

    /// Appends a chunk of ServerApp output to a run's log, stamped with now.
    ///
    /// # Errors
    ///
    /// [`StateError::RunNotFound`]; the handler's text is `Run <id> not found`.
    fn add_serverapp_log(&self, run_id: u64, log: &str) -> Result<(), StateError>;

    /// The concatenation of every log chunk stamped later than `after_timestamp + 1e-6`, in
    /// order, and the timestamp of the newest returned chunk (`0.0` if none).
    ///
    /// # Errors
    ///
    /// [`StateError::RunNotFound`].
    fn serverapp_logs_after(
        &self,
        run_id: u64,
        after_timestamp: f64,
    ) -> Result<(String, f64), StateError>;
}

/// A change another process may need to hear of (see [`LinkState::watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A TaskIns was stored for this consumer (`None`: anonymous), or the node was deleted.
    NodeTasks(Option<u64>),
    /// A run's replies, status or tasks changed.
    Run(u64),
    /// A run became pending (created, or taken over): a launcher may start it.
    RunPending,
}

/// Where a store delivers [`Change`]s.
pub type ChangeSink = Arc<dyn Fn(Change) + Send + Sync>;

/// FAB bytes kept by the store itself, so that every replica of a shared store can answer
/// `GetFab` (the directory store serves a single process).
pub trait FabStore: Send + Sync + fmt::Debug {
    /// Stores `content` under `hash` (its SHA-256, lowercase hex); storing it again is harmless.
    fn put_fab(&self, hash: &str, content: &[u8]) -> Result<(), StateError>;
    /// The FAB stored under `hash`, if any.
    fn fab(&self, hash: &str) -> Result<Option<Vec<u8>>, StateError>;
}

/// How many tasks a store holds, see [`LinkState::task_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Stored TaskIns, delivered or not.
    pub task_ins: usize,
    /// Stored TaskRes.
    pub task_res: usize,
}

/// How many nodes a store knows, see [`LinkState::node_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Registered nodes, online or not.
    pub registered: usize,
    /// Registered nodes online now.
    pub online: usize,
}

/// Log chunks must be newer than `after_timestamp` by more than this to be returned.
pub const LOG_TIMESTAMP_EPSILON: f64 = 1e-6;
