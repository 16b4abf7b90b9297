//! [`Grid`]: a ServerApp's handle on the federation, over the SuperLink's ServerAppIo API (the
//! reference calls it `Driver`/`GrpcDriver`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flwr_core::hold;
use flwr_proto as proto;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use tonic::transport::Channel;

use crate::context::{Context, Fab, Run, RunStatus};
use crate::error::{AppError, ConversionError};
use crate::message::{now, Message, Metadata, Payload, DEFAULT_TTL};
use crate::record::RecordSet;
use crate::transport::{self, AddressError, RetryPolicy};

/// The default ServerAppIo address of `flwr-serverapp`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9091";

/// How long one `PullTaskRes` of [`Grid::send_and_receive`] asks the SuperLink to hold it.
pub(crate) const REPLY_HOLD: Duration = Duration::from_secs(20);

/// A ServerAppIo call failed or its answer was unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GridError {
    /// The address is not usable.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The SuperLink answered with something that does not convert.
    #[error("invalid {what} from the SuperLink: {source}")]
    Conversion {
        /// Which part.
        what: &'static str,
        /// Why.
        #[source]
        source: ConversionError,
    },
    /// A message to push does not satisfy the reference's checks.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// No run is set ([`Grid::set_run`] was not called).
    #[error("no run is set on the grid")]
    NoRun,
    /// Any other failed call (after retrying `UNAVAILABLE`).
    #[error("{call} failed: {} ({})", status.code(), status.message())]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// Its status (boxed: it is large and errors are rare).
        status: Box<tonic::Status>,
    },
    /// `GetRun` knows no such run.
    #[error("Cannot find the run with ID: {0}")]
    RunNotFound(u64),
    /// `PERMISSION_DENIED`: the run is no longer running (e.g. stopped with `flwr stop`).
    #[error("run is not running: {0}")]
    RunNotRunning(String),
}

impl From<GridError> for AppError {
    fn from(error: GridError) -> Self {
        match error {
            GridError::RunNotRunning(details) => Self::run_stopped(details),
            other => Self::with_type("GridError", other.to_string()),
        }
    }
}

/// What `PullServerAppInputs` delivered for a pending run.
#[derive(Clone, Debug)]
pub struct ServerAppInputs {
    /// The ServerApp context stored for the run (run config not yet filled in).
    pub context: Context,
    /// The run, now `starting`.
    pub run: Run,
    /// Its FAB.
    pub fab: Fab,
}

/// Sends messages to SuperNodes and collects their replies through the SuperLink.
#[derive(Clone, Debug)]
pub struct Grid {
    client: ServerAppIoClient<Channel>,
    run: Option<Run>,
    retry: RetryPolicy,
    poll_interval: Duration,
}

impl Grid {
    /// A grid for the ServerAppIo API at `address` (`host:port`); connects on first use.
    ///
    /// # Errors
    ///
    /// [`GridError::Address`] if the address is not usable.
    pub fn connect_lazy(address: &str) -> Result<Self, GridError> {
        let client = ServerAppIoClient::new(transport::channel(address)?)
            .max_decoding_message_size(proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(proto::MAX_MESSAGE_SIZE);
        Ok(Self {
            client,
            run: None,
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(3),
        })
    }

    /// Sends and receives messages up to `limit` bytes instead of the reference's 512 MiB.
    #[must_use]
    pub fn with_max_message_size(mut self, limit: usize) -> Self {
        self.client = self
            .client
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
        self
    }

    /// Uses `interval` between `PullTaskRes` polls instead of the reference's 3 s.
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Uses `retry` for `UNAVAILABLE` answers instead of retrying forever.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The pause between `PullTaskRes` polls.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The current run, once [`Grid::set_run`] succeeded.
    pub fn run(&self) -> Option<&Run> {
        self.run.as_ref()
    }

    /// Fetches run `run_id` with `GetRun` and makes it the grid's run.
    ///
    /// # Errors
    ///
    /// [`GridError::RunNotFound`] if the SuperLink does not know it, or a call error.
    pub async fn set_run(&mut self, run_id: u64) -> Result<(), GridError> {
        let response = self
            .call("GetRun", |mut c| async move {
                c.get_run(proto::GetRunRequest { node: None, run_id }).await
            })
            .await?;
        let run = response.run.ok_or(GridError::RunNotFound(run_id))?;
        let run = Run::try_from(run).map_err(|source| GridError::Conversion {
            what: "run",
            source,
        })?;
        self.run = Some(run);
        Ok(())
    }

    /// Ids of the SuperNodes that are online now (`GetNodes`).
    ///
    /// # Errors
    ///
    /// [`GridError::NoRun`], [`GridError::RunNotRunning`] or a call error.
    pub async fn node_ids(&self) -> Result<Vec<u64>, GridError> {
        let run_id = self.run_id()?;
        let response = self
            .call("GetNodes", |mut c| async move {
                c.get_nodes(proto::GetNodesRequest { run_id }).await
            })
            .await?;
        Ok(response.nodes.into_iter().map(|n| n.node_id).collect())
    }

    /// A message from the ServerApp to `dst_node_id`, as the reference's `create_message`:
    /// source node 0, no id, created now, TTL [`DEFAULT_TTL`] unless given.
    ///
    /// # Errors
    ///
    /// [`GridError::NoRun`].
    pub fn create_message(
        &self,
        content: RecordSet,
        message_type: &str,
        dst_node_id: u64,
        group_id: &str,
        ttl: Option<f64>,
    ) -> Result<Message, GridError> {
        Ok(Message {
            metadata: Metadata {
                run_id: self.run_id()?,
                message_id: String::new(),
                src_node_id: 0,
                dst_node_id,
                reply_to_message: String::new(),
                group_id: group_id.to_owned(),
                ttl: ttl.unwrap_or(DEFAULT_TTL),
                message_type: message_type.to_owned(),
                created_at: now(),
            },
            payload: Payload::Content(content),
        })
    }

    /// Pushes `messages` as TaskIns in one `PushTaskIns`; returns the id the SuperLink gave
    /// each (empty where it refused one).
    ///
    /// # Errors
    ///
    /// [`GridError::InvalidMessage`] for a message of another run, from another source, with
    /// an id or `reply_to_message`, or without a positive TTL; otherwise call errors.
    pub async fn push_messages(&self, messages: Vec<Message>) -> Result<Vec<String>, GridError> {
        let run_id = self.run_id()?;
        let mut task_ins_list = Vec::with_capacity(messages.len());
        for message in messages {
            let m = &message.metadata;
            let valid = m.run_id == run_id
                && m.src_node_id == 0
                && m.message_id.is_empty()
                && m.reply_to_message.is_empty()
                && m.ttl > 0.0;
            if !valid {
                return Err(GridError::InvalidMessage(format!("{m:?}")));
            }
            task_ins_list.push(message.into_task_ins());
        }
        let request = proto::PushTaskInsRequest {
            task_ins_list,
            run_id,
        };
        let response = self
            .call("PushTaskIns", |mut c| {
                let request = request.clone();
                async move { c.push_task_ins(request).await }
            })
            .await?;
        Ok(response.task_ids)
    }

    /// The replies available now for the messages with ids `message_ids` (`PullTaskRes`).
    ///
    /// # Errors
    ///
    /// Call errors, or [`GridError::Conversion`] for a malformed TaskRes.
    pub async fn pull_messages(&self, message_ids: &[String]) -> Result<Vec<Message>, GridError> {
        Ok(self.pull(message_ids, None).await?.0)
    }

    /// `PullTaskRes`, asking the SuperLink to hold it for up to `hold` until every reply exists
    /// ([`flwr_core::hold`]); also returns whether the SuperLink did hold it.
    async fn pull(
        &self,
        message_ids: &[String],
        hold_for: Option<Duration>,
    ) -> Result<(Vec<Message>, bool), GridError> {
        let run_id = self.run_id()?;
        let request = proto::PullTaskResRequest {
            node: Some(proto::Node {
                node_id: 0,
                anonymous: true,
            }),
            task_ids: message_ids.to_vec(),
            run_id,
        };
        let asked = hold_for
            .map(hold::format_millis)
            .and_then(|millis| millis.parse::<tonic::metadata::MetadataValue<_>>().ok());
        let response = self
            .call_response("PullTaskRes", |mut c| {
                let mut request = tonic::Request::new(request.clone());
                if let Some(value) = &asked {
                    request
                        .metadata_mut()
                        .insert(hold::REQUEST_HEADER, value.clone());
                }
                async move { c.pull_task_res(request).await }
            })
            .await?;
        let held = response.metadata().contains_key(hold::REPLY_HEADER);
        let replies = response
            .into_inner()
            .task_res_list
            .into_iter()
            .map(|res| {
                Message::try_from_task_res(res).map_err(|source| GridError::Conversion {
                    what: "TaskRes",
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((replies, held))
    }

    /// Pushes `messages`, then waits for their replies until all arrived or `timeout` passed
    /// (`None`: as long as it takes, as the reference).
    ///
    /// Each `PullTaskRes` asks the SuperLink to hold it until the replies exist; a SuperLink
    /// that holds (ours) answers as soon as they do, and the next pull follows at once. Against
    /// one that does not (the reference), pulls are [`Grid::poll_interval`] apart. Ids the
    /// SuperLink refused (empty strings) are not waited for.
    ///
    /// # Errors
    ///
    /// As [`Grid::push_messages`] and [`Grid::pull_messages`].
    pub async fn send_and_receive(
        &self,
        messages: Vec<Message>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Message>, GridError> {
        let ids = self.push_messages(messages).await?;
        let refused = ids.iter().filter(|id| id.is_empty()).count();
        if refused > 0 {
            tracing::warn!("the SuperLink refused {refused} message(s)");
        }
        let mut pending: HashSet<String> = ids.into_iter().filter(|id| !id.is_empty()).collect();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut replies = Vec::new();
        while !pending.is_empty() {
            let wanted: Vec<String> = pending.iter().cloned().collect();
            let hold_for = deadline.map_or(REPLY_HOLD, |d| {
                d.saturating_duration_since(Instant::now()).min(REPLY_HOLD)
            });
            let (pulled, held) = self.pull(&wanted, Some(hold_for)).await?;
            for reply in pulled {
                pending.remove(&reply.metadata.reply_to_message);
                replies.push(reply);
            }
            if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if !held {
                tokio::time::sleep(self.poll_interval).await;
            }
        }
        Ok(replies)
    }

    /// `PullServerAppInputs`: the next pending run, if any.
    ///
    /// # Errors
    ///
    /// Call errors, or [`GridError::Conversion`] for malformed inputs.
    pub async fn pull_inputs(&self) -> Result<Option<ServerAppInputs>, GridError> {
        let response = self
            .call("PullServerAppInputs", |mut c| async move {
                c.pull_server_app_inputs(proto::PullServerAppInputsRequest {})
                    .await
            })
            .await?;
        let Some(run) = response.run else {
            return Ok(None);
        };
        let convert = |what| move |source| GridError::Conversion { what, source };
        Ok(Some(ServerAppInputs {
            context: Context::try_from(response.context.unwrap_or_default())
                .map_err(convert("context"))?,
            run: Run::try_from(run).map_err(convert("run"))?,
            fab: response.fab.map(Fab::from).unwrap_or_default(),
        }))
    }

    /// `UpdateRunStatus` for `run_id`.
    ///
    /// # Errors
    ///
    /// Call errors.
    pub async fn update_run_status(&self, run_id: u64, status: RunStatus) -> Result<(), GridError> {
        let request = proto::UpdateRunStatusRequest {
            run_id,
            run_status: Some(status.into()),
        };
        self.call("UpdateRunStatus", |mut c| {
            let request = request.clone();
            async move { c.update_run_status(request).await }
        })
        .await?;
        Ok(())
    }

    /// `PushServerAppOutputs`: stores the ServerApp's context for `run_id`.
    ///
    /// # Errors
    ///
    /// Call errors.
    pub async fn push_outputs(&self, run_id: u64, context: Context) -> Result<(), GridError> {
        let request = proto::PushServerAppOutputsRequest {
            run_id,
            context: Some(context.into()),
        };
        self.call("PushServerAppOutputs", |mut c| {
            let request = request.clone();
            async move { c.push_server_app_outputs(request).await }
        })
        .await?;
        Ok(())
    }

    /// `PushLogs`: appends `logs` to the run's log (what `flwr log` shows).
    ///
    /// # Errors
    ///
    /// Call errors.
    pub async fn push_logs(&self, run_id: u64, logs: Vec<String>) -> Result<(), GridError> {
        let request = proto::PushLogsRequest {
            // The reference sends a present but empty Node (PROTOCOL.md §4.10).
            node: Some(proto::Node::default()),
            run_id,
            logs,
        };
        self.call("PushLogs", |mut c| {
            let request = request.clone();
            async move { c.push_logs(request).await }
        })
        .await?;
        Ok(())
    }

    fn run_id(&self) -> Result<u64, GridError> {
        self.run.as_ref().map(|r| r.run_id).ok_or(GridError::NoRun)
    }

    /// Runs one call with the retry rule and maps `PERMISSION_DENIED` to
    /// [`GridError::RunNotRunning`].
    async fn call<T, F, Fut>(&self, name: &'static str, call: F) -> Result<T, GridError>
    where
        F: Fn(ServerAppIoClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        Ok(self.call_response(name, call).await?.into_inner())
    }

    /// [`Grid::call`], keeping the response's metadata.
    async fn call_response<T, F, Fut>(
        &self,
        name: &'static str,
        call: F,
    ) -> Result<tonic::Response<T>, GridError>
    where
        F: Fn(ServerAppIoClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.retry.run(name, || call(self.client.clone())).await {
            Ok(response) => Ok(response),
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                Err(GridError::RunNotRunning(status.message().to_owned()))
            }
            Err(status) => Err(GridError::Rpc {
                call: name,
                status: Box::new(status),
            }),
        }
    }
}
