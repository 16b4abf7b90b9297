//! The SuperNode's metrics (`--metrics-address`): every name it exports is registered here.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `flwr_supernode_registered` | gauge | |
//! | `flwr_supernode_tasks_received_total` | counter | |
//! | `flwr_supernode_tasks_completed_total`, `flwr_supernode_tasks_failed_total` | counter | |
//! | `flwr_supernode_clientapp_exits_total` | counter | `code` |
//! | `flwr_supernode_clientapp_duration_seconds` | histogram | |
//! | `flwr_supernode_fleet_retries_total`, `flwr_supernode_reconnects_total` | counter | |
//! | `flwr_grpc_*` of the ClientAppIo API | see `flwr_runtime::metrics` | `api="ClientAppIo"` |
//!
//! The handles are atomics shared by clones and kept whether or not they are exported.

use std::process::ExitStatus;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// What a SuperNode counts; cheap to clone (every clone shares the values).
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    /// 1 while the node is registered with the SuperLink, else 0.
    pub(crate) registered: Gauge,
    pub(crate) received: Counter,
    pub(crate) completed: Counter,
    pub(crate) failed: Counter,
    exits: Family<ExitLabels, Counter>,
    /// Time from handing a message to the ClientApp to holding its reply (or giving up).
    pub(crate) duration: Histogram,
    pub(crate) retries: Counter,
    pub(crate) reconnects: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    /// The exit status (`0`–`255`) or `signal`.
    code: String,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            registered: Gauge::default(),
            received: Counter::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            exits: Family::default(),
            // 1 ms to ~9 min: warm ClientApps answer in milliseconds, training takes minutes.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            retries: Counter::default(),
            reconnects: Counter::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers every SuperNode metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "flwr_supernode_registered",
            "1 while this SuperNode is registered with the SuperLink, else 0",
            self.registered.clone(),
        );
        registry.register(
            "flwr_supernode_tasks_received",
            "Instructions (TaskIns) received from the SuperLink",
            self.received.clone(),
        );
        registry.register(
            "flwr_supernode_tasks_completed",
            "Instructions answered with the ClientApp's reply",
            self.completed.clone(),
        );
        registry.register(
            "flwr_supernode_tasks_failed",
            "Instructions answered with an error reply, or dropped for an invalid reply",
            self.failed.clone(),
        );
        registry.register(
            "flwr_supernode_clientapp_exits",
            "ClientApp processes that exited, by exit code (or `signal`)",
            self.exits.clone(),
        );
        registry.register_with_unit(
            "flwr_supernode_clientapp_duration",
            "Time from handing a message to the ClientApp to holding its reply",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "flwr_supernode_fleet_retries",
            "Fleet calls retried after a transport failure or refusal",
            self.retries.clone(),
        );
        registry.register(
            "flwr_supernode_reconnects",
            "Registrations after the first (the SuperLink had forgotten this node)",
            self.reconnects.clone(),
        );
    }

    /// Counts a ClientApp process exit.
    pub(crate) fn exited(&self, status: &ExitStatus) {
        let code = status
            .code()
            .map_or_else(|| "signal".to_owned(), |code| code.to_string());
        self.exits.get_or_create(&ExitLabels { code }).inc();
    }
}
