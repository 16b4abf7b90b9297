//! The result of one test: a JSON object (one line, for scripts) and a table (for people).

use std::collections::BTreeMap;
use std::fmt;

pub use crate::round::RoundReport;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary of answered calls, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// The summary of a histogram in microseconds (all zero when it is empty).
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One RPC's share of a test (cadence mode sends two).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RpcReport {
    /// Answered calls in the window.
    pub requests: u64,
    /// Answered calls per second of the window.
    pub requests_per_s: f64,
    /// Their latency.
    #[serde(flatten)]
    pub latency: Latency,
}

/// What `--mode dispatch` measured: TaskIns pushed through the ServerAppIo API and how long
/// each took to reach its node. Field names are the JSON keys (under `dispatch`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DispatchReport {
    /// The run the TaskIns belong to.
    pub run_id: u64,
    /// TaskIns per second asked for (`--rate`).
    pub rate: f64,
    /// The hold each PullTaskIns asked for, in ms (0: none asked).
    pub hold_ms: u64,
    /// TaskIns the SuperLink stored (PushTaskIns answered with a task id).
    pub pushed: u64,
    /// PushTaskIns calls that failed or stored nothing (their codes are in `errors`).
    pub push_failed: u64,
    /// Pushed TaskIns that reached their node.
    pub delivered: u64,
    /// Pushed TaskIns that had not reached their node by the end of the window plus
    /// `grace_s`.
    pub not_delivered: u64,
    /// TaskIns received that this test did not push, or received twice.
    pub unexpected: u64,
    /// Seconds after the last push was answered during which deliveries still counted.
    pub grace_s: f64,
    /// PullTaskIns answers.
    pub pull_replies: u64,
    /// PullTaskIns answers marked held (`flwr-held-ms`): 0 from a SuperLink that does not hold.
    pub held_replies: u64,
    /// Dispatch latency: PushTaskIns sent → the PullTaskIns answer carrying it received.
    #[serde(flatten)]
    pub latency: Latency,
    /// Latency of the ServerAppIo PushTaskIns calls.
    pub push_latency: Latency,
}

/// What one test measured. Field names are the JSON keys.
///
/// `requests` counts calls sent in the measurement window and answered without a gRPC error;
/// failed calls count in `errors` (by gRPC code name, e.g. `UNAUTHENTICATED`), registration's
/// CreateNode failures included, which `registration_errors` also lists on their own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// `cadence`, `closed-loop` or `dispatch`.
    pub mode: String,
    /// `ping`, `pull` or `push`; `ping+pull` in cadence and dispatch mode.
    pub rpc: String,
    /// The Fleet API address.
    pub superlink: String,
    /// Whether the connections used TLS.
    pub tls: bool,
    /// Whether requests carried node-authentication headers.
    pub auth: bool,
    /// Simulated nodes.
    pub nodes: usize,
    /// Nodes that registered.
    pub nodes_connected: usize,
    /// HTTP/2 connections opened.
    pub connections: usize,
    /// Nodes per connection.
    pub nodes_per_connection: usize,
    /// Requests in flight (closed loop) or nodes (cadence).
    pub concurrency: usize,
    /// Array bytes per PushTaskRes.
    pub payload_bytes: usize,
    /// Seconds from the first connection to the last CreateNode answer.
    pub registration_s: f64,
    /// CreateNode latency.
    pub registration: Latency,
    /// CreateNode failures by code.
    pub registration_errors: BTreeMap<String, u64>,
    /// Length of the measurement window in seconds (until the last call of the window ended).
    pub seconds: f64,
    /// Answered calls.
    pub requests: u64,
    /// Answered calls per second.
    pub requests_per_s: f64,
    /// Latency of answered calls.
    #[serde(flatten)]
    pub latency: Latency,
    /// Failed calls, registration included.
    pub errors_total: u64,
    /// Failed calls by gRPC code name (or a local failure's name).
    pub errors: BTreeMap<String, u64>,
    /// The first failure, e.g. `Ping: UNAUTHENTICATED: Access denied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Per RPC, when the test sent several kinds.
    pub by_rpc: BTreeMap<String, RpcReport>,
    /// Pings answered `success: false` (the SuperLink did not know the node).
    pub ping_unsuccessful: u64,
    /// Calls sent again after losing their connection (`--retries`); not errors.
    pub retried: u64,
    /// PushTaskRes answered `{"None": 0}` (not stored: its TaskIns does not exist).
    pub push_not_stored: u64,
    /// TaskIns delivered to the simulated nodes (and dropped).
    pub task_ins_received: u64,
    /// The run PushTaskRes named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<u64>,
    /// SuperLink CPU time (user + system) in the window per answered call, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_req: Option<f64>,
    /// SuperLink resident memory at the end, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_mib: Option<f64>,
    /// SuperLink peak resident memory, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_peak_mib: Option<f64>,
    /// Whether calls still running at the hard deadline were abandoned.
    pub hard_stopped: bool,
    /// Pushes and deliveries in `--mode dispatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<DispatchReport>,
    /// Rounds, their times and the SuperLink's memory in `--mode round`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<RoundReport>,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Serializing plain numbers, strings and maps with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = match (self.tls, self.auth) {
            (true, true) => "TLS, node auth",
            (true, false) => "TLS, no auth",
            (false, true) => "plaintext, node auth",
            (false, false) => "plaintext, no auth",
        };
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: String| {
            writeln!(f, "  {label:<14} {value}")
        };
        writeln!(
            f,
            "flower-loadgen {} {} against {} ({security})",
            self.mode, self.rpc, self.superlink
        )?;
        row(
            f,
            "nodes",
            format!(
                "{} of {} registered over {} connections ({} per connection)",
                self.nodes_connected, self.nodes, self.connections, self.nodes_per_connection
            ),
        )?;
        row(
            f,
            "registration",
            format!(
                "{:.2} s, CreateNode p50 {:.2} ms p99 {:.2} ms, {} failed",
                self.registration_s,
                self.registration.p50_ms,
                self.registration.p99_ms,
                self.registration_errors.values().sum::<u64>()
            ),
        )?;
        let load = if self.mode == "cadence" {
            format!("{:.2} s, reference SuperNode cadence", self.seconds)
        } else if let Some(dispatch) = &self.dispatch {
            let hold = if dispatch.hold_ms == 0 {
                "pulls ask no hold".to_owned()
            } else {
                format!("pulls ask a {:.1} s hold", dispatch.hold_ms as f64 / 1000.0)
            };
            format!(
                "{:.2} s, TaskIns pushed at {} /s through ServerAppIo, {hold}",
                self.seconds, dispatch.rate
            )
        } else if self.rpc == "push" {
            format!(
                "{:.2} s, {} in flight, {} payload bytes",
                self.seconds, self.concurrency, self.payload_bytes
            )
        } else {
            format!("{:.2} s, {} in flight", self.seconds, self.concurrency)
        };
        row(f, "window", load)?;
        row(
            f,
            "requests",
            format!("{} answered, {:.1} /s", self.requests, self.requests_per_s),
        )?;
        row(
            f,
            "latency",
            format!(
                "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                self.latency.p50_ms, self.latency.p90_ms, self.latency.p99_ms, self.latency.max_ms
            ),
        )?;
        if self.by_rpc.len() > 1 {
            for (rpc, part) in &self.by_rpc {
                row(
                    f,
                    &format!("  {rpc}"),
                    format!(
                        "{} answered, {:.1} /s, p50 {:.3} ms p99 {:.3} ms",
                        part.requests,
                        part.requests_per_s,
                        part.latency.p50_ms,
                        part.latency.p99_ms
                    ),
                )?;
            }
        }
        if let Some(dispatch) = &self.dispatch {
            row(
                f,
                "dispatch",
                format!(
                    "{} pushed ({} failed), {} delivered, {} not delivered within {:.1} s, \
                     {} unexpected",
                    dispatch.pushed,
                    dispatch.push_failed,
                    dispatch.delivered,
                    dispatch.not_delivered,
                    dispatch.grace_s,
                    dispatch.unexpected
                ),
            )?;
            let latency = &dispatch.latency;
            row(
                f,
                "  latency",
                format!(
                    "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms (push → node has it)",
                    latency.p50_ms, latency.p90_ms, latency.p99_ms, latency.max_ms
                ),
            )?;
            row(
                f,
                "  push",
                format!(
                    "PushTaskIns p50 {:.3} ms p99 {:.3} ms",
                    dispatch.push_latency.p50_ms, dispatch.push_latency.p99_ms
                ),
            )?;
            row(
                f,
                "  held pulls",
                format!(
                    "{} of {} PullTaskIns answers",
                    dispatch.held_replies, dispatch.pull_replies
                ),
            )?;
        }
        if let Some(round) = &self.round {
            let times: Vec<String> = round.round_s.iter().map(|s| format!("{s:.2} s")).collect();
            row(
                f,
                "rounds",
                format!(
                    "{} of {} completed, model and replies {} bytes: {}",
                    round.completed,
                    round.rounds,
                    round.model_bytes,
                    times.join(", ")
                ),
            )?;
            if let (Some(idle), Some(peak), Some(after)) = (
                round.server_idle_mib,
                round.server_peak_above_idle_mib,
                round.server_after_above_idle_mib,
            ) {
                row(
                    f,
                    "  server rss",
                    format!(
                        "idle {idle:.1} MiB, peak {peak:.1} MiB above idle ({:.2}× the model), \
                         {after:.1} MiB above idle after the rounds",
                        round.server_peak_models.unwrap_or_default()
                    ),
                )?;
            }
            if let Some(failure) = &round.failure {
                row(f, "  failure", failure.clone())?;
            }
        }
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(code, count)| format!("{code} {count}"))
                .collect();
            format!("{} ({})", self.errors_total, list.join(", "))
        };
        row(f, "errors", errors)?;
        if let Some(first) = &self.first_error {
            row(f, "first error", first.clone())?;
        }
        let notes = [
            (self.ping_unsuccessful, "Pings answered success=false"),
            (self.retried, "calls retried after losing their connection"),
            (
                self.push_not_stored,
                "TaskRes not stored (unknown TaskIns, as intended)",
            ),
            (self.task_ins_received, "TaskIns received"),
        ];
        for (count, what) in notes {
            if count > 0 {
                row(f, "note", format!("{count} {what}"))?;
            }
        }
        if let Some(cpu) = self.server_cpu_us_per_req {
            row(f, "server cpu", format!("{cpu:.1} µs per answered request"))?;
        }
        if let (Some(rss), Some(peak)) = (self.server_rss_mib, self.server_rss_peak_mib) {
            row(
                f,
                "server rss",
                format!("{rss:.1} MiB (peak {peak:.1} MiB)"),
            )?;
        }
        if self.hard_stopped {
            row(
                f,
                "hard stop",
                "calls still pending at the deadline were abandoned".to_owned(),
            )?;
        }
        Ok(())
    }
}
