//! [`Context`] (what an app knows about its run and node, and its persistent state) and the
//! [`Run`] and [`Fab`] descriptions that come with it over the AppIo APIs.

use flwr_core::run::{RunStatus as Status, SubStatus};
use flwr_proto as proto;

use crate::error::ConversionError;
use crate::record::{config_from_proto, config_to_proto, Config, RecordSet};

/// The environment of one app invocation (BEHAVIOR.md §11.3).
///
/// A ClientApp gets its SuperNode's id and `--node-config`; a ServerApp gets node id 0 and an
/// empty node config. `state` persists across the messages of a run (ClientApp) or across
/// restarts of the run's ServerApp; changes an app makes are sent back with its reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Context {
    /// The run.
    pub run_id: u64,
    /// The node the app runs on; 0 for a ServerApp.
    pub node_id: u64,
    /// The SuperNode's `--node-config`, e.g. `partition-id`, `num-partitions`.
    pub node_config: Config,
    /// Persistent state.
    pub state: RecordSet,
    /// `[tool.flwr.app.config]` of the app with the run's overrides applied.
    pub run_config: Config,
}

impl From<Context> for proto::Context {
    fn from(context: Context) -> Self {
        Self {
            run_id: context.run_id,
            node_id: context.node_id,
            node_config: config_to_proto(context.node_config),
            state: Some(context.state.into()),
            run_config: config_to_proto(context.run_config),
        }
    }
}

impl TryFrom<proto::Context> for Context {
    type Error = ConversionError;

    /// An absent `state` is an empty RecordSet, as protobuf's default in Python.
    fn try_from(context: proto::Context) -> Result<Self, Self::Error> {
        Ok(Self {
            run_id: context.run_id,
            node_id: context.node_id,
            node_config: config_from_proto(context.node_config)?,
            state: context.state.unwrap_or_default().try_into()?,
            run_config: config_from_proto(context.run_config)?,
        })
    }
}

/// Status of a run (BEHAVIOR.md §5.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStatus {
    /// `pending`, `starting`, `running` or `finished`.
    pub status: String,
    /// Empty unless finished: `completed`, `failed` or `stopped`.
    pub sub_status: String,
    /// Free text, e.g. the failure reason.
    pub details: String,
}

impl RunStatus {
    /// `running`.
    pub fn running() -> Self {
        Status::Running.to_proto("").into()
    }

    /// `finished:completed`.
    pub fn completed() -> Self {
        Status::Finished(SubStatus::Completed).to_proto("").into()
    }

    /// `finished:failed` with `details`.
    pub fn failed(details: impl Into<String>) -> Self {
        Status::Finished(SubStatus::Failed).to_proto(details).into()
    }
}

impl From<RunStatus> for proto::RunStatus {
    fn from(status: RunStatus) -> Self {
        Self {
            status: status.status,
            sub_status: status.sub_status,
            details: status.details,
        }
    }
}

impl From<proto::RunStatus> for RunStatus {
    fn from(status: proto::RunStatus) -> Self {
        Self {
            status: status.status,
            sub_status: status.sub_status,
            details: status.details,
        }
    }
}

/// A run as the SuperLink describes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// The run id.
    pub run_id: u64,
    /// `<publisher>/<name>` of the app.
    pub fab_id: String,
    /// App version.
    pub fab_version: String,
    /// sha256 hex of the FAB.
    pub fab_hash: String,
    /// `flwr run --run-config` overrides.
    pub override_config: Config,
    /// ISO-8601 timestamps; empty where not reached (and always empty over ClientAppIo).
    pub pending_at: String,
    /// See `pending_at`.
    pub starting_at: String,
    /// See `pending_at`.
    pub running_at: String,
    /// See `pending_at`.
    pub finished_at: String,
    /// Current status (empty over ClientAppIo).
    pub status: RunStatus,
}

impl TryFrom<proto::Run> for Run {
    type Error = ConversionError;

    fn try_from(run: proto::Run) -> Result<Self, Self::Error> {
        Ok(Self {
            run_id: run.run_id,
            fab_id: run.fab_id,
            fab_version: run.fab_version,
            fab_hash: run.fab_hash,
            override_config: config_from_proto(run.override_config)?,
            pending_at: run.pending_at,
            starting_at: run.starting_at,
            running_at: run.running_at,
            finished_at: run.finished_at,
            status: run.status.unwrap_or_default().into(),
        })
    }
}

/// A Flower App Bundle: the zipped app project and its sha256 hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fab {
    /// sha256 hex of `content`.
    pub hash_str: String,
    /// The ZIP bytes.
    pub content: Vec<u8>,
}

impl From<proto::Fab> for Fab {
    fn from(fab: proto::Fab) -> Self {
        Self {
            hash_str: fab.hash_str,
            content: fab.content,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Scalar;

    #[test]
    fn context_round_trips_and_defaults_state() {
        let context = Context {
            run_id: 1,
            node_id: u64::MAX,
            node_config: Config::from([("partition-id".into(), Scalar::Sint64(0))]),
            state: RecordSet::new(),
            run_config: Config::from([("lr".into(), Scalar::Double(0.1))]),
        };
        let mut wire = proto::Context::from(context.clone());
        assert!(wire.state.is_some(), "state is always sent");
        assert_eq!(Context::try_from(wire.clone()), Ok(context.clone()));
        wire.state = None;
        assert_eq!(Context::try_from(wire), Ok(context));
    }

    #[test]
    fn run_from_proto() {
        let run = Run::try_from(proto::Run {
            run_id: 5,
            fab_id: "test/numpyapp".into(),
            status: Some(proto::RunStatus {
                status: "starting".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("converts");
        assert_eq!(run.run_id, 5);
        assert_eq!(run.status.status, "starting");
    }
}
