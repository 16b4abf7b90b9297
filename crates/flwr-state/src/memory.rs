//! [`InMemoryLinkState`]: the default store (`--database :flwr-in-memory-state:`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flwr_proto::{ConfigsRecord, Context, Run, RunStatus, Scalar, TaskIns, TaskRes};
use uuid::Uuid;

use crate::lifecycle::{apply_transition, pending_status, transition_allowed, PENDING};
use crate::link_state::{TaskCounts, LOG_TIMESTAMP_EPSILON};
use crate::task::{
    accept_task_ins, accept_task_res, expired_for_delivery, expired_for_results,
    message_unavailable_reply, parse_task_id, reply_fits_instruction, reply_unavailable_reply,
};
use crate::{fresh_id, isoformat, Clock, LinkState, StateError};

/// A [`LinkState`] held in process memory; lost on restart.
///
/// One mutex guards all of it. Every method holds the lock for a short, non-blocking section
/// (no I/O, and nothing here is async, so it is never held across an `.await`).
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
    nodes: HashMap<u64, NodeEntry>,
    node_of_key: HashMap<Vec<u8>, u64>,
    public_keys: BTreeSet<Vec<u8>>,
    /// TaskIns by insertion sequence, so that delivery is oldest first.
    task_ins: BTreeMap<u64, TaskIns>,
    task_ins_seq: HashMap<Uuid, u64>,
    next_seq: u64,
    task_res: HashMap<Uuid, TaskRes>,
    /// TaskIns id → id of its (latest) reply.
    reply_of: HashMap<Uuid, Uuid>,
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

    /// Locks the state. A panic while holding the lock cannot leave a half-applied update
    /// observable in a way worse than the panic itself, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Removes a TaskIns and its reply, if any.
    fn remove_task_ins(&mut self, id: &Uuid) {
        if let Some(seq) = self.task_ins_seq.remove(id) {
            self.task_ins.remove(&seq);
        }
        if let Some(res_id) = self.reply_of.remove(id) {
            self.task_res.remove(&res_id);
        }
    }
}

impl LinkState for InMemoryLinkState {
    fn store_task_ins(&self, mut task_ins: TaskIns) -> Result<Option<String>, StateError> {
        if !accept_task_ins(&mut task_ins, self.clock.now()) {
            return Ok(None);
        }
        let mut inner = self.lock();
        if !inner.runs.contains_key(&task_ins.run_id) {
            return Ok(None);
        }
        let consumer = task_ins.task.as_ref().and_then(|task| task.consumer);
        if let Some(consumer) = consumer {
            if !consumer.anonymous && !inner.nodes.contains_key(&consumer.node_id) {
                return Ok(None);
            }
        }
        let id = Uuid::new_v4();
        task_ins.task_id = id.hyphenated().to_string();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.task_ins.insert(seq, task_ins);
        inner.task_ins_seq.insert(id, seq);
        Ok(Some(id.hyphenated().to_string()))
    }

    fn task_ins_for_node(
        &self,
        node_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<TaskIns>, StateError> {
        let now = self.clock.now();
        let delivered_at = isoformat(now);
        let mut inner = self.lock();
        let mut out = Vec::new();
        for task_ins in inner.task_ins.values_mut() {
            if out.len() >= limit {
                break;
            }
            let Some(task) = task_ins.task.as_mut() else {
                continue;
            };
            let Some(consumer) = task.consumer else {
                continue;
            };
            let addressed = match node_id {
                None => consumer.anonymous,
                Some(id) => !consumer.anonymous && consumer.node_id == id,
            };
            if !addressed || !task.delivered_at.is_empty() || expired_for_delivery(task, now) {
                continue;
            }
            delivered_at.clone_into(&mut task.delivered_at);
            out.push(task_ins.clone());
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
        let mut ids = Vec::with_capacity(task_ids.len());
        for text in task_ids {
            let id = parse_task_id(text)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
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
        inner.nodes.insert(
            node_id,
            NodeEntry {
                online_until: now + ping_interval,
                public_key: public_key.map(<[u8]>::to_vec),
            },
        );
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
        let mut inner = self.lock();
        let Some(node) = inner.nodes.get_mut(&node_id) else {
            return Ok(false);
        };
        node.online_until = now + ping_interval;
        Ok(true)
    }

    fn online_nodes(&self, run_id: u64) -> Result<Vec<u64>, StateError> {
        let now = self.clock.now();
        let inner = self.lock();
        if !inner.runs.contains_key(&run_id) {
            return Err(StateError::RunNotFound(run_id));
        }
        let mut ids: Vec<u64> = inner
            .nodes
            .iter()
            .filter(|(_, node)| node.online_until > now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn store_node_public_keys(&self, public_keys: &[Vec<u8>]) -> Result<(), StateError> {
        self.lock().public_keys.extend(public_keys.iter().cloned());
        Ok(())
    }

    fn node_public_keys(&self) -> Result<BTreeSet<Vec<u8>>, StateError> {
        Ok(self.lock().public_keys.clone())
    }

    fn replace_node_public_keys(&self, public_keys: &[Vec<u8>]) -> Result<(), StateError> {
        self.lock().public_keys = public_keys.iter().cloned().collect();
        Ok(())
    }

    fn clear_node_public_keys(&self) -> Result<(), StateError> {
        self.lock().public_keys.clear();
        Ok(())
    }

    fn create_run(
        &self,
        fab_id: &str,
        fab_version: &str,
        fab_hash: &str,
        override_config: HashMap<String, Scalar>,
        federation_options: ConfigsRecord,
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
                context: None,
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
        let current = entry.run.status.clone().unwrap_or_default();
        if !transition_allowed(&current, &new_status) {
            return Ok(false);
        }
        apply_transition(&mut entry.run, new_status, &now_iso);
        Ok(true)
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
