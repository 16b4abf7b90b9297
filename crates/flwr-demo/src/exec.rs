//! The `flwr` CLI's side of the Exec API (BEHAVIOR.md §4.4), over TLS with the demo's CA:
//! `StartRun` with a FAB and run config overrides, `StreamLogs` to follow the run, `ListRuns`
//! for its final status.

use std::collections::HashMap;
use std::time::Duration;

use flwr_core::{RunStatus, SubStatus};
use flwr_proto::exec_client::ExecClient;
use flwr_proto::{ConfigsRecord, Fab, ListRunsRequest, Scalar, StartRunRequest, StreamLogsRequest};
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

use crate::error::DemoError;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the caller's health check runs while the log is quiet.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Pause before reopening a log stream that ended without `CANCELLED`.
const REOPEN_PAUSE: Duration = Duration::from_millis(500);
/// Log streams that may end early before following gives up.
const MAX_REOPENS: u32 = 20;

/// The status a run ends in (`finished:completed`, `finished:failed`, ...).
const FINISHED: &str = "finished";

/// What follows a run's log for [`ExecApi::follow_logs`].
pub(crate) trait LogFollower {
    /// What its checks fail with; following's own failures convert into it.
    type Error: From<DemoError>;

    /// Takes the next chunk of log text (not necessarily ending at a line break).
    fn chunk(&mut self, text: &str) -> Result<(), Self::Error>;

    /// Checks that following still makes sense (processes alive, not cancelled).
    fn health(&mut self) -> Result<(), Self::Error>;

    /// Hears that the stream broke and is about to be reopened, and why.
    fn reopening(&mut self, _why: &str) {}
}

/// How [`ExecApi::follow_logs`] rides out log streams that end early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reopen {
    /// Reopened streams before following gives up.
    pub(crate) max: u32,
    /// Pause before the first reopening; doubled per further one without a chunk between.
    pub(crate) pause: Duration,
    /// Longest pause.
    pub(crate) max_pause: Duration,
    /// Whether broken connections in general (not only `UNAVAILABLE`) are retried and a
    /// `CANCELLED` end is checked against the run's status: for a stream through a load
    /// balancer whose backend may die mid-stream.
    pub(crate) confirm_end: bool,
}

impl Reopen {
    /// A stream straight to one SuperLink: only `UNAVAILABLE` is retried, at a steady pace.
    pub(crate) const DIRECT: Self = Self {
        max: MAX_REOPENS,
        pause: REOPEN_PAUSE,
        max_pause: REOPEN_PAUSE,
        confirm_end: false,
    };

    /// Whether a call that failed with `code` is worth another try.
    pub(crate) fn retries(&self, code: Code) -> bool {
        match code {
            Code::Unavailable => true,
            // What a connection cut by a dying backend surfaces as (hyper's "connection
            // closed", h2's resets, a reconnect that timed out).
            Code::Unknown | Code::Internal | Code::Aborted | Code::DeadlineExceeded => {
                self.confirm_end
            }
            _ => false,
        }
    }
}

/// `message (Code)` of a status, for reports.
fn describe(status: &tonic::Status) -> String {
    format!("{} ({:?})", status.message(), status.code())
}

/// A connected Exec API client.
#[derive(Debug, Clone)]
pub(crate) struct ExecApi {
    client: ExecClient<Channel>,
}

/// A run's final status as `ListRuns` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FinalStatus {
    /// `status:sub_status`, e.g. `finished:completed`.
    pub(crate) status: String,
    /// Free text, the ServerApp's error for a failed run.
    pub(crate) details: String,
}

impl FinalStatus {
    /// Whether the run finished as completed.
    pub(crate) fn completed(&self) -> bool {
        self.status.parse::<RunStatus>() == Ok(RunStatus::Finished(SubStatus::Completed))
    }
}

impl ExecApi {
    /// Connects to `127.0.0.1:port`, trusting only `ca_pem` and checking the certificate for
    /// `server_name`.
    pub(crate) async fn connect(
        port: u16,
        ca_pem: &[u8],
        server_name: &str,
    ) -> Result<Self, DemoError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(tls)?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await?;
        let client = ExecClient::new(channel)
            .max_decoding_message_size(flwr_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(flwr_proto::MAX_MESSAGE_SIZE);
        Ok(Self { client })
    }

    /// `StartRun` with `content` and run config `overrides`; the run id.
    pub(crate) async fn start_run(
        &mut self,
        content: Vec<u8>,
        hash: &str,
        overrides: &[(&str, Scalar)],
    ) -> Result<u64, DemoError> {
        let override_config: HashMap<String, Scalar> = overrides
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        let request = StartRunRequest {
            fab: Some(Fab {
                hash_str: hash.to_owned(),
                content,
            }),
            override_config,
            federation_options: Some(ConfigsRecord::default()),
        };
        let response = self.client.start_run(request).await?.into_inner();
        response.run_id.ok_or(DemoError::StartRefused)
    }

    /// Streams the run's log into `follower` until the SuperLink ends the stream with
    /// `CANCELLED` (the run is finished), reopening it where it left off when it ends early,
    /// as `reopen` allows. The follower's health check runs at least every
    /// [`HEALTH_INTERVAL`] and before each (re)open, and aborts following with its error; so
    /// does an error from its chunk handler. Returns how many times the stream was reopened.
    pub(crate) async fn follow_logs<F: LogFollower>(
        &mut self,
        run_id: u64,
        timeout: Duration,
        reopen: Reopen,
        follower: &mut F,
    ) -> Result<u32, F::Error> {
        let deadline = Instant::now() + timeout;
        let timed_out = || DemoError::Timeout {
            waiting_for: format!("run {run_id} to finish"),
            after: timeout,
        };
        let mut after_timestamp = 0.0;
        let mut pause = reopen.pause;
        for attempt in 0..=reopen.max {
            if attempt > 0 {
                tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
                    .await
                    .map_err(|_| timed_out())?;
                // Back off while failures follow each other; a stream that delivered resets it.
                pause = (pause * 2).min(reopen.max_pause);
            }
            follower.health()?;
            let request = StreamLogsRequest {
                run_id,
                after_timestamp,
            };
            let opened = tokio::time::timeout_at(deadline, self.client.stream_logs(request))
                .await
                .map_err(|_| timed_out())?;
            let mut stream = match opened {
                Ok(response) => response.into_inner(),
                Err(status) if reopen.retries(status.code()) => {
                    follower.reopening(&describe(&status));
                    continue;
                }
                Err(status) => return Err(DemoError::from(status).into()),
            };
            loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {
                        follower.health()?;
                        if Instant::now() >= deadline {
                            return Err(timed_out().into());
                        }
                        continue;
                    }
                };
                match next {
                    Ok(Some(response)) => {
                        after_timestamp = after_timestamp.max(response.latest_timestamp);
                        pause = reopen.pause;
                        follower.chunk(&response.log_output)?;
                        // A log that never goes quiet must not outlive the bound either.
                        if Instant::now() >= deadline {
                            return Err(timed_out().into());
                        }
                    }
                    Err(status) if status.code() == Code::Cancelled => {
                        if !reopen.confirm_end {
                            return Ok(attempt);
                        }
                        // Through a balancer a dying backend may also end the stream with
                        // CANCELLED; only the run's status tells the two apart.
                        let status = tokio::time::timeout_at(deadline, self.status(run_id))
                            .await
                            .map_err(|_| timed_out())?;
                        match status {
                            Ok(status) if status.status.starts_with(FINISHED) => {
                                return Ok(attempt);
                            }
                            Ok(status) => follower.reopening(&format!(
                                "the log stream ended while the run is {}",
                                status.status
                            )),
                            Err(DemoError::Rpc { code, message }) if reopen.retries(code) => {
                                follower.reopening(&format!("{message} ({code:?})"));
                            }
                            Err(error) => return Err(error.into()),
                        }
                        break;
                    }
                    Ok(None) => {
                        follower.reopening("the log stream ended early");
                        break;
                    }
                    Err(status) if reopen.retries(status.code()) => {
                        follower.reopening(&describe(&status));
                        break;
                    }
                    Err(status) => return Err(DemoError::from(status).into()),
                }
            }
        }
        Err(DemoError::Timeout {
            waiting_for: format!("a log stream of run {run_id} that lasts to its end"),
            after: timeout,
        }
        .into())
    }

    /// The run's status via `ListRuns`.
    pub(crate) async fn status(&mut self, run_id: u64) -> Result<FinalStatus, DemoError> {
        let request = ListRunsRequest {
            run_id: Some(run_id),
        };
        let response = self.client.list_runs(request).await?.into_inner();
        let status = response
            .run_dict
            .get(&run_id)
            .and_then(|run| run.status.clone())
            .unwrap_or_default();
        let text = if status.sub_status.is_empty() {
            status.status
        } else {
            format!("{}:{}", status.status, status.sub_status)
        };
        Ok(FinalStatus {
            status: text,
            details: status.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_completed_run_counts_as_completed() {
        let status = |text: &str| FinalStatus {
            status: text.to_owned(),
            details: String::new(),
        };
        assert!(status("finished:completed").completed());
        for other in [
            "finished:failed",
            "finished:stopped",
            "running",
            "finished:bogus",
            "",
        ] {
            assert!(!status(other).completed(), "{other}");
        }
    }
}
