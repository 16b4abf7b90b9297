//! The Exec API (`flwr.proto.Exec`, BEHAVIOR.md §4.4) with the deployment executor: what the
//! `flwr` CLI calls for `flwr run`, `flwr ls`, `flwr log` and `flwr stop`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use flwr_core::{FabMetadata, RunStatus, SubStatus};
use flwr_proto::exec_server::Exec;
use flwr_proto::{
    ConfigsRecord, Context, GetAuthTokensRequest, GetAuthTokensResponse, GetLoginDetailsRequest,
    GetLoginDetailsResponse, ListRunsRequest, ListRunsResponse, RecordSet, StartRunRequest,
    StartRunResponse, StopRunRequest, StopRunResponse, StreamLogsRequest, StreamLogsResponse,
};
use flwr_state::isoformat;
use flwr_state::lifecycle::FINISHED;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::launcher::LauncherHandle;
use crate::service::{respond, status_of, unix_now, Stores};
use crate::wakeups::Topic;

/// How often `StreamLogs` looks for new log chunks (the reference's `LOG_STREAM_INTERVAL`).
pub const LOG_STREAM_INTERVAL: Duration = Duration::from_millis(500);

/// The reference's answer to the user-auth RPCs of the commercial edition.
const NO_USER_AUTH: &str = "ExecServicer initialized without user authentication";

/// The stream type of `StreamLogs`.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<StreamLogsResponse, Status>> + Send>>;

/// The Exec service.
#[derive(Debug)]
pub struct ExecService {
    stores: Stores,
    launcher: LauncherHandle,
    log_interval: Duration,
}

impl ExecService {
    /// A service over the shared stores; `launcher` hears about stopped runs.
    pub fn new(stores: Stores, launcher: LauncherHandle) -> Self {
        Self {
            stores,
            launcher,
            log_interval: LOG_STREAM_INTERVAL,
        }
    }

    /// Stores the FAB, creates a pending run and its initial ServerApp context. Failures are
    /// logged and answered with an empty response, as in the reference.
    async fn inner_start_run(&self, request: StartRunRequest) -> Result<StartRunResponse, Error> {
        let content = request.fab.map(|fab| fab.content).unwrap_or_default();
        let override_config = request.override_config;
        let outcome = self
            .stores
            .call_blocking(move |state, ffs| {
                let attempt = || -> Result<(u64, FabMetadata), String> {
                    // `fab.hash_str` is ignored: the SuperLink hashes the content itself.
                    let fab_hash = ffs
                        .put(&content)
                        .map_err(|e| format!("storing the FAB: {e}"))?;
                    let metadata = FabMetadata::from_fab(&content).map_err(|e| e.to_string())?;
                    // The run and its context in one store call: a crash in between would
                    // leave a pending run that no ServerApp can start.
                    let context = Context {
                        run_id: 0,
                        node_id: 0,
                        node_config: HashMap::new(),
                        state: Some(RecordSet::default()),
                        run_config: HashMap::new(),
                    };
                    // Federation options are discarded by the deployment executor.
                    let run_id = state
                        .create_run(
                            &metadata.fab_id(),
                            &metadata.version,
                            &fab_hash,
                            override_config,
                            ConfigsRecord::default(),
                            Some(context),
                        )
                        .map_err(|e| e.to_string())?;
                    Ok((run_id, metadata))
                };
                Ok(attempt())
            })
            .await;
        match outcome {
            Ok(Ok((run_id, metadata))) => {
                tracing::info!(
                    run_id,
                    fab_id = %metadata.fab_id(),
                    fab_version = %metadata.version,
                    "Created run {run_id}"
                );
                self.launcher.run_pending();
                Ok(StartRunResponse {
                    run_id: Some(run_id),
                })
            }
            Ok(Err(details)) => {
                tracing::error!("Could not start run: {details}");
                Ok(StartRunResponse { run_id: None })
            }
            Err(error) => Err(error),
        }
    }

    async fn inner_list_runs(&self, request: ListRunsRequest) -> Result<ListRunsResponse, Error> {
        let run_id = request.run_id;
        let runs = self
            .stores
            .call(move |state, _| match run_id {
                None => Ok(state.runs()?),
                Some(run_id) => Ok(state.run(run_id)?.into_iter().collect()),
            })
            .await?;
        Ok(ListRunsResponse {
            run_dict: runs.into_iter().map(|run| (run.run_id, run)).collect(),
            now: isoformat(unix_now()),
        })
    }

    async fn inner_stop_run(&self, request: StopRunRequest) -> Result<StopRunResponse, Error> {
        let run_id = request.run_id;
        let success = self
            .stores
            .call(move |state, _| {
                let run = state
                    .run(run_id)?
                    .ok_or_else(|| Error::NotFound(format!("Run ID {run_id} not found")))?;
                if status_of(&run).status == FINISHED {
                    return Err(Error::FailedPrecondition(format!(
                        "Run ID {run_id} is already finished"
                    )));
                }
                let stopped = RunStatus::Finished(SubStatus::Stopped).to_proto("");
                let success = state.update_run_status(run_id, stopped)?;
                if success {
                    state.delete_tasks_of_run(run_id)?;
                }
                Ok(success)
            })
            .await?;
        if success {
            tracing::info!(run_id, "run stopped by user");
            self.launcher.stop_run(run_id);
            // Held PullTaskRes of the run end with the run's new status.
            self.stores.events.publish(Topic::Run(run_id));
        }
        Ok(StopRunResponse { success })
    }

    async fn inner_stream_logs(&self, request: StreamLogsRequest) -> Result<LogStream, Error> {
        let run_id = request.run_id;
        let exists = self
            .stores
            .call(move |state, _| Ok(state.run(run_id)?.is_some()))
            .await?;
        if !exists {
            return Err(Error::NotFound("Run ID not found".to_owned()));
        }
        let cursor = LogCursor {
            stores: self.stores.clone(),
            run_id,
            after_timestamp: request.after_timestamp,
            finished: false,
            interval: self.log_interval,
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(cursor),
            |cursor| async move {
                let mut cursor = cursor?;
                let item = cursor.next().await;
                // After the final item (an error or the closing CANCELLED) the stream ends.
                let more = item.is_ok();
                Some((item, more.then_some(cursor)))
            },
        )))
    }
}

/// Follows a run's log for `StreamLogs`.
struct LogCursor {
    stores: Stores,
    run_id: u64,
    after_timestamp: f64,
    /// The run was seen finished; everything logged before that has been sent.
    finished: bool,
    interval: Duration,
}

impl LogCursor {
    /// The next chunk of log output, waiting for it; `CANCELLED` once the run is finished and
    /// its log fully sent (what the reference's `context.cancel()` produces).
    async fn next(&mut self) -> Result<StreamLogsResponse, Status> {
        loop {
            if self.finished {
                return Err(Status::cancelled("CANCELLED"));
            }
            let (run_id, after) = (self.run_id, self.after_timestamp);
            let (finished, (log_output, latest_timestamp)) = self
                .stores
                .call(move |state, _| {
                    // Status first, then logs: a ServerApp flushes its logs before reporting
                    // `finished`, so this order never loses the last chunk.
                    let finished = state
                        .run(run_id)?
                        .is_none_or(|run| status_of(&run).status == FINISHED);
                    Ok((finished, state.serverapp_logs_after(run_id, after)?))
                })
                .await
                .map_err(Status::from)?;
            self.finished = finished;
            if !log_output.is_empty() {
                self.after_timestamp = self.after_timestamp.max(latest_timestamp);
                return Ok(StreamLogsResponse {
                    log_output,
                    latest_timestamp,
                });
            }
            if !self.finished {
                tokio::time::sleep(self.interval).await;
            }
        }
    }
}

#[tonic::async_trait]
impl Exec for ExecService {
    async fn start_run(
        &self,
        request: Request<StartRunRequest>,
    ) -> Result<Response<StartRunResponse>, Status> {
        respond(self.inner_start_run(request.into_inner()).await)
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        respond(self.inner_stream_logs(request.into_inner()).await)
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        respond(self.inner_list_runs(request.into_inner()).await)
    }

    async fn stop_run(
        &self,
        request: Request<StopRunRequest>,
    ) -> Result<Response<StopRunResponse>, Status> {
        respond(self.inner_stop_run(request.into_inner()).await)
    }

    async fn get_login_details(
        &self,
        _request: Request<GetLoginDetailsRequest>,
    ) -> Result<Response<GetLoginDetailsResponse>, Status> {
        respond(Err(Error::Unimplemented(NO_USER_AUTH)))
    }

    async fn get_auth_tokens(
        &self,
        _request: Request<GetAuthTokensRequest>,
    ) -> Result<Response<GetAuthTokensResponse>, Status> {
        respond(Err(Error::Unimplemented(NO_USER_AUTH)))
    }
}
