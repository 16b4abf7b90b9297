//! `--mode round`: federated rounds of a large model, to measure what a round costs the
//! SuperLink in memory and time.
//!
//! The generator plays the ServerApp through the ServerAppIo API and every node through the
//! Fleet API. Each round the ServerApp pushes one TaskIns per node carrying the model
//! (`--payload-bytes` of array data, the same bytes for every node, as a strategy sends the
//! same parameters to all), one PushTaskIns each; every node pulls its TaskIns and pushes a
//! reply of the same size (its own bytes, as a trained model differs per node); the ServerApp
//! pulls the replies until it has all of them, which deletes the round's tasks on the
//! SuperLink. After the last round the generator waits `SETTLE` and reads the SuperLink's
//! resident memory again: what a round leaves behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    Array, Node, ParametersRecord, PullTaskResRequest, PushTaskInsRequest, PushTaskResRequest,
    RecordSet, Task, TaskIns, TaskRes,
};
use flwr_runtime::clock::unix_now;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::node::SimNode;
use crate::server::ServerProbe;
use crate::signed;

/// Wait after the last round before the memory it left behind is read.
const SETTLE: Duration = Duration::from_secs(3);
/// Sleep between a node's empty PullTaskIns calls a SuperLink did not hold, and between the
/// ServerApp's PullTaskRes calls: short, so that the round time is the SuperLink's.
const POLL: Duration = Duration::from_millis(50);
/// The hold a node asks for.
const HOLD_MS: &str = "20000";
/// Lifetime of every task: long enough for the slowest round.
const TTL_SECONDS: f64 = 3600.0;
/// A round that takes longer than this is abandoned.
const ROUND_DEADLINE: Duration = Duration::from_secs(600);

/// What `--mode round` measured. Field names are the JSON keys (under `round`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundReport {
    /// The run the tasks belong to.
    pub run_id: u64,
    /// Rounds asked for.
    pub rounds: usize,
    /// Rounds in which every node's reply came back.
    pub completed: usize,
    /// Array bytes of the model and of every reply.
    pub model_bytes: usize,
    /// Seconds of each completed round, first push to last reply pulled.
    pub round_s: Vec<f64>,
    /// SuperLink resident memory after registration, before the first round, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_idle_mib: Option<f64>,
    /// SuperLink peak resident memory (VmHWM) above idle, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_above_idle_mib: Option<f64>,
    /// The peak above idle as a multiple of the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_peak_models: Option<f64>,
    /// SuperLink resident memory above idle once the rounds' tasks are gone, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_after_above_idle_mib: Option<f64>,
    /// Why the rounds stopped early, if they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The ServerApp's side and the model.
#[derive(Debug)]
pub(crate) struct Rounds {
    /// The ServerAppIo client.
    pub(crate) client: ServerAppIoClient<Channel>,
    /// The running run.
    pub(crate) run_id: u64,
    /// Rounds to play.
    pub(crate) rounds: usize,
    /// Array bytes of the model and of each reply.
    pub(crate) model_bytes: usize,
}

impl Rounds {
    /// Plays the rounds with `nodes`; `probe` reads the SuperLink's memory.
    pub(crate) async fn run(
        self,
        nodes: &[Arc<SimNode>],
        probe: Option<&ServerProbe>,
    ) -> RoundReport {
        let idle = probe.and_then(|probe| probe.memory().ok());
        let model = array(payload(self.model_bytes, 0));
        // Each node's reply is its own content, made once.
        let replies: Vec<Array> = (0..nodes.len())
            .map(|index| array(payload(self.model_bytes, index + 1)))
            .collect();
        let mut report = RoundReport {
            run_id: self.run_id,
            rounds: self.rounds,
            completed: 0,
            model_bytes: self.model_bytes,
            round_s: Vec::new(),
            server_idle_mib: None,
            server_peak_above_idle_mib: None,
            server_peak_models: None,
            server_after_above_idle_mib: None,
            failure: None,
        };
        for round in 1..=self.rounds {
            let started = Instant::now();
            match tokio::time::timeout(ROUND_DEADLINE, self.round(round, nodes, &model, &replies))
                .await
            {
                Ok(Ok(())) => {
                    report.completed += 1;
                    report.round_s.push(started.elapsed().as_secs_f64());
                }
                Ok(Err(failure)) => {
                    report.failure = Some(format!("round {round}: {failure}"));
                    break;
                }
                Err(_) => {
                    report.failure = Some(format!("round {round}: not done in {ROUND_DEADLINE:?}"));
                    break;
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
        let after = probe.and_then(|probe| probe.memory().ok());
        if let (Some(idle), Some(after)) = (idle, after) {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let above = mib(after.peak_kib.saturating_sub(idle.rss_kib));
            report.server_idle_mib = Some(mib(idle.rss_kib));
            report.server_peak_above_idle_mib = Some(above);
            if self.model_bytes > 0 {
                report.server_peak_models = Some(above * 1_048_576.0 / self.model_bytes as f64);
            }
            report.server_after_above_idle_mib = Some(mib(after.rss_kib) - mib(idle.rss_kib));
        }
        report
    }

    /// One round: a TaskIns per node, each node's reply, the replies pulled.
    async fn round(
        &self,
        round: usize,
        nodes: &[Arc<SimNode>],
        model: &Array,
        replies: &[Array],
    ) -> Result<(), String> {
        let mut answering = JoinSet::new();
        for (node, reply) in nodes.iter().zip(replies) {
            let (node, reply, run_id) = (Arc::clone(node), reply.clone(), self.run_id);
            answering.spawn(async move { answer(&node, run_id, reply).await });
        }
        let mut task_ids = Vec::with_capacity(nodes.len());
        for node in nodes {
            let request = PushTaskInsRequest {
                task_ins_list: vec![task_ins(self.run_id, round, node.node_id, model.clone())],
                run_id: self.run_id,
            };
            let response = self
                .client
                .clone()
                .push_task_ins(request)
                .await
                .map_err(|status| {
                    format!("PushTaskIns: {:?}: {}", status.code(), status.message())
                })?;
            match response.into_inner().task_ids.into_iter().next() {
                Some(id) if !id.is_empty() => task_ids.push(id),
                _ => return Err("PushTaskIns stored nothing".to_owned()),
            }
        }
        let mut pending: Vec<String> = task_ids;
        while !pending.is_empty() {
            // One id per call: the replies of a round together exceed one message's limit.
            let mut answered = Vec::new();
            for id in &pending {
                let response = self
                    .client
                    .clone()
                    .pull_task_res(PullTaskResRequest {
                        node: Some(Node {
                            node_id: 0,
                            anonymous: true,
                        }),
                        task_ids: vec![id.clone()],
                        run_id: self.run_id,
                    })
                    .await
                    .map_err(|status| {
                        format!("PullTaskRes: {:?}: {}", status.code(), status.message())
                    })?;
                if !response.into_inner().task_res_list.is_empty() {
                    answered.push(id.clone());
                }
            }
            pending.retain(|id| !answered.contains(id));
            if !pending.is_empty() {
                tokio::time::sleep(POLL).await;
            }
            if let Some(Ok(Err(failure))) = answering.try_join_next() {
                return Err(failure);
            }
        }
        while let Some(outcome) = answering.join_next().await {
            outcome.map_err(|error| format!("a node's task failed: {error}"))??;
        }
        Ok(())
    }
}

/// A node's part of a round: pull until its TaskIns arrives, then push the reply.
async fn answer(node: &SimNode, run_id: u64, reply: Array) -> Result<(), String> {
    let hold = tonic::metadata::MetadataValue::from_static(HOLD_MS);
    let task_ins = loop {
        let pulled = node
            .pull_held(Some(&hold), Duration::from_secs(30))
            .await
            .map_err(|outcome| format!("PullTaskIns: {outcome:?}"))?;
        if let Some(task_ins) = pulled.task_ins_list.into_iter().next() {
            break task_ins;
        }
        if !pulled.held {
            tokio::time::sleep(POLL).await;
        }
    };
    let body = task_res(node.node_id, run_id, &task_ins, reply);
    let results = node
        .push_signed(body)
        .await
        .map_err(|failure| format!("PushTaskRes: {failure}"))?;
    if results.contains_key("None") {
        return Err("PushTaskRes: the SuperLink did not store the reply".to_owned());
    }
    Ok(())
}

/// The ServerApp's TaskIns of `round` for `node_id` (BEHAVIOR.md §6.1).
fn task_ins(run_id: u64, round: usize, node_id: u64, model: Array) -> TaskIns {
    TaskIns {
        task_id: String::new(),
        group_id: round.to_string(),
        run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(signed::node(node_id)),
            created_at: unix_now(),
            delivered_at: String::new(),
            pushed_at: 0.0,
            ttl: TTL_SECONDS,
            ancestry: Vec::new(),
            task_type: "train".to_owned(),
            recordset: Some(recordset(model)),
            error: None,
        }),
    }
}

/// The reply of `node_id` to `task_ins`, shaped as the reference SuperNode's.
fn task_res(node_id: u64, run_id: u64, task_ins: &TaskIns, reply: Array) -> PushTaskResRequest {
    // A reply lives no longer than its instruction, as the reference's `create_reply` makes it.
    let created_at = unix_now();
    let ttl = task_ins
        .task
        .as_ref()
        .map_or(TTL_SECONDS, |task| task.created_at + task.ttl - created_at);
    PushTaskResRequest {
        node: Some(signed::node(node_id)),
        task_res_list: vec![TaskRes {
            task_id: String::new(),
            group_id: task_ins.group_id.clone(),
            run_id,
            task: Some(Task {
                producer: Some(signed::node(node_id)),
                consumer: Some(Node {
                    node_id: 0,
                    anonymous: true,
                }),
                created_at,
                delivered_at: String::new(),
                pushed_at: 0.0,
                ttl,
                ancestry: vec![task_ins.task_id.clone()],
                task_type: "train".to_owned(),
                recordset: Some(recordset(reply)),
                error: None,
            }),
        }],
    }
}

fn recordset(model: Array) -> RecordSet {
    RecordSet {
        parameters: HashMap::from([(
            "model".to_owned(),
            ParametersRecord {
                data_keys: vec!["weights".to_owned()],
                data_values: vec![model],
            },
        )]),
        metrics: HashMap::new(),
        configs: HashMap::new(),
    }
}

fn array(data: Bytes) -> Array {
    Array {
        dtype: "uint8".to_owned(),
        shape: vec![i32::try_from(data.len()).unwrap_or(i32::MAX)],
        stype: "numpy.ndarray".to_owned(),
        data,
    }
}

/// `bytes` bytes of a pattern that differs with `seed`, so replies are distinct content.
fn payload(bytes: usize, seed: usize) -> Bytes {
    (0..bytes)
        .map(|i| ((i + seed * 7) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_name_their_task_ins_and_differ_from_the_model() {
        let task_ins = TaskIns {
            task_id: "abc".to_owned(),
            ..task_ins(7, 1, 3, array(payload(16, 0)))
        };
        let reply = task_res(3, 7, &task_ins, array(payload(16, 1)));
        let task = reply.task_res_list[0]
            .task
            .as_ref()
            .map(|task| task.ancestry.clone());
        assert_eq!(task, Some(vec!["abc".to_owned()]));
        assert_ne!(payload(16, 0), payload(16, 1));
        assert_eq!(payload(16, 2).len(), 16);
    }
}
