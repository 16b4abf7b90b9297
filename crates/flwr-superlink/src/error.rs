//! The services' domain error and its single conversion into a gRPC status.
//!
//! Status codes are the reference's (PROTOCOL.md §2.4), because Python peers react to the code:
//! a SuperNode retries only `UNAVAILABLE`, reads `PERMISSION_DENIED` as "run not running" and gives
//! up on anything else. Where the reference answers `UNKNOWN` because a Python exception escaped
//! its handler (`Exception calling application: <text>`), we answer `UNKNOWN` too, with the
//! reference's text when it describes the problem and an honest description otherwise, but
//! without the `Exception calling application:` prefix: no exception escaped here.

use flwr_state::StateError;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Node authentication refused the caller (the reason was logged): `UNAUTHENTICATED`
    /// `Access denied`, the same answer for every reason.
    #[error("Access denied")]
    AccessDenied,
    /// A precondition of the call does not hold: `FAILED_PRECONDITION`.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Our own machinery failed (a blocking task panicked): `INTERNAL`.
    #[error("{0}")]
    Internal(String),
    /// The request carries a value outside what the call accepts: `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist: `NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// A run-status guard refused the call (BEHAVIOR.md §5.3): `PERMISSION_DENIED`, with the
    /// reference's details (`Run is pending.` …).
    #[error("{0}")]
    PermissionDenied(String),
    /// The LinkState failed or refused: `UNKNOWN`, like the reference's escaped exceptions.
    #[error(transparent)]
    State(#[from] StateError),
    /// The call is not available in this build: `UNIMPLEMENTED`.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// A request the reference answers with an escaped exception: `UNKNOWN`.
    #[error("{0}")]
    Unknown(String),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            Error::AccessDenied => Self::unauthenticated("Access denied"),
            Error::FailedPrecondition(details) => Self::failed_precondition(details),
            Error::Internal(details) => Self::internal(details),
            Error::InvalidArgument(details) => Self::invalid_argument(details),
            Error::NotFound(details) => Self::not_found(details),
            Error::PermissionDenied(details) => Self::permission_denied(details),
            Error::State(error) => Self::unknown(state_details(&error)),
            Error::Unimplemented(details) => Self::unimplemented(details),
            Error::Unknown(details) => Self::unknown(details),
        }
    }
}

/// The reference's wording for the store errors a client can trigger.
fn state_details(error: &StateError) -> String {
    match error {
        StateError::NodeNotFound(node_id) => format!("Node {node_id} not found"),
        StateError::RunNotFound(run_id) => format!("Run {run_id} not found"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn codes_follow_the_reference() {
        let cases = [
            (
                Error::PermissionDenied("Run is pending.".into()),
                Code::PermissionDenied,
            ),
            (Error::NotFound("Run ID not found".into()), Code::NotFound),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Unimplemented("x"), Code::Unimplemented),
            (Error::Unknown("x".into()), Code::Unknown),
            (Error::Internal("x".into()), Code::Internal),
            (Error::State(StateError::NodeNotFound(7)), Code::Unknown),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }

    #[test]
    fn store_errors_use_the_reference_wording() {
        let status = tonic::Status::from(Error::State(StateError::NodeNotFound(42)));
        assert_eq!(status.message(), "Node 42 not found");
        let status = tonic::Status::from(Error::State(StateError::RunNotFound(9)));
        assert_eq!(status.message(), "Run 9 not found");
    }
}
