//! [`InMemoryLinkState`]: the default store (`--database :flwr-in-memory-state:`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flwr_proto::{ConfigsRecord, Context, Run, RunStatus, Scalar, TaskIns, TaskRes};
use uuid::Uuid;

use crate::content::{Handle, RecordSets};
use crate::lifecycle::{pending_status, transition, PENDING};
use crate::link_state::{NodeCounts, TaskCounts, LOG_TIMESTAMP_EPSILON};
use crate::task::{
    accept_task_res, distinct_task_ids, expired_for_delivery, expired_for_results,
    message_unavailable_reply, parse_task_id, reply_fits_instruction, reply_unavailable_reply,
    store_task_ins_batch, PushTaskInsError, TaskInsDropped,
};
use crate::{fresh_id, isoformat, Clock, LinkState, StateError};

/// A [`LinkState`] held in process memory; lost on restart.
///
/// One mutex guards all of it. Every method holds the lock for a short, non-blocking section
/// (no I/O, and nothing here is async, so it is never held across an `.await`), so
/// [`blocks`](LinkState::blocks) is `false` and the server may call it on an async worker.
///
/// With two worker threads a single lock is enough as long as the sections are short, so the
/// SuperNode-facing calls do work proportional to the request only:
///
/// | call | cost |
/// |---|---|
/// | `task_ins_for_node` | O(log q) per TaskIns returned or expired one dropped; q: own queue |
/// | `acknowledge_ping`, `create_node`, `delete_node` | O(log nodes) |
/// | `is_node_online`, `node_id_for_public_key` | O(log nodes) / one hash lookup |
/// | `node_counts` | O(nodes gone offline since the previous call) |
/// | `online_nodes` | one pass over the nodes in id order (GetNodes, once per round) |
///
/// Rare administrative calls (`delete_tasks_of_run`, `runs`, the allow-list) may be O(size).
#[derive(Debug)]
pub struct InMemoryLinkState {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<u64, RunEntry>,
    /// Run ids in creation order.
    run_order: Vec<u64>,
    /// Ordered by id, so that `online_nodes` is one ascending pass without a sort.
    nodes: BTreeMap<u64, NodeEntry>,
    node_of_key: HashMap<Vec<u8>, u64>,
    liveness: Liveness,
    /// TaskIns by insertion sequence number.
    task_ins: HashMap<u64, TaskIns>,
    task_ins_seq: HashMap<Uuid, u64>,
    /// Sequence numbers of the undelivered TaskIns of each consumer (`None`: anonymous),
    /// oldest first. Delivered ones leave their queue at once and expired ones when a pull
    /// meets them, so a pull never looks at other nodes' tasks. Empty queues are removed.
    queues: HashMap<Option<u64>, BTreeSet<u64>>,
    next_seq: u64,
    task_res: HashMap<Uuid, TaskRes>,
    /// TaskIns id → id of its (latest) reply.
    reply_of: HashMap<Uuid, Uuid>,
    /// The record sets of stored TaskIns, each distinct content once; a stored TaskIns keeps
    /// no record set of its own but a handle here, by sequence number.
    record_sets: RecordSets,
    content_of: HashMap<u64, Handle>,
}

/// A run and what hangs off it.
#[derive(Debug)]
struct RunEntry {
    run: Run,
    federation_options: ConfigsRecord,
    context: Option<Context>,
    /// `(timestamp, chunk)` in append order.
    logs: Vec<(f64, String)>,
}

/// A registered node.
#[derive(Debug)]
struct NodeEntry {
    online_until: f64,
    public_key: Option<Vec<u8>>,
}

impl InMemoryLinkState {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many distinct record sets the stored TaskIns carry: TaskIns with equal content (a
    /// model sent to every node) share one copy.
    pub fn distinct_record_sets(&self) -> usize {
        self.lock().record_sets.distinct()
    }

    /// Locks the state. A panic while holding the lock cannot leave a half-applied update
    /// observable in a way worse than the panic itself, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Removes a TaskIns (from its consumer's queue too) and its reply, if any.
    fn remove_task_ins(&mut self, id: &Uuid) {
        if let Some(seq) = self.task_ins_seq.remove(id) {
            if let Some(handle) = self.content_of.remove(&seq) {
                self.record_sets.release(&handle);
            }
            let consumer = self.task_ins.remove(&seq).as_ref().and_then(queue_of);
            if let Some(consumer) = consumer {
                self.dequeue(consumer, seq);
            }
        }
        if let Some(res_id) = self.reply_of.remove(id) {
            self.task_res.remove(&res_id);
        }
    }

    /// Takes `seq` out of a consumer's queue, dropping the queue when it empties.
    fn dequeue(&mut self, consumer: Option<u64>, seq: u64) {
        if let Some(queue) = self.queues.get_mut(&consumer) {
            queue.remove(&seq);
            if queue.is_empty() {
                self.queues.remove(&consumer);
            }
        }
    }
}

/// The queue a TaskIns waits in: `Some(None)` for an anonymous consumer, `Some(Some(id))` for a
/// named one; `None` if it has no consumer (validation refuses those).
fn queue_of(task_ins: &TaskIns) -> Option<Option<u64>> {
    let consumer = task_ins.task.as_ref()?.consumer?;
    Some((!consumer.anonymous).then_some(consumer.node_id))
}

/// Every node's `online_until` in time order, with a running count of the online ones, so that
/// liveness questions cost O(answer) rather than O(nodes).
#[derive(Debug)]
struct Liveness {
    by_expiry: BTreeSet<(Expiry, u64)>,
    /// How many entries have an expiry after `counted_at`.
    online: usize,
    /// The time `online` refers to; [`Liveness::online_at`] moves it forward.
    counted_at: Expiry,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            by_expiry: BTreeSet::new(),
            online: 0,
            counted_at: Expiry::of(f64::NEG_INFINITY),
        }
    }
}

impl Liveness {
    /// Records a node online until `until`.
    fn insert(&mut self, node_id: u64, until: f64) {
        let expiry = Expiry::of(until);
        if self.by_expiry.insert((expiry, node_id)) && expiry > self.counted_at {
            self.online += 1;
        }
    }

    /// Forgets a node recorded with `until`.
    fn remove(&mut self, node_id: u64, until: f64) {
        let expiry = Expiry::of(until);
        if self.by_expiry.remove(&(expiry, node_id)) && expiry > self.counted_at {
            self.online -= 1;
        }
    }

    /// How many nodes are online at `now`. Amortised O(1) while time moves forward: each node
    /// going offline is counted out once; a clock that stepped back costs one recount.
    fn online_at(&mut self, now: f64) -> usize {
        let now = Expiry::of(now);
        match now.cmp(&self.counted_at) {
            Ordering::Equal => {}
            Ordering::Greater => {
                let expired = self
                    .by_expiry
                    .range((
                        Excluded((self.counted_at, u64::MAX)),
                        Included((now, u64::MAX)),
                    ))
                    .count();
                self.online -= expired;
            }
            Ordering::Less => {
                self.online = self
                    .by_expiry
                    .range((Excluded((now, u64::MAX)), Unbounded))
                    .count();
            }
        }
        self.counted_at = now;
        self.online
    }
}

/// An `online_until` as a totally ordered key. NaN (a NaN `ping_interval` from the wire) counts
/// as never online, like `NaN > now` does, and -0 as 0, so the order agrees with `>` on `f64`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Expiry(f64);

impl Expiry {
    fn of(until: f64) -> Self {
        if until.is_nan() {
            Self(f64::NEG_INFINITY)
        } else {
            Self(until + 0.0)
        }
    }
}

impl Eq for Expiry {}

impl PartialOrd for Expiry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Expiry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl InMemoryLinkState {
    /// Stores one accepted TaskIns ([`store_task_ins_batch`] validated it); `None` when its run
    /// or named consumer is unknown.
    fn insert_task_ins(&self, mut task_ins: TaskIns) -> Result<Option<String>, StateError> {
        let Some(consumer) = queue_of(&task_ins) else {
            return Ok(None);
        };
        let id = Uuid::new_v4();
        task_ins.task_id = id.hyphenated().to_string();
        let mut inner = self.lock();
        if !inner.runs.contains_key(&task_ins.run_id) {
            return Ok(None);
        }
        if consumer.is_some_and(|node_id| !inner.nodes.contains_key(&node_id)) {
            return Ok(None);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some(recordset) = task_ins
            .task
            .as_mut()
            .and_then(|task| task.recordset.take())
        {
            let handle = inner.record_sets.insert(recordset);
            inner.content_of.insert(seq, handle);
        }
        inner.task_ins.insert(seq, task_ins);
        inner.task_ins_seq.insert(id, seq);
        inner.queues.entry(consumer).or_default().insert(seq);
        Ok(Some(id.hyphenated().to_string()))
    }
}

impl LinkState for InMemoryLinkState {
    fn blocks(&self) -> bool {
        false
    }

    fn store_task_ins(
        &self,
        run_id: u64,
        task_ins_list: Vec<TaskIns>,
    ) -> Result<Vec<Result<String, TaskInsDropped>>, PushTaskInsError> {
        let now = self.clock.now();
        store_task_ins_batch(run_id, task_ins_list, now, |task_ins| {
            self.insert_task_ins(task_ins)
        })
    }

    fn task_ins_for_node(
        &self,
        node_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskIns>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.clock.now();
        // Formatted only once something is delivered: most pulls find nothing.
        let mut delivered_at = None;
        let mut inner = self.lock();
        let Inner {
            queues,
            task_ins,
            content_of,
            ..
        } = &mut *inner;
        let Some(queue) = queues.get_mut(&node_id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(seq) = queue.pop_first() else {
                break;
            };
            let Some(stored) = task_ins.get_mut(&seq) else {
                continue;
            };
            let Some(task) = stored.task.as_mut() else {
                continue;
            };
            // An expired TaskIns can never be delivered again (time only moves forward), so
            // it leaves the queue here; it stays stored until its results are pulled.
            if expired_for_delivery(task, now) {
                continue;
            }
            delivered_at
                .get_or_insert_with(|| isoformat(now))
                .clone_into(&mut task.delivered_at);
            let mut delivered = stored.clone();
            if let (Some(task), Some(handle)) = (delivered.task.as_mut(), content_of.get(&seq)) {
                task.recordset = Some(handle.recordset().clone());
            }
            out.push(delivered);
        }
        if queue.is_empty() {
            queues.remove(&node_id);
        }
        Ok(out)
    }

    fn store_task_res(&self, mut task_res: TaskRes) -> Result<Option<String>, StateError> {
        let now = self.clock.now();
        let Some(ins_id) = accept_task_res(&mut task_res, now)? else {
            return Ok(None);
        };
        let mut inner = self.lock();
        let Some(task_ins) = inner
            .task_ins_seq
            .get(&ins_id)
            .and_then(|seq| inner.task_ins.get(seq))
        else {
            return Ok(None);
        };
        if !reply_fits_instruction(task_ins, &task_res, now) {
            return Ok(None);
        }
        if !inner.runs.contains_key(&task_res.run_id) {
            return Ok(None);
        }
        let id = Uuid::new_v4();
        task_res.task_id = id.hyphenated().to_string();
        if let Some(previous) = inner.reply_of.insert(ins_id, id) {
            inner.task_res.remove(&previous);
        }
        inner.task_res.insert(id, task_res);
        Ok(Some(id.hyphenated().to_string()))
    }

    fn task_res(&self, task_ids: &[String]) -> Result<Vec<TaskRes>, StateError> {
        let ids = distinct_task_ids(task_ids)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut out = Vec::new();
        for id in ids {
            let task_ins = inner
                .task_ins_seq
                .get(&id)
                .and_then(|seq| inner.task_ins.get(seq));
            let Some(task_ins) = task_ins else {
                out.push(message_unavailable_reply(&id.hyphenated().to_string(), now));
                inner.remove_task_ins(&id);
                continue;
            };
            if task_ins
                .task
                .as_ref()
                .is_none_or(|task| expired_for_results(task, now))
            {
                out.push(message_unavailable_reply(&id.hyphenated().to_string(), now));
                inner.remove_task_ins(&id);
                continue;
            }
            let Some(reply) = inner
                .reply_of
                .get(&id)
                .and_then(|res_id| inner.task_res.get(res_id))
            else {
                continue;
            };
            let mut reply = reply.clone();
            if reply
                .task
                .as_ref()
                .is_none_or(|task| expired_for_results(task, now))
            {
                reply = reply_unavailable_reply(task_ins, now);
            } else if let Some(task) = reply.task.as_mut() {
                task.delivered_at = isoformat(now);
            }
            out.push(reply);
            inner.remove_task_ins(&id);
        }
        Ok(out)
    }

    fn replies_pending(&self, task_ids: &[String]) -> Result<usize, StateError> {
        let ids: HashSet<Uuid> = task_ids
            .iter()
            .filter_map(|text| parse_task_id(text).ok())
            .collect();
        let inner = self.lock();
        Ok(ids
            .iter()
            .filter(|id| inner.task_ins_seq.contains_key(id) && !inner.reply_of.contains_key(id))
            .count())
    }

    fn delete_tasks_of_run(&self, run_id: u64) -> Result<(), StateError> {
        let mut inner = self.lock();
        let doomed: Vec<Uuid> = inner
            .task_ins_seq
            .iter()
            .filter(|(_, seq)| {
                inner
                    .task_ins
                    .get(seq)
                    .is_some_and(|ins| ins.run_id == run_id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &doomed {
            inner.remove_task_ins(id);
        }
        inner.task_res.retain(|_, res| res.run_id != run_id);
        let Inner {
            reply_of, task_res, ..
        } = &mut *inner;
        reply_of.retain(|_, res_id| task_res.contains_key(res_id));
        Ok(())
    }

    fn task_counts(&self) -> Result<TaskCounts, StateError> {
        let inner = self.lock();
        Ok(TaskCounts {
            task_ins: inner.task_ins.len(),
            task_res: inner.task_res.len(),
        })
    }

    fn create_node(
        &self,
        ping_interval: f64,
        public_key: Option<&[u8]>,
    ) -> Result<u64, StateError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if let Some(key) = public_key {
            if let Some(&existing) = inner.node_of_key.get(key) {
                return Err(StateError::PublicKeyInUse(existing));
            }
        }
        let node_id = fresh_id(|id| Ok(inner.nodes.contains_key(&id)))?;
        let online_until = now + ping_interval;
        inner.nodes.insert(
            node_id,
            NodeEntry {
                online_until,
                public_key: public_key.map(<[u8]>::to_vec),
            },
        );
        inner.liveness.insert(node_id, online_until);
        if let Some(key) = public_key {
            inner.node_of_key.insert(key.to_vec(), node_id);
        }
        Ok(node_id)
    }

    fn delete_node(&self, node_id: u64) -> Result<(), StateError> {
        let mut inner = self.lock();
        let node = inner
            .nodes
            .remove(&node_id)
            .ok_or(StateError::NodeNotFound(node_id))?;
        inner.liveness.remove(node_id, node.online_until);
        if let Some(key) = node.public_key {
            inner.node_of_key.remove(&key);
        }
        Ok(())
    }

    fn node_id_for_public_key(&self, public_key: &[u8]) -> Result<Option<u64>, StateError> {
        Ok(self.lock().node_of_key.get(public_key).copied())
    }

    fn acknowledge_ping(&self, node_id: u64, ping_interval: f64) -> Result<bool, StateError> {
        let now = self.clock.now();
        let online_until = now + ping_interval;
        let mut inner = self.lock();
        let Inner {
            nodes, liveness, ..
        } = &mut *inner;
        let Some(node) = nodes.get_mut(&node_id) else {
            return Ok(false);
        };
        liveness.remove(node_id, node.online_until);
        liveness.insert(node_id, online_until);
        node.online_until = online_until;
        Ok(true)
    }

    fn is_node_online(&self, node_id: u64) -> Result<bool, StateError> {
        let now = self.clock.now();
        let inner = self.lock();
        Ok(inner
            .nodes
            .get(&node_id)
            .is_some_and(|node| node.online_until > now))
    }

    fn node_counts(&self) -> Result<NodeCounts, StateError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        Ok(NodeCounts {
            registered: inner.nodes.len(),
            online: inner.liveness.online_at(now),
        })
    }

    fn online_nodes(&self, run_id: u64) -> Result<Vec<u64>, StateError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if !inner.runs.contains_key(&run_id) {
            return Err(StateError::RunNotFound(run_id));
        }
        // The running count sizes the answer exactly, so the pass allocates once.
        let mut ids = Vec::with_capacity(inner.liveness.online_at(now));
        ids.extend(
            inner
                .nodes
                .iter()
                .filter(|(_, node)| node.online_until > now)
                .map(|(id, _)| *id),
        );
        Ok(ids)
    }

    fn create_run(
        &self,
        fab_id: &str,
        fab_version: &str,
        fab_hash: &str,
        override_config: HashMap<String, Scalar>,
        federation_options: ConfigsRecord,
        context: Option<Context>,
    ) -> Result<u64, StateError> {
        let pending_at = isoformat(self.clock.now());
        let mut inner = self.lock();
        let run_id = fresh_id(|id| Ok(inner.runs.contains_key(&id)))?;
        let run = Run {
            run_id,
            fab_id: fab_id.to_owned(),
            fab_version: fab_version.to_owned(),
            override_config,
            fab_hash: fab_hash.to_owned(),
            pending_at,
            status: Some(pending_status()),
            ..Run::default()
        };
        inner.runs.insert(
            run_id,
            RunEntry {
                run,
                federation_options,
                context: context.map(|context| Context { run_id, ..context }),
                logs: Vec::new(),
            },
        );
        inner.run_order.push(run_id);
        Ok(run_id)
    }

    fn run(&self, run_id: u64) -> Result<Option<Run>, StateError> {
        Ok(self.lock().runs.get(&run_id).map(|entry| entry.run.clone()))
    }

    fn runs(&self) -> Result<Vec<Run>, StateError> {
        let inner = self.lock();
        Ok(inner
            .run_order
            .iter()
            .filter_map(|id| inner.runs.get(id))
            .map(|entry| entry.run.clone())
            .collect())
    }

    fn pending_run_id(&self) -> Result<Option<u64>, StateError> {
        let inner = self.lock();
        Ok(inner.run_order.iter().copied().find(|id| {
            inner
                .runs
                .get(id)
                .and_then(|entry| entry.run.status.as_ref())
                .is_some_and(|status| status.status == PENDING)
        }))
    }

    fn update_run_status(&self, run_id: u64, new_status: RunStatus) -> Result<bool, StateError> {
        let now_iso = isoformat(self.clock.now());
        let mut inner = self.lock();
        let entry = inner
            .runs
            .get_mut(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        Ok(transition(&mut entry.run, new_status, &now_iso))
    }

    fn federation_options(&self, run_id: u64) -> Result<Option<ConfigsRecord>, StateError> {
        let inner = self.lock();
        Ok(inner
            .runs
            .get(&run_id)
            .map(|entry| entry.federation_options.clone()))
    }

    fn set_serverapp_context(&self, run_id: u64, context: Context) -> Result<(), StateError> {
        let mut inner = self.lock();
        let entry = inner
            .runs
            .get_mut(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        entry.context = Some(context);
        Ok(())
    }

    fn serverapp_context(&self, run_id: u64) -> Result<Option<Context>, StateError> {
        let inner = self.lock();
        Ok(inner
            .runs
            .get(&run_id)
            .and_then(|entry| entry.context.clone()))
    }

    fn add_serverapp_log(&self, run_id: u64, log: &str) -> Result<(), StateError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let entry = inner
            .runs
            .get_mut(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        entry.logs.push((now, log.to_owned()));
        Ok(())
    }

    fn serverapp_logs_after(
        &self,
        run_id: u64,
        after_timestamp: f64,
    ) -> Result<(String, f64), StateError> {
        let inner = self.lock();
        let entry = inner
            .runs
            .get(&run_id)
            .ok_or(StateError::RunNotFound(run_id))?;
        let mut text = String::new();
        let mut latest = 0.0;
        for (timestamp, chunk) in &entry.logs {
            if *timestamp > after_timestamp + LOG_TIMESTAMP_EPSILON {
                text.push_str(chunk);
                latest = *timestamp;
            }
        }
        Ok((text, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_counts_online_nodes_as_time_passes() {
        let mut liveness = Liveness::default();
        liveness.insert(1, 10.0);
        liveness.insert(2, 20.0);
        liveness.insert(3, f64::NAN);
        assert_eq!(liveness.online_at(5.0), 2);
        assert_eq!(liveness.online_at(10.0), 1);
        // A ping after the count moved on: the node is back.
        liveness.remove(1, 10.0);
        liveness.insert(1, 40.0);
        assert_eq!(liveness.online_at(15.0), 2);
        assert_eq!(liveness.online_at(25.0), 1);
        // The clock stepped back: recounted, not guessed.
        assert_eq!(liveness.online_at(0.0), 2);
        liveness.remove(2, 20.0);
        assert_eq!(liveness.online_at(0.0), 1);
        liveness.remove(1, 40.0);
        liveness.remove(3, f64::NAN);
        assert_eq!(liveness.online_at(100.0), 0);
        assert!(liveness.by_expiry.is_empty());
    }
}
