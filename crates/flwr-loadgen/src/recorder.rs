//! Latencies and outcomes of many concurrent calls, in a few locked shards.
//!
//! An `hdrhistogram` covering 1 µs to 60 s at 3 significant digits takes about 200 KB, too
//! much for one per node (50 000 nodes) or per worker; calls record into one of [`SHARDS`]
//! shards chosen by node, each behind a mutex held only for the few nanoseconds of a record.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use tonic::Code;

use crate::config::Rpc;

/// Shards: enough that worker threads rarely meet on one lock.
const SHARDS: usize = 32;

/// Largest latency recorded exactly, in microseconds; longer ones count as this.
const MAX_MICROS: u64 = 60_000_000;

/// An RPC as recorded: the measured Fleet [`Rpc`]s, registration's CreateNode and the
/// ServerAppIo PushTaskIns of `--mode dispatch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `CreateNode`, during registration.
    CreateNode,
    /// `Ping`.
    Ping,
    /// `PullTaskIns`.
    PullTaskIns,
    /// ServerAppIo `PushTaskIns` (dispatch mode; not a Fleet call, so not in
    /// [`Tally::measured_latencies`]).
    PushTaskIns,
    /// `PushTaskRes`.
    PushTaskRes,
}

impl Call {
    /// The RPC's name in `flwr.proto.Fleet`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CreateNode => "CreateNode",
            Self::Ping => "Ping",
            Self::PullTaskIns => "PullTaskIns",
            Self::PushTaskIns => "PushTaskIns",
            Self::PushTaskRes => "PushTaskRes",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::CreateNode => 0,
            Self::Ping => 1,
            Self::PullTaskIns => 2,
            Self::PushTaskRes => 3,
            Self::PushTaskIns => 4,
        }
    }
}

impl From<Rpc> for Call {
    fn from(rpc: Rpc) -> Self {
        match rpc {
            Rpc::Ping => Self::Ping,
            Rpc::Pull => Self::PullTaskIns,
            Rpc::Push => Self::PushTaskRes,
        }
    }
}

/// What one call produced.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A normal answer.
    Answered,
    /// The call failed with this gRPC code (including our own deadline and connect failures).
    Failed(Code, String),
    /// The call could not be made: a local failure under its own name (not a gRPC code).
    Local(&'static str, String),
    /// Ping answered `success: false`: the SuperLink does not know the node.
    PingUnsuccessful,
    /// PushTaskRes answered `{"None": 0}`: the TaskRes was not stored.
    PushNotStored,
    /// PullTaskIns returned a TaskIns.
    TaskInsReceived,
}

/// Counts and latency histograms (microseconds) of a set of calls.
#[derive(Clone, Debug)]
pub(crate) struct Tally {
    /// Latency of answered calls, per [`Call`].
    latency: [Histogram<u64>; 5],
    /// Failed calls by gRPC code name.
    pub(crate) errors: BTreeMap<&'static str, u64>,
    /// The first failure, for the report.
    pub(crate) first_error: Option<String>,
    /// See [`Outcome::PingUnsuccessful`].
    pub(crate) ping_unsuccessful: u64,
    /// Calls sent again after losing their connection (`--retries`).
    pub(crate) retried: u64,
    /// See [`Outcome::PushNotStored`].
    pub(crate) push_not_stored: u64,
    /// See [`Outcome::TaskInsReceived`].
    pub(crate) task_ins_received: u64,
}

impl Tally {
    /// An empty tally.
    pub(crate) fn new() -> Result<Self, hdrhistogram::CreationError> {
        let histogram = || Histogram::new_with_bounds(1, MAX_MICROS, 3);
        Ok(Self {
            latency: [
                histogram()?,
                histogram()?,
                histogram()?,
                histogram()?,
                histogram()?,
            ],
            errors: BTreeMap::new(),
            first_error: None,
            ping_unsuccessful: 0,
            retried: 0,
            push_not_stored: 0,
            task_ins_received: 0,
        })
    }

    /// Adds one call.
    pub(crate) fn record(&mut self, call: Call, latency: Duration, outcome: Outcome) {
        match outcome {
            Outcome::Failed(code, message) => {
                self.error(call, code_name(code), &message);
                return;
            }
            Outcome::Local(name, message) => {
                self.error(call, name, &message);
                return;
            }
            Outcome::Answered => {}
            Outcome::PingUnsuccessful => self.ping_unsuccessful += 1,
            Outcome::PushNotStored => self.push_not_stored += 1,
            Outcome::TaskInsReceived => self.task_ins_received += 1,
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.latency[call.index()].saturating_record(micros.max(1));
    }

    fn error(&mut self, call: Call, name: &'static str, message: &str) {
        *self.errors.entry(name).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{}: {name}: {message}", call.name()));
        }
    }

    /// Adds `other`'s calls.
    pub(crate) fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            // Both histograms have the same bounds, so adding cannot fail.
            mine.add(theirs).ok();
        }
        for (code, count) in &other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.ping_unsuccessful += other.ping_unsuccessful;
        self.retried += other.retried;
        self.push_not_stored += other.push_not_stored;
        self.task_ins_received += other.task_ins_received;
    }

    /// Latencies of the answered `call`s.
    pub(crate) fn latency(&self, call: Call) -> &Histogram<u64> {
        &self.latency[call.index()]
    }

    /// Latencies of answered calls of every kind but CreateNode together.
    pub(crate) fn measured_latencies(&self) -> Histogram<u64> {
        let mut all = self.latency[Call::Ping.index()].clone();
        for call in [Call::PullTaskIns, Call::PushTaskRes] {
            // Same bounds, as above.
            all.add(&self.latency[call.index()]).ok();
        }
        all
    }

    /// Failed calls.
    pub(crate) fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A [`Tally`] shared by concurrent tasks.
#[derive(Debug)]
pub(crate) struct Recorder {
    shards: Box<[Mutex<Tally>]>,
}

impl Recorder {
    /// An empty recorder.
    pub(crate) fn new() -> Result<Self, hdrhistogram::CreationError> {
        let shards = (0..SHARDS)
            .map(|_| Tally::new().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shards: shards.into_boxed_slice(),
        })
    }

    /// Adds a call made for node `node`.
    /// Counts one retry of a call lost with its connection.
    pub(crate) fn retried(&self, node: usize) {
        self.shards[node % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retried += 1;
    }

    pub(crate) fn record(&self, node: usize, call: Call, latency: Duration, outcome: Outcome) {
        // A poisoned shard only means another task panicked mid-record; its counts still add.
        self.shards[node % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(call, latency, outcome);
    }

    /// Everything recorded so far.
    pub(crate) fn total(&self) -> Result<Tally, hdrhistogram::CreationError> {
        let mut total = Tally::new()?;
        for shard in self.shards.iter() {
            total.merge(&shard.lock().unwrap_or_else(PoisonError::into_inner));
        }
        Ok(total)
    }
}

/// The canonical gRPC name of a status code, as in `grpc/status.h` (`UNAUTHENTICATED`, …).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_tally() {
        let recorder = Recorder::new().unwrap();
        for node in 0..100 {
            recorder.record(
                node,
                Call::Ping,
                Duration::from_micros(100),
                Outcome::Answered,
            );
        }
        recorder.record(
            3,
            Call::PullTaskIns,
            Duration::from_millis(2),
            Outcome::TaskInsReceived,
        );
        recorder.record(
            4,
            Call::Ping,
            Duration::from_millis(1),
            Outcome::Failed(Code::Unauthenticated, "Access denied".into()),
        );
        recorder.record(
            5,
            Call::Ping,
            Duration::from_millis(1),
            Outcome::PingUnsuccessful,
        );
        let total = recorder.total().unwrap();
        assert_eq!(total.latency(Call::Ping).len(), 101);
        assert_eq!(total.latency(Call::PullTaskIns).len(), 1);
        assert_eq!(total.measured_latencies().len(), 102);
        assert_eq!(total.errors_total(), 1);
        assert_eq!(total.errors["UNAUTHENTICATED"], 1);
        assert_eq!(total.ping_unsuccessful, 1);
        assert_eq!(total.task_ins_received, 1);
        assert_eq!(
            total.first_error.as_deref(),
            Some("Ping: UNAUTHENTICATED: Access denied")
        );
    }

    #[test]
    fn huge_latencies_saturate() {
        let mut tally = Tally::new().unwrap();
        tally.record(
            Call::PushTaskRes,
            Duration::from_secs(3600),
            Outcome::Answered,
        );
        assert!(tally.latency(Call::PushTaskRes).max() >= MAX_MICROS / 2);
    }
}
