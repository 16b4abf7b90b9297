//! A running run for PushTaskRes and PushTaskIns: the SuperLink refuses a TaskRes (or TaskIns)
//! of a run that is not running (`PERMISSION_DENIED`, or `UNKNOWN` for an unknown run), so a
//! push or dispatch test first creates one through the ServerAppIo API and moves it through
//! `starting` to `running`, which is what `flwr-serverapp` would do for a real run.

use flwr_core::Address;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{CreateRunRequest, GetRunStatusRequest, RunStatus, UpdateRunStatusRequest};
use tonic::transport::{Channel, Endpoint};

use crate::connection::CONNECT_TIMEOUT;

/// The run could not be made to run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushRunError {
    /// The ServerAppIo API is unreachable.
    #[error("cannot reach the ServerAppIo API at {address}: {source}")]
    Connect {
        /// `--serverappio-api-address`.
        address: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
    /// A ServerAppIo call failed.
    #[error("ServerAppIo {call} failed: {code:?}: {message}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// Its status code.
        code: tonic::Code,
        /// Its details.
        message: String,
    },
    /// The run did not end up running.
    #[error("run {run_id} is {status:?} after the updates, not running (is --isolation process set? a launched ServerApp may have taken it)")]
    NotRunning {
        /// The run.
        run_id: u64,
        /// Its status.
        status: String,
    },
}

/// Creates a run through the plaintext ServerAppIo API at `address` and sets it running;
/// returns its id.
///
/// # Errors
///
/// [`PushRunError`] naming the step that failed.
pub async fn create_running_run(address: &Address) -> Result<u64, PushRunError> {
    let mut client = connect(address).await?;
    start_run(&mut client, "flwr-loadgen/push").await
}

/// A client of the plaintext ServerAppIo API at `address`, every call bounded by
/// [`crate::CALL_TIMEOUT`].
///
/// # Errors
///
/// [`PushRunError::Connect`] when the API is unreachable.
pub async fn connect(address: &Address) -> Result<ServerAppIoClient<Channel>, PushRunError> {
    let text = address.to_string();
    let connect = |source| PushRunError::Connect {
        address: text.clone(),
        source,
    };
    let channel = Endpoint::from_shared(format!("http://{text}"))
        .map_err(connect)?
        .connect_timeout(CONNECT_TIMEOUT)
        // Bounds every call, so a SuperLink that hangs cannot hold the test up.
        .timeout(crate::CALL_TIMEOUT)
        .connect()
        .await
        .map_err(connect)?;
    Ok(ServerAppIoClient::new(channel)
        .max_decoding_message_size(flwr_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(flwr_proto::MAX_MESSAGE_SIZE))
}

/// Creates a run of FAB `fab_id` through `client` and sets it running; returns its id.
///
/// # Errors
///
/// [`PushRunError`] naming the step that failed.
pub async fn start_run(
    client: &mut ServerAppIoClient<Channel>,
    fab_id: &str,
) -> Result<u64, PushRunError> {
    let failed = |call| {
        move |status: tonic::Status| PushRunError::Call {
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    };
    let run_id = client
        .create_run(CreateRunRequest {
            fab_id: fab_id.to_owned(),
            fab_version: "1.0.0".to_owned(),
            ..CreateRunRequest::default()
        })
        .await
        .map_err(failed("CreateRun"))?
        .into_inner()
        .run_id;
    for status in ["starting", "running"] {
        client
            .update_run_status(UpdateRunStatusRequest {
                run_id,
                run_status: Some(RunStatus {
                    status: status.to_owned(),
                    sub_status: String::new(),
                    details: String::new(),
                }),
            })
            .await
            .map_err(failed("UpdateRunStatus"))?;
    }
    // Invalid transitions are ignored silently (BEHAVIOR.md §4.3), so check the outcome.
    let statuses = client
        .get_run_status(GetRunStatusRequest {
            node: None,
            run_ids: vec![run_id],
        })
        .await
        .map_err(failed("GetRunStatus"))?
        .into_inner()
        .run_status_dict;
    let status = statuses
        .get(&run_id)
        .map(|status| status.status.clone())
        .unwrap_or_default();
    if status != "running" {
        return Err(PushRunError::NotRunning { run_id, status });
    }
    Ok(run_id)
}
