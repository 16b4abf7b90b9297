//! The ClientAppIo gRPC service through which `flwr-clientapp` fetches its inputs and returns its
//! outputs (BEHAVIOR.md §3, PROTOCOL.md §4.12).
//!
//! The node loop primes an [`Exchange`] with one message's inputs and a fresh token, starts (or
//! waits for) a ClientApp, and collects the outputs. The service enforces the reference's token
//! rules and status codes:
//!
//! | RPC | checks, in order |
//! |---|---|
//! | `GetToken` | inputs present; token not yet returned |
//! | `PullClientAppInputs` | inputs present; token returned; token matches |
//! | `PushClientAppOutputs` | inputs present; token returned; inputs delivered; token matches |
//!
//! Unlike the reference, the node loop always resets the exchange after an attempt, so one
//! crashed ClientApp does not poison every later message.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flwr_proto::client_app_io_server::{ClientAppIo, ClientAppIoServer};
use flwr_proto::{
    ClientAppOutputCode, ClientAppOutputStatus, Context, Fab, GetTokenRequest, GetTokenResponse,
    Message, PullClientAppInputsRequest, PullClientAppInputsResponse, PushClientAppOutputsRequest,
    PushClientAppOutputsResponse, Run,
};
use flwr_runtime::listener::{self, ConnectionBudget, Limits, ListenerSettings};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Everything one ClientApp execution receives.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The instruction, as a `Message`.
    pub message: Message,
    /// The run's context on this node.
    pub context: Context,
    /// The run, with `fab_id`/`fab_version` read from the FAB.
    pub run: Run,
    /// The FAB, if the run has one.
    pub fab: Option<Fab>,
    /// The token the ClientApp must present.
    pub token: u64,
}

/// What a ClientApp pushed back.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// The reply.
    pub message: Message,
    /// The context after the app ran.
    pub context: Context,
}

/// A ClientAppIo request refused by the token rules (§3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// No message is waiting for a ClientApp.
    #[error("No inputs available.")]
    NoInputs,
    /// `GetToken` after the token was handed out.
    #[error("Token already returned. A token can be returned only once.")]
    TokenAlreadyReturned,
    /// Pull or push before the token was handed out. (Wording, typo included, is the reference's.)
    #[error("Token hasn't been returned.Token must be returned before can be returned only once.")]
    TokenNotReturned,
    /// Push before the inputs were pulled. (Wording is the reference's.)
    #[error(
        "Inputs haven't been delivered.Inputs must be delivered before can be returned only once."
    )]
    InputsNotDelivered,
    /// The presented token is not this message's.
    #[error("Mismatch between ClientApp and SuperNode token")]
    TokenMismatch,
}

impl From<IoError> for Status {
    fn from(error: IoError) -> Self {
        let message = error.to_string();
        match error {
            IoError::TokenMismatch => Status::invalid_argument(message),
            IoError::NoInputs
            | IoError::TokenAlreadyReturned
            | IoError::TokenNotReturned
            | IoError::InputsNotDelivered => Status::failed_precondition(message),
        }
    }
}

/// Inputs were primed while a previous exchange was still in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ClientAppIo inputs or outputs are already set")]
pub struct Busy;

#[derive(Debug, Default)]
struct State {
    inputs: Option<Inputs>,
    outputs: Option<Outputs>,
    token_returned: bool,
    inputs_returned: bool,
}

/// The state shared by the ClientAppIo service and the node loop.
#[derive(Debug, Default)]
pub struct Exchange {
    // A std mutex: every critical section is a few field reads/writes and never awaits.
    state: Mutex<State>,
    outputs_ready: Notify,
}

impl Exchange {
    /// An empty exchange.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the plain-data state inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Primes the exchange with one message. `token_returned` is `true` when the token travels
    /// on the command line (subprocess isolation), `false` when an external app must call
    /// `GetToken` (process isolation).
    ///
    /// # Errors
    ///
    /// [`Busy`] if the previous exchange was not finished.
    pub fn set_inputs(&self, inputs: Inputs, token_returned: bool) -> Result<(), Busy> {
        let mut state = self.lock();
        if state.inputs.is_some() || state.outputs.is_some() || state.token_returned {
            return Err(Busy);
        }
        state.inputs = Some(inputs);
        state.token_returned = token_returned;
        state.inputs_returned = false;
        Ok(())
    }

    /// Ends the exchange: returns the pushed outputs, if any, and clears all state.
    pub fn finish(&self) -> Option<Outputs> {
        std::mem::take(&mut *self.lock()).outputs
    }

    /// Whether outputs have been pushed.
    pub fn has_outputs(&self) -> bool {
        self.lock().outputs.is_some()
    }

    /// Waits until a ClientApp has pushed outputs (without taking them).
    pub async fn outputs_pushed(&self) {
        loop {
            if self.has_outputs() {
                return;
            }
            // `notify_one` stores a permit when nobody waits, so a push between the check
            // above and this await is not lost; spurious wake-ups just loop.
            self.outputs_ready.notified().await;
        }
    }

    fn inner_get_token(&self) -> Result<GetTokenResponse, IoError> {
        let mut state = self.lock();
        let token = state.inputs.as_ref().ok_or(IoError::NoInputs)?.token;
        if state.token_returned {
            return Err(IoError::TokenAlreadyReturned);
        }
        state.token_returned = true;
        Ok(GetTokenResponse { token })
    }

    fn inner_pull(
        &self,
        request: &PullClientAppInputsRequest,
    ) -> Result<PullClientAppInputsResponse, IoError> {
        let mut state = self.lock();
        let inputs = state.inputs.as_ref().ok_or(IoError::NoInputs)?;
        if !state.token_returned {
            return Err(IoError::TokenNotReturned);
        }
        if request.token != inputs.token {
            return Err(IoError::TokenMismatch);
        }
        let response = PullClientAppInputsResponse {
            message: Some(inputs.message.clone()),
            context: Some(inputs.context.clone()),
            run: Some(inputs.run.clone()),
            fab: inputs.fab.clone(),
        };
        state.inputs_returned = true;
        Ok(response)
    }

    fn inner_push(
        &self,
        request: PushClientAppOutputsRequest,
    ) -> Result<PushClientAppOutputsResponse, IoError> {
        let mut state = self.lock();
        let inputs = state.inputs.as_ref().ok_or(IoError::NoInputs)?;
        if !state.token_returned {
            return Err(IoError::TokenNotReturned);
        }
        if !state.inputs_returned {
            return Err(IoError::InputsNotDelivered);
        }
        if request.token != inputs.token {
            return Err(IoError::TokenMismatch);
        }
        // The reference converts the pushed protos to Python objects and reports failure in the
        // response status, not as a gRPC error; a Message needs exactly one of content/error.
        let outputs = match request.message {
            Some(message) if message.content.is_some() != message.error.is_some() => {
                Some(Outputs {
                    message,
                    context: request.context.unwrap_or_default(),
                })
            }
            _ => None,
        };
        let status = match outputs {
            Some(outputs) => {
                state.outputs = Some(outputs);
                drop(state);
                self.outputs_ready.notify_one();
                ClientAppOutputStatus {
                    code: ClientAppOutputCode::Success.into(),
                    message: "Success".into(),
                }
            }
            None => {
                tracing::error!(
                    "ClientApp pushed a message without exactly one of content and error"
                );
                ClientAppOutputStatus {
                    code: ClientAppOutputCode::UnknownError.into(),
                    // Sic: the reference's spelling.
                    message: "Unkonwn error".into(),
                }
            }
        };
        Ok(PushClientAppOutputsResponse {
            status: Some(status),
        })
    }
}

/// The tonic service over an [`Exchange`].
#[derive(Clone, Debug)]
pub struct ClientAppIoService {
    exchange: Arc<Exchange>,
}

impl ClientAppIoService {
    /// A service answering from `exchange`.
    pub fn new(exchange: Arc<Exchange>) -> Self {
        Self { exchange }
    }
}

#[tonic::async_trait]
impl ClientAppIo for ClientAppIoService {
    async fn get_token(
        &self,
        _request: Request<GetTokenRequest>,
    ) -> Result<Response<GetTokenResponse>, Status> {
        tracing::debug!("ClientAppIo.GetToken");
        Ok(Response::new(self.exchange.inner_get_token()?))
    }

    async fn pull_client_app_inputs(
        &self,
        request: Request<PullClientAppInputsRequest>,
    ) -> Result<Response<PullClientAppInputsResponse>, Status> {
        tracing::debug!("ClientAppIo.PullClientAppInputs");
        Ok(Response::new(self.exchange.inner_pull(request.get_ref())?))
    }

    async fn push_client_app_outputs(
        &self,
        request: Request<PushClientAppOutputsRequest>,
    ) -> Result<Response<PushClientAppOutputsResponse>, Status> {
        tracing::debug!("ClientAppIo.PushClientAppOutputs");
        Ok(Response::new(
            self.exchange.inner_push(request.into_inner())?,
        ))
    }
}

/// Connections the ClientAppIo port holds at once: its clients are this SuperNode's ClientApps.
const MAX_CONNECTIONS: usize = 1024;

/// Serves ClientAppIo on `listener` (plaintext, the reference's server options) until `stop`
/// is cancelled, through the bounded accept loop of [`flwr_runtime::listener`] (accept errors
/// retried, silent and excess connections closed).
///
/// # Errors
///
/// When the HTTP/2 server fails.
pub async fn serve(
    listener: TcpListener,
    exchange: Arc<Exchange>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let settings = ListenerSettings {
        api: "ClientAppIo",
        tls: None,
        limits: Limits::DEFAULT,
        budget: ConnectionBudget::new(MAX_CONNECTIONS),
    };
    let connections = listener::incoming(listener, settings, stop.child_token());
    let service = ClientAppIoServer::new(ClientAppIoService::new(exchange))
        .max_decoding_message_size(flwr_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(flwr_proto::MAX_MESSAGE_SIZE);
    tonic::transport::Server::builder()
        .max_concurrent_streams(1000)
        .concurrency_limit_per_connection(1000)
        .http2_keepalive_interval(Some(Duration::from_secs(210)))
        .add_service(service)
        .serve_with_incoming_shutdown(connections, stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use flwr_proto::{Error, Metadata, RecordSet};

    use super::*;

    fn inputs(token: u64) -> Inputs {
        Inputs {
            message: Message {
                metadata: Some(Metadata::default()),
                content: Some(RecordSet::default()),
                error: None,
            },
            context: Context::default(),
            run: Run::default(),
            fab: None,
            token,
        }
    }

    fn push(token: u64, message: Option<Message>) -> PushClientAppOutputsRequest {
        PushClientAppOutputsRequest {
            token,
            message,
            context: Some(Context::default()),
        }
    }

    fn reply() -> Message {
        Message {
            metadata: Some(Metadata::default()),
            content: None,
            error: Some(Error::default()),
        }
    }

    #[test]
    fn process_mode_sequence() {
        let io = Exchange::new();
        assert_eq!(io.inner_get_token(), Err(IoError::NoInputs));
        assert_eq!(
            io.inner_pull(&PullClientAppInputsRequest { token: 7 })
                .unwrap_err(),
            IoError::NoInputs
        );
        io.set_inputs(inputs(7), false).unwrap();
        assert_eq!(io.set_inputs(inputs(8), false), Err(Busy));
        assert_eq!(
            io.inner_pull(&PullClientAppInputsRequest { token: 7 })
                .unwrap_err(),
            IoError::TokenNotReturned
        );
        assert_eq!(
            io.inner_push(push(7, Some(reply()))).unwrap_err(),
            IoError::TokenNotReturned
        );
        assert_eq!(io.inner_get_token().unwrap().token, 7);
        assert_eq!(io.inner_get_token(), Err(IoError::TokenAlreadyReturned));
        assert_eq!(
            io.inner_push(push(7, Some(reply()))).unwrap_err(),
            IoError::InputsNotDelivered
        );
        assert_eq!(
            io.inner_pull(&PullClientAppInputsRequest { token: 8 })
                .unwrap_err(),
            IoError::TokenMismatch
        );
        let pulled = io
            .inner_pull(&PullClientAppInputsRequest { token: 7 })
            .unwrap();
        assert!(pulled.message.is_some() && pulled.fab.is_none());
        assert_eq!(
            io.inner_push(push(8, Some(reply()))).unwrap_err(),
            IoError::TokenMismatch
        );
        assert!(!io.has_outputs());
        let status = io.inner_push(push(7, None)).unwrap().status.unwrap();
        assert_eq!(status.code, i32::from(ClientAppOutputCode::UnknownError));
        assert_eq!(status.message, "Unkonwn error");
        let status = io
            .inner_push(push(7, Some(reply())))
            .unwrap()
            .status
            .unwrap();
        assert_eq!(status.code, i32::from(ClientAppOutputCode::Success));
        assert_eq!(status.message, "Success");
        assert!(io.has_outputs());
        let outputs = io.finish().unwrap();
        assert_eq!(outputs.message, reply());
        assert_eq!(io.inner_get_token(), Err(IoError::NoInputs));
        // A fresh message can be primed right away.
        io.set_inputs(inputs(9), true).unwrap();
        assert!(io.finish().is_none());
        io.set_inputs(inputs(10), true).unwrap();
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            Status::from(IoError::TokenMismatch).code(),
            tonic::Code::InvalidArgument
        );
        let status = Status::from(IoError::NoInputs);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "No inputs available.");
    }

    #[tokio::test]
    async fn waiting_for_outputs_wakes_on_push() {
        let io = Arc::new(Exchange::new());
        io.set_inputs(inputs(1), true).unwrap();
        let waiter = {
            let io = Arc::clone(&io);
            crate::spawn::spawn("waiter", async move { io.outputs_pushed().await })
        };
        io.inner_pull(&PullClientAppInputsRequest { token: 1 })
            .unwrap();
        io.inner_push(push(1, Some(reply()))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
