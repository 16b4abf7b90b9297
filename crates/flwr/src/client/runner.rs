//! The ClientAppIo client loop of `flwr-clientapp` (BEHAVIOR.md §3.2).
//!
//! ```text
//! token given?  no → GetToken every second until the SuperNode hands one out
//! PullClientAppInputs{token}        → message, context, run, fab
//! load the app for the FAB and handle the message → reply (or an error reply)
//! PushClientAppOutputs{token, reply, context}
//! token given?  yes → exit; no → back to GetToken
//! ```
//!
//! Without a token this is also the loop of a *warm* ClientApp, which our SuperNode starts once
//! per run (`--clientapp-lifetime warm`) instead of once per message. Such a SuperNode hands out
//! the next token before the message exists and holds the pull until the message is there, so
//! the next token is asked for right after pushing, without the reference's pause. When the
//! hold ends without a message it answers as the reference answers a pull without one
//! (`FAILED_PRECONDITION`); the reference app exits on that, this loop pauses and asks for a new
//! token instead.

use std::time::Duration;

use flwr_proto as proto;
use flwr_proto::client_app_io_client::ClientAppIoClient;
use tonic::transport::Channel;

use crate::app_spec::AppSpec;
use crate::client::ClientAppLoader;
use crate::context::{Context, Fab, Run};
use crate::error::ConversionError;
use crate::message::{Message, MessageError};
use crate::transport::{self, AddressError, ChannelArgs, RetryPolicy};

/// The default ClientAppIo address of `flwr-clientapp`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9094";

/// Command-line flags of `flwr-clientapp` (CLI.md §3.2), for a Rust drop-in binary.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientAppArgs {
    /// Address of the SuperNode's ClientAppIo API.
    #[arg(long, default_value = DEFAULT_ADDRESS, env = "FLWR_CLIENTAPPIO_API_ADDRESS")]
    pub clientappio_api_address: String,
    /// Token of the one message to process; without it the app keeps polling for messages.
    #[arg(long)]
    pub token: Option<u64>,
    /// `--insecure`, `--flwr-dir` and the message size limit.
    #[command(flatten)]
    pub channel: ChannelArgs,
}

impl ClientAppArgs {
    /// Options for [`run_clientapp`] from these flags.
    pub fn options(&self) -> ClientAppOptions {
        ClientAppOptions {
            token: self.token,
            max_message_size: self.channel.max_message_size(),
            ..ClientAppOptions::new(&self.clientappio_api_address)
        }
    }
}

/// How [`run_clientapp`] connects and polls.
#[derive(Clone, Debug)]
pub struct ClientAppOptions {
    /// ClientAppIo address, `host:port`.
    pub address: String,
    /// Process only the message of this token (`--token`); `None` keeps polling `GetToken`.
    pub token: Option<u64>,
    /// Pause after a `GetToken` that returned no token (the reference waits 1 s).
    pub token_poll_interval: Duration,
    /// Retry rule for `UNAVAILABLE`.
    pub retry: RetryPolicy,
    /// Stop after this many messages even without a token (`None`: forever, as the reference).
    pub max_messages: Option<usize>,
    /// Largest message received or sent, in bytes (512 MiB, as the reference).
    pub max_message_size: usize,
}

impl ClientAppOptions {
    /// Defaults of `flwr-clientapp` for `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            token: None,
            token_poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            max_messages: None,
            max_message_size: proto::MAX_MESSAGE_SIZE,
        }
    }
}

/// Why the ClientApp loop stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The address is not usable.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The SuperNode sent inputs that do not convert.
    #[error("invalid {what} from the SuperNode: {source}")]
    Inputs {
        /// Which part.
        what: &'static str,
        /// The conversion error.
        #[source]
        source: ConversionError,
    },
    /// A call failed (after retrying `UNAVAILABLE`).
    #[error("{call} failed: {} ({})", status.code(), status.message())]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// Its status (boxed: it is large and errors are rare).
        status: Box<tonic::Status>,
    },
}

/// Runs a ClientApp against a SuperNode's ClientAppIo API at `address`.
///
/// With `token`, handles that one message and returns (subprocess isolation: the SuperNode
/// spawns the app per message). Without, polls forever (process isolation, or a warm app
/// started by our SuperNode).
///
/// # Errors
///
/// [`RunnerError`] for a bad address, a failed call or malformed inputs; the reference
/// likewise ends the process on any gRPC error. One exception while polling: a pull refused
/// with `FAILED_PRECONDITION` (no message for the token) leads back to `GetToken`.
pub async fn run_clientapp<L: ClientAppLoader + ?Sized>(
    loader: &mut L,
    address: &str,
    token: Option<u64>,
) -> Result<(), RunnerError> {
    let options = ClientAppOptions {
        token,
        ..ClientAppOptions::new(address)
    };
    options.run(loader).await
}

impl ClientAppOptions {
    /// Runs the loop with these options; see [`run_clientapp`].
    ///
    /// # Errors
    ///
    /// As [`run_clientapp`].
    pub async fn run<L: ClientAppLoader + ?Sized>(
        &self,
        loader: &mut L,
    ) -> Result<(), RunnerError> {
        let client = ClientAppIoClient::new(transport::channel(&self.address)?)
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        let io = AppIo {
            client,
            retry: self.retry,
        };
        let mut given = self.token;
        let run_once = given.is_some();
        let mut handled = 0usize;
        loop {
            let token = match given.take() {
                Some(token) => token,
                None => io.wait_for_token(self.token_poll_interval).await,
            };
            let inputs = match io.pull(token).await {
                Ok(inputs) => inputs,
                Err(RunnerError::Rpc { status, .. })
                    if !run_once && status.code() == tonic::Code::FailedPrecondition =>
                {
                    tracing::debug!("No message for token {token}; asking for a new token");
                    // Paced like a refused GetToken, so two apps taking each other's
                    // reservations cannot spin.
                    tokio::time::sleep(self.token_poll_interval).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let (reply, context) = handle(loader, inputs);
            io.push(token, reply, context).await?;
            handled += 1;
            if run_once || self.max_messages.is_some_and(|max| handled >= max) {
                return Ok(());
            }
        }
    }
}

/// What `PullClientAppInputs` delivered, converted.
struct Inputs {
    message: Message,
    context: Context,
    run: Run,
    fab: Option<Fab>,
}

/// Loads the app and handles the message: returns the reply and the context to push.
fn handle<L: ClientAppLoader + ?Sized>(loader: &mut L, inputs: Inputs) -> (Message, Context) {
    let Inputs {
        message,
        context,
        run,
        fab,
    } = inputs;
    let spec = fab.and_then(|fab| match AppSpec::from_fab(&fab.content) {
        Ok(spec) => Some(spec),
        Err(error) => {
            tracing::warn!("cannot read the FAB of run {}: {error}", run.run_id);
            None
        }
    });
    let app = match loader.load(spec.as_ref(), &run) {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("ClientApp raised an exception: {error}");
            let reply = message.create_error_reply(MessageError {
                code: MessageError::LOAD_CLIENT_APP_EXCEPTION,
                reason: MessageError::LOAD_CLIENT_APP_REASON.to_owned(),
            });
            return (reply, context);
        }
    };
    // The app works on a copy so that a failure leaves the node's state as it was.
    let mut updated = context.clone();
    match app.handle(&message, &mut updated) {
        Ok(content) => (message.create_reply(content), updated),
        Err(error) => {
            tracing::error!("ClientApp raised an exception: {error}");
            let reply = message.create_error_reply(MessageError {
                code: MessageError::CLIENT_APP_RAISED_EXCEPTION,
                reason: error.reason(),
            });
            (reply, context)
        }
    }
}

/// The ClientAppIo stub with the retry rule.
struct AppIo {
    client: ClientAppIoClient<Channel>,
    retry: RetryPolicy,
}

impl AppIo {
    /// Polls `GetToken` until the SuperNode has a message. `FAILED_PRECONDITION` means "not
    /// yet"; like the reference, other errors are logged and polled through as well.
    async fn wait_for_token(&self, interval: Duration) -> u64 {
        loop {
            let result = self
                .retry
                .run("GetToken", || {
                    let mut client = self.client.clone();
                    async move { client.get_token(proto::GetTokenRequest {}).await }
                })
                .await;
            match result {
                Ok(response) => {
                    let token = response.into_inner().token;
                    tracing::debug!("[GetToken] Received token: {token}");
                    return token;
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    tracing::trace!("[GetToken] No token available yet");
                }
                Err(status) => {
                    tracing::error!("[GetToken] gRPC error occurred: {status}");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    async fn pull(&self, token: u64) -> Result<Inputs, RunnerError> {
        tracing::info!("Pulling ClientAppInputs for token {token}");
        let response = self
            .retry
            .run("PullClientAppInputs", || {
                let mut client = self.client.clone();
                async move {
                    client
                        .pull_client_app_inputs(proto::PullClientAppInputsRequest { token })
                        .await
                }
            })
            .await
            .map_err(|status| RunnerError::Rpc {
                call: "PullClientAppInputs",
                status: Box::new(status),
            })?
            .into_inner();
        let invalid = |what| move |source| RunnerError::Inputs { what, source };
        let message = response
            .message
            .ok_or(ConversionError::MissingField("message"))
            .and_then(Message::try_from)
            .map_err(invalid("message"))?;
        let context = response
            .context
            .ok_or(ConversionError::MissingField("context"))
            .and_then(Context::try_from)
            .map_err(invalid("context"))?;
        let run = Run::try_from(response.run.unwrap_or_default()).map_err(invalid("run"))?;
        Ok(Inputs {
            message,
            context,
            run,
            fab: response.fab.map(Fab::from),
        })
    }

    async fn push(&self, token: u64, reply: Message, context: Context) -> Result<(), RunnerError> {
        tracing::info!("Pushing ClientAppOutputs for token {token}");
        let request = proto::PushClientAppOutputsRequest {
            token,
            message: Some(reply.into()),
            context: Some(context.into()),
        };
        let response = self
            .retry
            .run("PushClientAppOutputs", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.push_client_app_outputs(request).await }
            })
            .await
            .map_err(|status| RunnerError::Rpc {
                call: "PushClientAppOutputs",
                status: Box::new(status),
            })?
            .into_inner();
        if let Some(status) = response.status {
            if status.code != proto::ClientAppOutputCode::Success as i32 {
                tracing::warn!(
                    "the SuperNode did not accept the outputs: {} ({})",
                    status.message,
                    status.code
                );
            }
        }
        Ok(())
    }
}
