//! The three gRPC services of the SuperLink, one file each, and what they share.
//!
//! Every handler is an async fn returning a domain [`Result`](crate::error::Error); the tonic
//! trait impls only unwrap the request and convert the error at the edge. LinkState calls go
//! through `Stores::call`, which runs them on the blocking pool when the store may block
//! (SQLite) and in place when it cannot (in memory); calls that touch FAB files use
//! `Stores::call_blocking`.

pub mod exec;
pub mod fleet;
pub mod serverappio;

use std::sync::Arc;
use std::time::Duration;

use flwr_core::hold;

use flwr_proto::{Run, RunStatus};
use flwr_state::{guard_denial, Ffs, FfsError, Guard, LinkState};

use crate::error::Error;
use crate::wakeups::Wakeups;

// `time.time()` for the services: one clock for the SuperLink, the SuperNode and the generator.
pub(crate) use flwr_runtime::clock::unix_now;

/// The LinkState, the FAB storage and the events of their changes, shared by all services.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Runs, nodes, tasks, contexts and logs.
    pub state: Arc<dyn LinkState>,
    /// FAB bytes by hash.
    pub ffs: Arc<Ffs>,
    /// Wakes held pulls when what they wait for changes.
    pub events: Arc<Wakeups>,
}

impl Stores {
    /// Stores over `state` and `ffs`, with a fresh event hub.
    pub fn new(state: Arc<dyn LinkState>, ffs: Arc<Ffs>) -> Self {
        Self {
            state,
            ffs,
            events: Arc::new(Wakeups::default()),
        }
    }

    /// Runs a LinkState `call`: in place when the store never blocks, else like
    /// [`call_blocking`](Self::call_blocking). The in-memory store holds its lock only for work
    /// proportional to the request, so a hop to another thread would cost more than the call.
    pub(crate) async fn call<T, F>(&self, call: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn LinkState, &Ffs) -> Result<T, Error> + Send + 'static,
    {
        if self.state.blocks() {
            self.call_blocking(call).await
        } else {
            call(self.state.as_ref(), self.ffs.as_ref())
        }
    }

    /// Runs `call` on the blocking thread pool with both stores (for SQLite and FAB files).
    pub(crate) async fn call_blocking<T, F>(&self, call: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn LinkState, &Ffs) -> Result<T, Error> + Send + 'static,
    {
        let stores = self.clone();
        tokio::task::spawn_blocking(move || call(stores.state.as_ref(), stores.ffs.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("state call did not complete: {e}")))?
    }
}

/// The run, if `guard` lets a call for it through (BEHAVIOR.md §5.3).
///
/// # Errors
///
/// Unknown run: `UNKNOWN` (the reference's escaped `KeyError`); refused status:
/// `PERMISSION_DENIED` with the reference's details.
pub(crate) fn guarded_run(state: &dyn LinkState, run_id: u64, guard: Guard) -> Result<Run, Error> {
    let run = state
        .run(run_id)?
        .ok_or_else(|| Error::Unknown(format!("Run {run_id} not found")))?;
    if let Some(details) = guard_denial(&status_of(&run), guard) {
        return Err(Error::PermissionDenied(details));
    }
    Ok(run)
}

/// A run's status (the default, all-empty status if the store left it unset).
pub(crate) fn status_of(run: &Run) -> RunStatus {
    run.status.clone().unwrap_or_default()
}

/// The FAB with `hash`, or the reference's `Found no FAB with hash: <hash>` as `UNKNOWN`.
pub(crate) fn fab_content(ffs: &Ffs, hash: &str) -> Result<Vec<u8>, Error> {
    let missing = || Error::Unknown(format!("Found no FAB with hash: {hash}"));
    match ffs.get(hash) {
        Ok(Some(content)) => Ok(content),
        Ok(None) | Err(FfsError::InvalidHash(_)) => Err(missing()),
        Err(error) => Err(Error::Unknown(format!("FAB storage failed: {error}"))),
    }
}

/// Converts a handler result into what tonic's service traits return: the one place where
/// domain errors become statuses.
#[allow(clippy::result_large_err)] // the size of `tonic::Status` is tonic's trait contract
pub(crate) fn respond<T>(result: Result<T, Error>) -> Result<tonic::Response<T>, tonic::Status> {
    result
        .map(tonic::Response::new)
        .map_err(tonic::Status::from)
}

/// A pull's answer and, when the call was held, the bound it was held for.
#[derive(Debug)]
pub struct Held<T> {
    /// The answer, as an unheld pull would have given it at the moment it was made.
    pub response: T,
    /// `Some(bound)` when the pull subscribed and waited (or would have waited) up to `bound`.
    pub held: Option<Duration>,
}

/// What a pull's request metadata says about holding it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldRequest {
    /// The hold the caller asked for ([`flwr_core::hold::REQUEST_HEADER`]).
    pub asked: Option<Duration>,
    /// The caller's own deadline for the call (`grpc-timeout`), if it set one.
    pub caller_timeout: Option<Duration>,
}

impl HoldRequest {
    /// Reads the hold metadata and `grpc-timeout` of a request.
    pub(crate) fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Self {
        let header = |name: &str| metadata.get(name).map(|value| value.as_bytes());
        Self {
            asked: header(hold::REQUEST_HEADER).and_then(hold::parse_millis),
            caller_timeout: header("grpc-timeout").and_then(parse_grpc_timeout),
        }
    }

    /// How long to hold this pull: what the caller asked for, else `unasked` (the server's
    /// default for callers that do not ask), never past half the caller's own deadline — a
    /// client that gives up sooner than the hold would only see DEADLINE_EXCEEDED.
    pub fn bound(self, unasked: Option<Duration>) -> Option<Duration> {
        let bound = self.asked.or(unasked)?;
        let bound = self
            .caller_timeout
            .map_or(bound, |timeout| bound.min(timeout / 2));
        (!bound.is_zero()).then_some(bound)
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0_u64, |acc, digit| acc * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// [`respond`] for a pull that may have been held: the reply metadata tells our clients that
/// an empty answer came after a hold, so they may pull again at once.
#[allow(clippy::result_large_err)] // the size of `tonic::Status` is tonic's trait contract
pub(crate) fn respond_held<T>(
    result: Result<Held<T>, Error>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let held = result.map_err(tonic::Status::from)?;
    let mut response = tonic::Response::new(held.response);
    if let Some(bound) = held.held {
        if let Ok(value) = hold::format_millis(bound).parse() {
            response.metadata_mut().insert(hold::REPLY_HEADER, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&'static str, &'static str)]) -> HoldRequest {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in headers {
            metadata.insert(*name, value.parse().expect("ASCII"));
        }
        HoldRequest::from_metadata(&metadata)
    }

    #[test]
    fn a_hold_is_what_was_asked_else_the_default_within_half_the_callers_deadline() {
        let secs = Duration::from_secs;
        let default = Some(Duration::from_millis(2_500));
        assert_eq!(request(&[]).bound(None), None);
        assert_eq!(request(&[]).bound(default), default);
        assert_eq!(
            request(&[("flwr-hold-ms", "20000")]).bound(default),
            Some(secs(20))
        );
        assert_eq!(
            request(&[("flwr-hold-ms", "20000")]).bound(None),
            Some(secs(20))
        );
        let hurried = [("flwr-hold-ms", "20000"), ("grpc-timeout", "4S")];
        assert_eq!(request(&hurried).bound(None), Some(secs(2)));
        assert_eq!(
            request(&[("grpc-timeout", "1m")]).bound(default),
            Some(Duration::from_micros(500))
        );
        assert_eq!(request(&[("grpc-timeout", "1n")]).bound(default), None);
        assert_eq!(request(&[("grpc-timeout", "1H")]).bound(default), default);
        assert_eq!(request(&[("grpc-timeout", "junk")]).bound(default), default);
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_grpc_timeout(b"1500m"),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"S", b"123456789S", b"5x", b"-5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
