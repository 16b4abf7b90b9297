//! The `flwr` CLI's side of the Exec API (BEHAVIOR.md §4.4), over TLS with the demo's CA:
//! `StartRun` with a FAB and run config overrides, `StreamLogs` to follow the run, `ListRuns`
//! for its final status.

use std::collections::HashMap;
use std::time::Duration;

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

    /// Streams the run's log into `on_chunk` until the SuperLink ends the stream with
    /// `CANCELLED` (the run is finished), reopening it where it left off when it ends early.
    /// `health` runs at least every [`HEALTH_INTERVAL`] and aborts following with its error.
    pub(crate) async fn follow_logs(
        &mut self,
        run_id: u64,
        timeout: Duration,
        mut on_chunk: impl FnMut(&str),
        mut health: impl FnMut() -> Result<(), DemoError>,
    ) -> Result<(), DemoError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || DemoError::Timeout {
            waiting_for: format!("run {run_id} to finish"),
            after: timeout,
        };
        let mut after_timestamp = 0.0;
        for _ in 0..=MAX_REOPENS {
            health()?;
            let request = StreamLogsRequest {
                run_id,
                after_timestamp,
            };
            let opened = tokio::time::timeout_at(deadline, self.client.stream_logs(request))
                .await
                .map_err(|_| timed_out())?;
            let mut stream = match opened {
                Ok(response) => response.into_inner(),
                Err(status) if status.code() == Code::Unavailable => {
                    tokio::time::sleep(REOPEN_PAUSE).await;
                    continue;
                }
                Err(status) => return Err(status.into()),
            };
            loop {
                let next = tokio::select! {
                    next = stream.message() => next,
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {
                        health()?;
                        if Instant::now() >= deadline {
                            return Err(timed_out());
                        }
                        continue;
                    }
                };
                match next {
                    Ok(Some(response)) => {
                        after_timestamp = after_timestamp.max(response.latest_timestamp);
                        on_chunk(&response.log_output);
                    }
                    Err(status) if status.code() == Code::Cancelled => return Ok(()),
                    Ok(None) => break,
                    Err(status) if status.code() == Code::Unavailable => break,
                    Err(status) => return Err(status.into()),
                }
            }
            tokio::time::sleep(REOPEN_PAUSE).await;
        }
        Err(DemoError::Timeout {
            waiting_for: format!("a log stream of run {run_id} that lasts to its end"),
            after: timeout,
        })
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
