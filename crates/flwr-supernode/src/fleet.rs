//! The Fleet API client: one channel, one signing point, one retry invoker
//! (BEHAVIOR.md §2.2–§2.8, PROTOCOL.md §2.2–§2.4).
//!
//! Every request goes through one private method, `Fleet::invoke`, which
//!
//! 1. asks the [`RequestSigner`] for metadata over the request's canonical encoding;
//! 2. sends it under a per-call deadline ([`Deadlines`]), racing the shutdown token;
//! 3. on `UNAVAILABLE` (including connection failures) or its own deadline passing, backs off
//!    per [`RetryPolicy`] and tries again; on `UNAUTHENTICATED` does the same at most
//!    [`UNAUTHENTICATED_RETRIES`](crate::timing::UNAUTHENTICATED_RETRIES) times in a row, then gives up with
//!    [`CallError::Unauthenticated`]; `PERMISSION_DENIED` becomes [`CallError::RunNotRunning`];
//!    any other status gives up at once ([`CallError::Rejected`]), as the reference does.
//!
//! The reference sets no deadline but `Ping`'s, so a call on a silently dead connection hangs
//! forever. Here every call has one, generous where the payload can be large.
//!
//! The channel is plaintext or TLS (a `--root-certificates` CA or the system roots, with the
//! server name taken from the target host) and raises tonic's message limits to 512 MiB. It
//! sends HTTP/2 keep-alive pings every [`KEEPALIVE_INTERVAL`], also between calls, so a
//! connection that died without a FIN (NAT timeout, cable pulled) is noticed within
//! [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] rather than at the next deadline. The
//! reference's gRPC servers count a ping arriving sooner than 300 s after the previous one as a
//! strike and close the connection after the third, but every DATA or HEADERS frame they send
//! clears the strikes: the heartbeat's `Ping` answer every 17.5–22.5 s does so well within one
//! keep-alive interval.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flwr_core::{hold, Address};
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::{
    CreateNodeRequest, DeleteNodeRequest, Fab, GetFabRequest, GetRunRequest, Node, PingRequest,
    PullTaskInsRequest, PushTaskResRequest, Run, TaskIns, TaskRes,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::signer::{FleetRpc, RequestSigner, SignError};
use crate::timing::{Retry, RetryPolicy, PING_CALL_TIMEOUT, PING_INTERVAL_SECONDS};

/// How long establishing a TCP (and TLS) connection may take before the attempt counts as
/// `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Idle time after which the channel sends an HTTP/2 PING to check the connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// How long an HTTP/2 PING may go unanswered before the connection counts as dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one attempt of each Fleet call may take before it counts as failed (and is retried
/// like `UNAVAILABLE`). `Ping` keeps the reference's 5 s deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// `CreateNode`, `DeleteNode` and `GetRun`, whose messages are small.
    pub control: Duration,
    /// `PullTaskIns` and `GetFab`, whose answers carry models and app bundles of a size not
    /// known before they arrive (up to 512 MiB).
    pub download: Duration,
    /// `PushTaskRes`: this much plus [`Deadlines::upload_per_mib`] per MiB of the request.
    pub upload: Duration,
    /// Added to [`Deadlines::upload`] per MiB of the encoded `PushTaskRes`.
    pub upload_per_mib: Duration,
    /// How long a `PullTaskIns` asks the SuperLink to hold it when nothing is queued; added to
    /// [`Deadlines::download`] for that call.
    pub pull_hold: Duration,
}

impl Default for Deadlines {
    /// 60 s for small calls; 600 s for downloads (512 MiB at a little under 1 MiB/s); 60 s plus
    /// 1 s per MiB (at least 1 MiB/s) for uploads.
    fn default() -> Self {
        Self {
            control: Duration::from_secs(60),
            download: Duration::from_secs(600),
            upload: Duration::from_secs(60),
            upload_per_mib: Duration::from_secs(1),
            pull_hold: PULL_HOLD,
        }
    }
}

impl Deadlines {
    /// The `PushTaskRes` deadline for a request of `bytes` encoded bytes.
    pub fn for_upload(&self, bytes: usize) -> Duration {
        let mib = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        self.upload
            .saturating_add(self.upload_per_mib.saturating_mul(mib))
    }
}

/// The default of [`Deadlines::pull_hold`]: how long a `PullTaskIns` asks the SuperLink to wait
/// for an instruction when none is queued.
/// Well below the SuperLink's cap ([`flwr_core::hold::MAX_HOLD`]) and the keep-alive interval.
pub const PULL_HOLD: Duration = Duration::from_secs(20);

/// What a `PullTaskIns` brought back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pulled {
    /// The instruction, if one was queued (or arrived during the hold).
    pub task_ins: Option<TaskIns>,
    /// The SuperLink held the pull: an empty answer means nothing arrived for a while, and the
    /// next pull may follow at once instead of after the reference's idle pause.
    pub held: bool,
}

/// How the Fleet channel is secured.
pub use flwr_runtime::channel::Tls;

/// The Fleet channel could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the Fleet channel to {target}")]
pub struct ChannelError {
    /// The SuperLink address.
    pub target: String,
    /// tonic's reason.
    #[source]
    pub source: tonic::transport::Error,
}

/// A Fleet call that did not produce a response.
///
/// Statuses are boxed: a `tonic::Status` is about 180 bytes, and this error travels up through
/// every `Result` of the node loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The shutdown token fired while the call or its back-off was pending.
    #[error("{0} abandoned: shutting down")]
    Cancelled(FleetRpc),
    /// The SuperLink stayed unreachable (or silent past the call's deadline) beyond
    /// `--max-retries` / `--max-wait-time`.
    #[error("{rpc}: gave up after {tries} {} in {:.2} s: {}", if *tries == 1 { "try" } else { "tries" }, elapsed.as_secs_f64(), describe(status))]
    GaveUp {
        /// The RPC.
        rpc: FleetRpc,
        /// Attempts made.
        tries: u32,
        /// Time since the first attempt.
        elapsed: Duration,
        /// The last status (`UNAVAILABLE`, or `DEADLINE_EXCEEDED` from our own deadline).
        status: Box<Status>,
    },
    /// The SuperLink answered with a status the reference does not retry.
    #[error("{rpc} failed: {}", describe(status))]
    Rejected {
        /// The RPC.
        rpc: FleetRpc,
        /// The status.
        status: Box<Status>,
    },
    /// The SuperLink kept refusing this node's credentials (`UNAUTHENTICATED`), more than
    /// [`UNAUTHENTICATED_RETRIES`](crate::timing::UNAUTHENTICATED_RETRIES) times in a row or past the retry limits.
    #[error("{rpc}: the SuperLink refused this node {refusals} {} in a row ({}); is the node's public key on its allow-list?", if *refusals == 1 { "time" } else { "times" }, describe(status))]
    Unauthenticated {
        /// The RPC.
        rpc: FleetRpc,
        /// `UNAUTHENTICATED` answers in a row.
        refusals: u32,
        /// The last status.
        status: Box<Status>,
    },
    /// `PERMISSION_DENIED`: the run is not in `RUNNING` status.
    #[error("{rpc}: run is not running ({})", status.message())]
    RunNotRunning {
        /// The RPC.
        rpc: FleetRpc,
        /// The status.
        status: Box<Status>,
    },
    /// The signer refused to sign the request.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// `Code: message`, plus the innermost transport cause when the failure was local (for
/// example `Unavailable: tcp connect error (Connection refused (os error 111))`).
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    let mut innermost = None;
    while let Some(error) = cause {
        innermost = Some(error);
        cause = error.source();
    }
    if let Some(error) = innermost {
        let detail = error.to_string();
        if !text.contains(&detail) {
            text.push_str(&format!(" ({detail})"));
        }
    }
    text
}

/// A `Ping` that did not get an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// No answer within the 5 s call deadline.
    #[error("Ping timed out after {PING_CALL_TIMEOUT:?}")]
    DeadlineExceeded,
    /// The call failed.
    #[error("Ping failed: {}", describe(.0))]
    Status(Status),
    /// The signer refused to sign the request.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The Fleet API client of one SuperNode.
#[derive(Clone, Debug)]
pub struct Fleet {
    client: FleetClient<Channel>,
    signer: Arc<dyn RequestSigner>,
    policy: RetryPolicy,
    deadlines: Deadlines,
    cancel: CancellationToken,
    /// Retried attempts (`flwr_supernode_fleet_retries_total`).
    retries: prometheus_client::metrics::counter::Counter,
}

impl Fleet {
    /// A client for the SuperLink at `target`. The channel connects lazily, on the first call,
    /// so an unreachable SuperLink surfaces as retried `UNAVAILABLE` calls.
    ///
    /// # Errors
    ///
    /// When the address or the TLS settings cannot be turned into an endpoint.
    pub fn connect(
        target: &Address,
        tls: &Tls,
        signer: Arc<dyn RequestSigner>,
        policy: RetryPolicy,
        cancel: CancellationToken,
    ) -> Result<Self, ChannelError> {
        let fail = |source| ChannelError {
            target: target.to_string(),
            source,
        };
        let endpoint = tls
            .endpoint(&target.to_string(), &target.host_text())
            .map_err(fail)?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let client = FleetClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(flwr_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(flwr_proto::MAX_MESSAGE_SIZE);
        Ok(Self::from_client(client, signer, policy, cancel))
    }

    /// A client over an existing tonic client (tests use in-process servers this way).
    pub fn from_client(
        client: FleetClient<Channel>,
        signer: Arc<dyn RequestSigner>,
        policy: RetryPolicy,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            client,
            signer,
            policy,
            deadlines: Deadlines::default(),
            cancel,
            retries: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    /// The same client, counting its retried attempts in `retries`.
    #[must_use]
    pub fn with_retry_counter(
        mut self,
        retries: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.retries = retries;
        self
    }

    /// The same client with another message-size limit (`--grpc-max-message-length`) than the
    /// reference's 512 MiB, for what it sends and what it receives.
    #[must_use]
    pub fn with_max_message_size(self, limit: usize) -> Self {
        let client = self
            .client
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        Self { client, ..self }
    }

    /// The same client with other per-call deadlines.
    pub fn with_deadlines(self, deadlines: Deadlines) -> Self {
        Self { deadlines, ..self }
    }

    /// The same client, abandoning calls when `cancel` fires instead (used for `DeleteNode`
    /// after the main shutdown token has already fired).
    pub fn with_cancel(&self, cancel: CancellationToken) -> Self {
        Self {
            cancel,
            ..self.clone()
        }
    }

    /// `CreateNode{ping_interval: 30}`: registers and returns the node to use in later calls.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn create_node(&self) -> Result<Node, CallError> {
        let request = CreateNodeRequest {
            ping_interval: PING_INTERVAL_SECONDS,
        };
        let response = self
            .invoke(
                FleetRpc::CreateNode,
                self.deadlines.control,
                request,
                |mut client, request| async move { client.create_node(request).await },
            )
            .await?;
        self.signer.observe_create_node(response.metadata());
        Ok(response.into_inner().node.unwrap_or_default())
    }

    /// `DeleteNode{node}`.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn delete_node(&self, node: &Node) -> Result<(), CallError> {
        let request = DeleteNodeRequest { node: Some(*node) };
        self.invoke(
            FleetRpc::DeleteNode,
            self.deadlines.control,
            request,
            |mut client, request| async move { client.delete_node(request).await },
        )
        .await?;
        Ok(())
    }

    /// `PullTaskIns{node}`: the first instruction, if any (the SuperLink sends at most one).
    ///
    /// Asks the SuperLink to hold an empty pull for up to [`Deadlines::pull_hold`]
    /// ([`flwr_core::hold`]);
    /// [`Pulled::held`] says whether it did, in which case the caller may pull again at once.
    /// A 1.14 SuperLink ignores the ask and answers at once, as it always does.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn pull_task_ins(&self, node: &Node) -> Result<Pulled, CallError> {
        let request = PullTaskInsRequest {
            node: Some(*node),
            task_ids: Vec::new(),
        };
        let hold_for = self.deadlines.pull_hold;
        let response = self
            .invoke(
                FleetRpc::PullTaskIns,
                self.deadlines.download.saturating_add(hold_for),
                request,
                |mut client, mut request| async move {
                    if let Ok(value) = hold::format_millis(hold_for).parse() {
                        request.metadata_mut().insert(hold::REQUEST_HEADER, value);
                    }
                    client.pull_task_ins(request).await
                },
            )
            .await?;
        let held = response.metadata().contains_key(hold::REPLY_HEADER);
        Ok(Pulled {
            task_ins: response.into_inner().task_ins_list.into_iter().next(),
            held,
        })
    }

    /// `PushTaskRes{node, [task_res]}`; the response is ignored, like the reference does.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn push_task_res(&self, node: &Node, task_res: TaskRes) -> Result<(), CallError> {
        let request = PushTaskResRequest {
            node: Some(*node),
            task_res_list: vec![task_res],
        };
        let deadline = self
            .deadlines
            .for_upload(prost::Message::encoded_len(&request));
        self.invoke(
            FleetRpc::PushTaskRes,
            deadline,
            request,
            |mut client, request| async move { client.push_task_res(request).await },
        )
        .await?;
        Ok(())
    }

    /// `GetRun{node, run_id}`; `None` when the SuperLink does not know the run.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn get_run(&self, node: &Node, run_id: u64) -> Result<Option<Run>, CallError> {
        let request = GetRunRequest {
            node: Some(*node),
            run_id,
        };
        let response = self
            .invoke(
                FleetRpc::GetRun,
                self.deadlines.control,
                request,
                |mut client, request| async move { client.get_run(request).await },
            )
            .await?;
        Ok(response.into_inner().run)
    }

    /// `GetFab{node, hash_str, run_id}`.
    ///
    /// # Errors
    ///
    /// See [`CallError`].
    pub async fn get_fab(&self, node: &Node, hash: &str, run_id: u64) -> Result<Fab, CallError> {
        let request = GetFabRequest {
            node: Some(*node),
            hash_str: hash.to_owned(),
            run_id,
        };
        let response = self
            .invoke(
                FleetRpc::GetFab,
                self.deadlines.download,
                request,
                |mut client, request| async move { client.get_fab(request).await },
            )
            .await?;
        Ok(response.into_inner().fab.unwrap_or_default())
    }

    /// One `Ping{node, ping_interval: 30}` with the reference's 5 s deadline, not retried here
    /// (the heartbeat task has its own back-off). Returns the SuperLink's `success`.
    ///
    /// # Errors
    ///
    /// See [`PingError`].
    pub async fn ping(&self, node: &Node) -> Result<bool, PingError> {
        let request = PingRequest {
            node: Some(*node),
            ping_interval: PING_INTERVAL_SECONDS,
        };
        let mut signed = self.sign(FleetRpc::Ping, &request)?;
        signed.set_timeout(PING_CALL_TIMEOUT);
        let mut client = self.client.clone();
        match tokio::time::timeout(PING_CALL_TIMEOUT, client.ping(signed)).await {
            Err(_) => Err(PingError::DeadlineExceeded),
            Ok(Err(status)) if status.code() == Code::DeadlineExceeded => {
                Err(PingError::DeadlineExceeded)
            }
            Ok(Err(status)) => Err(PingError::Status(normalize(status))),
            Ok(Ok(response)) => Ok(response.into_inner().success),
        }
    }

    /// Builds the tonic request with the signer's metadata. This is the single place where
    /// every Fleet request passes before it is sent.
    fn sign<Req>(&self, rpc: FleetRpc, message: &Req) -> Result<Request<Req>, SignError>
    where
        Req: prost::Message + prost::Name + Clone,
    {
        let canonical = if self.signer.needs_canonical() {
            flwr_proto::canonical::encode(message).map_err(|e| SignError {
                rpc,
                reason: e.to_string(),
            })?
        } else {
            Vec::new()
        };
        let headers = self.signer.sign(rpc, &canonical)?;
        let mut request = Request::new(message.clone());
        for (name, value) in headers {
            let key = MetadataKey::from_static(name);
            let value = MetadataValue::try_from(value.as_str()).map_err(|e| SignError {
                rpc,
                reason: format!("header {name} is not ASCII: {e}"),
            })?;
            request.metadata_mut().insert(key, value);
        }
        Ok(request)
    }

    /// The retry invoker: sign, send under `deadline`, classify, back off (see the module docs).
    async fn invoke<Req, Resp, F, Fut>(
        &self,
        rpc: FleetRpc,
        deadline: Duration,
        message: Req,
        call: F,
    ) -> Result<Response<Resp>, CallError>
    where
        Req: prost::Message + prost::Name + Clone,
        F: Fn(FleetClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let start = Instant::now();
        let mut tries: u32 = 0;
        let mut refusals: u32 = 0;
        loop {
            tries = tries.saturating_add(1);
            let started_after = start.elapsed();
            let request = self.sign(rpc, &message)?;
            let result = tokio::select! {
                result = tokio::time::timeout(deadline, call(self.client.clone(), request)) => {
                    // Our own deadline is a local verdict on the connection, like a failed
                    // connect: it is retried. A DEADLINE_EXCEEDED the server sends is not.
                    #[allow(clippy::result_large_err)] // tonic's own `Result<_, Status>`
                    result.unwrap_or_else(|_| Err(Status::unavailable(format!(
                        "no answer within {} s (DEADLINE_EXCEEDED)",
                        deadline.as_secs_f64()
                    ))))
                }
                () = self.cancel.cancelled() => return Err(CallError::Cancelled(rpc)),
            };
            let status = match result {
                Ok(response) => {
                    if tries > 1 {
                        tracing::info!(
                            "Connection successful after {:.2} seconds and {tries} tries.",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(response);
                }
                Err(status) => normalize(status),
            };
            let decision = match status.code() {
                Code::Unavailable => {
                    refusals = 0;
                    self.policy
                        .after_failure(tries, started_after, rand::random::<f64>())
                }
                Code::Unauthenticated => {
                    refusals = refusals.saturating_add(1);
                    match self.policy.after_refusal(
                        refusals,
                        tries,
                        started_after,
                        rand::random::<f64>(),
                    ) {
                        Retry::GiveUp => {
                            return Err(CallError::Unauthenticated {
                                rpc,
                                refusals,
                                status: Box::new(status),
                            })
                        }
                        wait => wait,
                    }
                }
                Code::PermissionDenied => {
                    return Err(CallError::RunNotRunning {
                        rpc,
                        status: Box::new(status),
                    })
                }
                _ => {
                    return Err(CallError::Rejected {
                        rpc,
                        status: Box::new(status),
                    })
                }
            };
            tracing::debug!(%rpc, tries, "{}", describe(&status));
            match decision {
                Retry::GiveUp => {
                    if tries > 1 {
                        tracing::warn!(
                            "Giving up reconnection after {:.2} seconds and {tries} tries.",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    return Err(CallError::GaveUp {
                        rpc,
                        tries,
                        elapsed: start.elapsed(),
                        status: Box::new(status),
                    });
                }
                Retry::Wait(wait) => {
                    self.retries.inc();
                    tracing::warn!(
                        "{rpc}: connection attempt failed ({}), retrying in {:.2} seconds",
                        describe(&status),
                        wait.as_secs_f64()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.cancel.cancelled() => return Err(CallError::Cancelled(rpc)),
                    }
                }
            }
        }
    }
}

/// Transport failures become `UNAVAILABLE`, as gRPC-core reports them to the reference.
fn normalize(status: Status) -> Status {
    flwr_proto::transport_status(status)
}
