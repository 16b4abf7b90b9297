//! The SuperLink's metrics (`--metrics-address`): every name it exports is registered here.
//!
//! Counters on the request path are atomics kept whether or not metrics are exported (node-auth
//! refusals, allow-list reloads, ServerApp launches); the gRPC request wrapper is installed
//! only with `--metrics-address`. Everything read from the state (nodes, runs, tasks) is read
//! when `/metrics` is scraped, on the blocking pool, so the store does no extra work per
//! request. No label carries a node, run or key: methods, codes and small fixed sets only.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `flwr_grpc_requests_total` | counter | `api`, `method`, `code` |
//! | `flwr_grpc_request_duration_seconds` | histogram | `api`, `method` |
//! | `flwr_grpc_received_bytes_total`, `flwr_grpc_sent_bytes_total` | counter | `api` |
//! | `flwr_superlink_nodes_registered`, `flwr_superlink_nodes_online` | gauge | |
//! | `flwr_superlink_runs` | gauge | `status` |
//! | `flwr_superlink_task_ins_stored`, `flwr_superlink_task_res_stored` | gauge | |
//! | `flwr_superlink_held_pulls` | gauge | |
//! | `flwr_superlink_open_connections`, `flwr_superlink_max_connections` | gauge | |
//! | `flwr_superlink_node_auth_refusals_total` | counter | `reason` |
//! | `flwr_superlink_allow_list_keys` | gauge | |
//! | `flwr_superlink_allow_list_reloads_total` | counter | `result` (`ok`, `rejected`) |
//! | `flwr_superlink_serverapp_starts_total`, `flwr_superlink_serverapp_failures_total` | counter | |

use std::sync::Arc;

use flwr_runtime::listener::ConnectionBudget;
use flwr_runtime::metrics::{GrpcMetrics, Metrics};
use flwr_state::lifecycle::{FINISHED, PENDING, RUNNING, STARTING};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::fleet_auth::NodeAuthenticator;
use crate::service::Stores;

/// The Fleet methods (label values of `method`; anything else counts as `other`).
pub const FLEET_METHODS: &[&str] = &flwr_proto::FleetRpc::NAMES;
/// The ServerAppIo methods.
pub const SERVERAPPIO_METHODS: &[&str] = &[
    "CreateRun",
    "GetNodes",
    "PushTaskIns",
    "PullTaskRes",
    "GetRun",
    "GetFab",
    "PullServerAppInputs",
    "PushServerAppOutputs",
    "UpdateRunStatus",
    "GetRunStatus",
    "PushLogs",
];
/// The Exec methods.
pub const EXEC_METHODS: &[&str] = &[
    "StartRun",
    "StopRun",
    "StreamLogs",
    "ListRuns",
    "GetLoginDetails",
    "GetAuthTokens",
];

/// The run statuses of `flwr_superlink_runs{status}` (RUN_STATUS.md).
const RUN_STATUSES: [&str; 4] = [PENDING, STARTING, RUNNING, FINISHED];

/// ServerApp launches and failures (`--isolation subprocess`); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LauncherCounters {
    /// Children started.
    pub starts: Counter,
    /// Children that could not be started, or exited unsuccessfully on their own.
    pub failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// What the registry reads at scrape time.
#[derive(Debug)]
pub(crate) struct Sources {
    pub(crate) stores: Stores,
    pub(crate) budget: ConnectionBudget,
    pub(crate) auth: Option<Arc<NodeAuthenticator>>,
    pub(crate) launcher: LauncherCounters,
}

/// Builds the SuperLink's registry: the gRPC request metrics to wrap the APIs with, and the
/// registry with its scrape-time refresh.
pub(crate) fn build(sources: Sources) -> (GrpcMetrics, Metrics) {
    let mut metrics = Metrics::new();
    let registry = metrics.registry_mut();
    let grpc = GrpcMetrics::register(registry);

    let gauge = |registry: &mut prometheus_client::registry::Registry, name, help| {
        let gauge = Gauge::<i64>::default();
        registry.register(name, help, gauge.clone());
        gauge
    };
    let registered = gauge(
        registry,
        "flwr_superlink_nodes_registered",
        "SuperNodes registered (CreateNode without DeleteNode), online or not",
    );
    let online = gauge(
        registry,
        "flwr_superlink_nodes_online",
        "Registered SuperNodes whose last Ping is within their ping interval",
    );
    let task_ins = gauge(
        registry,
        "flwr_superlink_task_ins_stored",
        "TaskIns (instructions to SuperNodes) stored, delivered or not",
    );
    let task_res = gauge(
        registry,
        "flwr_superlink_task_res_stored",
        "TaskRes (replies of SuperNodes) stored",
    );
    let held = gauge(
        registry,
        "flwr_superlink_held_pulls",
        "PullTaskIns and PullTaskRes calls held open, waiting for work",
    );
    let open = gauge(
        registry,
        "flwr_superlink_open_connections",
        "Connections open on all APIs",
    );
    let max = gauge(
        registry,
        "flwr_superlink_max_connections",
        "Connection cap over all APIs (--max-connections)",
    );
    let runs = Family::<StatusLabels, Gauge>::default();
    registry.register(
        "flwr_superlink_runs",
        "Runs by status (pending, starting, running, finished)",
        runs.clone(),
    );
    registry.register(
        "flwr_superlink_serverapp_starts",
        "flwr-serverapp processes started (--isolation subprocess)",
        sources.launcher.starts.clone(),
    );
    registry.register(
        "flwr_superlink_serverapp_failures",
        "flwr-serverapp processes that could not start or exited unsuccessfully on their own",
        sources.launcher.failures.clone(),
    );
    let allowed = sources.auth.as_ref().map(|auth| {
        registry.register(
            "flwr_superlink_node_auth_refusals",
            "Fleet requests refused by node authentication, by reason",
            auth.refusal_counts(),
        );
        registry.register(
            "flwr_superlink_allow_list_reloads",
            "Changes of --auth-list-public-keys applied (ok) or refused (rejected)",
            auth.reload_counts(),
        );
        gauge(
            registry,
            "flwr_superlink_allow_list_keys",
            "Public keys on the node-authentication allow-list",
        )
    });

    let Sources {
        stores,
        budget,
        auth,
        launcher: _,
    } = sources;
    metrics.on_scrape(move || {
        let as_gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        // A failing store leaves the previous values; the scrape itself still answers.
        match stores.state.node_counts() {
            Ok(counts) => {
                registered.set(as_gauge(counts.registered));
                online.set(as_gauge(counts.online));
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot count nodes"),
        }
        match stores.state.task_counts() {
            Ok(counts) => {
                task_ins.set(as_gauge(counts.task_ins));
                task_res.set(as_gauge(counts.task_res));
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot count tasks"),
        }
        match stores.state.runs() {
            Ok(all) => {
                let mut counts = [0_usize; RUN_STATUSES.len()];
                for run in &all {
                    let status = run.status.as_ref().map_or("", |s| s.status.as_str());
                    if let Some(index) = RUN_STATUSES.iter().position(|s| *s == status) {
                        counts[index] += 1;
                    }
                }
                for (status, count) in RUN_STATUSES.iter().zip(counts) {
                    runs.get_or_create(&StatusLabels { status })
                        .set(as_gauge(count));
                }
            }
            Err(error) => tracing::warn!(%error, "metrics: cannot list runs"),
        }
        held.set(as_gauge(stores.events.held()));
        open.set(as_gauge(budget.in_use()));
        max.set(as_gauge(budget.max()));
        if let (Some(gauge), Some(auth)) = (&allowed, &auth) {
            gauge.set(as_gauge(auth.allowed_keys()));
        }
    });
    (grpc, metrics)
}
