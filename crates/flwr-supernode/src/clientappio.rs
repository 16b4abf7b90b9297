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
//!
//! # Warm exchanges
//!
//! With a warm ClientApp (one long-lived `flwr-clientapp` started by the SuperNode without
//! `--token`, see [`crate::warm`]) the app asks for its next token right after pushing the last
//! outputs, and the reference app then sleeps a second before pulling. An exchange built with
//! [`Exchange::warm`] keeps that second off the critical path:
//!
//! - `GetToken` with no message primed (or with the current message already answered) hands
//!   out a fresh token at once and *reserves* it for the next message; a later `GetToken` in
//!   that state replaces the reservation (the latest asker is the live app);
//! - `PullClientAppInputs` for the reserved token is *held* until the node loop primes a
//!   message, which then takes the reserved token as already returned. The hold ends without a
//!   message after a bound, when the reservation is revoked (the app exited or was replaced)
//!   or when the server stops; the answer is then what the reference gives a pull without a
//!   message: `FAILED_PRECONDITION "No inputs available."` (the Python app exits on it and the
//!   supervisor starts a new one; the Rust runner asks for a token again);
//! - `GetToken` while a message is in flight and unanswered keeps the reference's
//!   `FAILED_PRECONDITION "Token already returned..."`.
//!
//! Every other request is checked exactly as in the table above. [`Exchange::new`] (process
//! isolation and per-message subprocesses) keeps the reference's rules unchanged.

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
use tokio::sync::{watch, Notify};
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

/// One message's exchange. Reset by [`Exchange::finish`].
#[derive(Debug, Default)]
struct Current {
    inputs: Option<Inputs>,
    outputs: Option<Outputs>,
    token_returned: bool,
    inputs_returned: bool,
}

#[derive(Debug, Default)]
struct State {
    current: Current,
    /// Warm exchanges only: the token handed out for a message not yet primed.
    reserved: Option<u64>,
}

/// What a pull gets from the state as it is now. (The response is boxed: it is large and the
/// other outcomes are tiny.)
enum Pull {
    Ready(Box<PullClientAppInputsResponse>),
    Hold,
    Refused(IoError),
}

/// The state shared by the ClientAppIo service and the node loop.
#[derive(Debug)]
pub struct Exchange {
    // A std mutex: every critical section is a few field reads/writes and never awaits.
    state: Mutex<State>,
    outputs_ready: Notify,
    /// Bumped whenever a held pull may have become answerable (a message primed, a
    /// reservation replaced or revoked). A watch rather than a `Notify`: a receiver created
    /// before checking the state sees every later bump.
    changed: watch::Sender<u64>,
    /// `Some(bound)` for a warm exchange: how long a pull for the reserved token is held.
    hold: Option<Duration>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    /// An empty exchange with the reference's token rules.
    pub fn new() -> Self {
        Self {
            state: Mutex::default(),
            outputs_ready: Notify::new(),
            changed: watch::Sender::new(0),
            hold: None,
        }
    }

    /// An empty warm exchange (see the module docs): `GetToken` reserves the next token before a
    /// message exists and a pull for it is held up to `hold`.
    pub fn warm(hold: Duration) -> Self {
        Self {
            hold: Some(hold),
            ..Self::new()
        }
    }

    /// Whether this exchange hands out tokens ahead of messages.
    pub fn is_warm(&self) -> bool {
        self.hold.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the plain-data state inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Primes the exchange with one message. `token_returned` is `true` when the token travels
    /// on the command line (subprocess isolation), `false` when an app must call `GetToken`.
    /// On a warm exchange a token already reserved by `GetToken` replaces `inputs.token` and
    /// counts as returned; the token in use is returned.
    ///
    /// # Errors
    ///
    /// [`Busy`] if the previous exchange was not finished.
    pub fn set_inputs(&self, mut inputs: Inputs, token_returned: bool) -> Result<u64, Busy> {
        let mut state = self.lock();
        let current = &state.current;
        if current.inputs.is_some() || current.outputs.is_some() || current.token_returned {
            return Err(Busy);
        }
        let mut token_returned = token_returned;
        if let Some(reserved) = state.reserved.take() {
            inputs.token = reserved;
            token_returned = true;
        }
        let token = inputs.token;
        state.current = Current {
            inputs: Some(inputs),
            outputs: None,
            token_returned,
            inputs_returned: false,
        };
        drop(state);
        self.bump();
        Ok(token)
    }

    /// Gives a primed message that no app has pulled yet a fresh token, to be handed to the
    /// next app (its app went away before pulling it). A reserved token is used if there is
    /// one. Returns `false`, changing nothing, when there is no such message.
    pub fn reprime(&self) -> bool {
        let mut state = self.lock();
        let State { current, reserved } = &mut *state;
        let Some(inputs) = current.inputs.as_mut() else {
            return false;
        };
        if current.inputs_returned || current.outputs.is_some() {
            return false;
        }
        match reserved.take() {
            Some(token) => {
                inputs.token = token;
                current.token_returned = true;
            }
            None => {
                inputs.token = fresh_token(&[inputs.token]);
                current.token_returned = false;
            }
        }
        drop(state);
        self.bump();
        true
    }

    /// Ends the exchange: returns the pushed outputs, if any, and clears the message's state
    /// (a reserved token stays reserved for the next message).
    pub fn finish(&self) -> Option<Outputs> {
        std::mem::take(&mut self.lock().current).outputs
    }

    /// Forgets the reserved token, if any, and ends a pull held for it: the app it was handed
    /// to is gone.
    pub fn revoke(&self) {
        if self.lock().reserved.take().is_some() {
            self.bump();
        }
    }

    /// Whether outputs have been pushed.
    pub fn has_outputs(&self) -> bool {
        self.lock().current.outputs.is_some()
    }

    fn bump(&self) {
        self.changed
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
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
        let current = &mut state.current;
        match current.inputs.as_ref() {
            Some(inputs) if !current.token_returned => {
                current.token_returned = true;
                return Ok(GetTokenResponse {
                    token: inputs.token,
                });
            }
            Some(_) if !self.is_warm() || current.outputs.is_none() => {
                return Err(IoError::TokenAlreadyReturned);
            }
            None if !self.is_warm() => return Err(IoError::NoInputs),
            // Warm, and no message or an answered one: reserve the next message's token.
            _ => {}
        }
        let mut avoid = vec![state.reserved.unwrap_or(0)];
        avoid.extend(state.current.inputs.as_ref().map(|inputs| inputs.token));
        let token = fresh_token(&avoid);
        let replaced = state.reserved.replace(token);
        drop(state);
        if replaced.is_some() {
            // Ends the pull held for the replaced token.
            self.bump();
        }
        Ok(GetTokenResponse { token })
    }

    /// A pull judged on the state as it is now; `hold` allows holding a pull for the reserved
    /// token.
    fn try_pull(&self, request: &PullClientAppInputsRequest, hold: bool) -> Pull {
        let mut state = self.lock();
        if hold && self.is_warm() && state.reserved == Some(request.token) {
            return Pull::Hold;
        }
        let current = &mut state.current;
        let Some(inputs) = current.inputs.as_ref() else {
            return Pull::Refused(IoError::NoInputs);
        };
        if !current.token_returned {
            return Pull::Refused(IoError::TokenNotReturned);
        }
        if request.token != inputs.token {
            return Pull::Refused(IoError::TokenMismatch);
        }
        let response = PullClientAppInputsResponse {
            message: Some(inputs.message.clone()),
            context: Some(inputs.context.clone()),
            run: Some(inputs.run.clone()),
            fab: inputs.fab.clone(),
        };
        current.inputs_returned = true;
        Pull::Ready(Box::new(response))
    }

    /// `PullClientAppInputs` with the reference's checks; on a warm exchange a pull for the
    /// reserved token waits for the message (see the module docs).
    async fn inner_pull(
        &self,
        request: &PullClientAppInputsRequest,
        stop: &CancellationToken,
    ) -> Result<PullClientAppInputsResponse, IoError> {
        let Some(bound) = self.hold else {
            return self.pull_now(request);
        };
        let deadline = tokio::time::Instant::now() + bound;
        // Subscribed before the first look at the state, so no change after it is missed.
        let mut changes = self.changed.subscribe();
        loop {
            match self.try_pull(request, true) {
                Pull::Ready(response) => return Ok(*response),
                Pull::Refused(error) => return Err(error),
                Pull::Hold => {}
            }
            tokio::select! {
                // The sender lives in `self`, so this only fails if `self` is gone.
                changed = changes.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = stop.cancelled() => break,
            }
        }
        // The hold ended without a message: the app is told there is none and asks again (or
        // exits and is replaced), so its reservation goes.
        {
            let mut state = self.lock();
            if state.reserved == Some(request.token) {
                state.reserved = None;
            }
        }
        self.pull_now(request)
    }

    /// A pull answered at once, with the reference's checks.
    fn pull_now(
        &self,
        request: &PullClientAppInputsRequest,
    ) -> Result<PullClientAppInputsResponse, IoError> {
        match self.try_pull(request, false) {
            Pull::Ready(response) => Ok(*response),
            Pull::Refused(error) => Err(error),
            // `try_pull` never holds when told not to.
            Pull::Hold => Err(IoError::NoInputs),
        }
    }

    fn inner_push(
        &self,
        request: PushClientAppOutputsRequest,
    ) -> Result<PushClientAppOutputsResponse, IoError> {
        let mut guard = self.lock();
        let state = &mut guard.current;
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
                drop(guard);
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

/// A random token other than 0 (what a request without a token carries) and `avoid`.
fn fresh_token(avoid: &[u64]) -> u64 {
    loop {
        let token = rand::random::<u64>();
        if token != 0 && !avoid.contains(&token) {
            return token;
        }
    }
}

/// The tonic service over an [`Exchange`].
#[derive(Clone, Debug)]
pub struct ClientAppIoService {
    exchange: Arc<Exchange>,
    stop: CancellationToken,
}

impl ClientAppIoService {
    /// A service answering from `exchange`; pulls held on a warm exchange end when `stop` is
    /// cancelled (so a graceful server shutdown does not wait for them).
    pub fn new(exchange: Arc<Exchange>, stop: CancellationToken) -> Self {
        Self { exchange, stop }
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
        Ok(Response::new(
            self.exchange
                .inner_pull(request.get_ref(), &self.stop)
                .await?,
        ))
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

/// Serves ClientAppIo on `listener` (plaintext, the reference's server options, messages up to
/// `max_message_size` bytes) until `stop`
/// is cancelled, through the bounded accept loop of [`flwr_runtime::listener`] (accept errors
/// retried, silent and excess connections closed).
///
/// # Errors
///
/// When the HTTP/2 server fails.
pub async fn serve(
    listener: TcpListener,
    exchange: Arc<Exchange>,
    max_message_size: usize,
    observed: Observed,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let settings = ListenerSettings {
        api: "ClientAppIo",
        tls: None,
        limits: Limits::DEFAULT,
        budget: ConnectionBudget::new(MAX_CONNECTIONS),
    };
    let connections = listener::incoming(listener, settings, stop.child_token());
    let service = ClientAppIoServer::new(ClientAppIoService::new(exchange, stop.clone()))
        .max_decoding_message_size(max_message_size)
        .max_encoding_message_size(max_message_size);
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(1000)
        .concurrency_limit_per_connection(1000)
        .http2_keepalive_interval(Some(Duration::from_secs(210)));
    let router = match &observed.grpc {
        Some(grpc) => builder.add_service(grpc.wrap("ClientAppIo", CLIENTAPPIO_METHODS, service)),
        None => builder.add_service(service),
    };
    router
        .add_service(observed.health)
        .serve_with_incoming_shutdown(connections, stop.cancelled_owned())
        .await
}

/// The ClientAppIo methods (label values of `method` in the request metrics).
pub const CLIENTAPPIO_METHODS: &[&str] =
    &["GetToken", "PullClientAppInputs", "PushClientAppOutputs"];

/// What [`serve`] adds beside ClientAppIo: gRPC health, and request metrics when exported.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `grpc.health.v1.Health`, answered on the ClientAppIo port.
    pub health: flwr_runtime::health::HealthGrpc,
    /// Request counts and latencies, with `--metrics-address`.
    pub grpc: Option<flwr_runtime::metrics::GrpcMetrics>,
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
            io.pull_now(&PullClientAppInputsRequest { token: 7 })
                .unwrap_err(),
            IoError::NoInputs
        );
        io.set_inputs(inputs(7), false).unwrap();
        assert_eq!(io.set_inputs(inputs(8), false), Err(Busy));
        assert_eq!(
            io.pull_now(&PullClientAppInputsRequest { token: 7 })
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
            io.pull_now(&PullClientAppInputsRequest { token: 8 })
                .unwrap_err(),
            IoError::TokenMismatch
        );
        let pulled = io
            .pull_now(&PullClientAppInputsRequest { token: 7 })
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
        assert_eq!(io.set_inputs(inputs(9), true), Ok(9));
        assert!(io.finish().is_none());
        io.set_inputs(inputs(10), true).unwrap();
    }

    fn pull(token: u64) -> PullClientAppInputsRequest {
        PullClientAppInputsRequest { token }
    }

    /// A pull held on `io`, as the service runs it.
    fn held_pull(
        io: &Arc<Exchange>,
        token: u64,
        stop: &CancellationToken,
    ) -> flwr_runtime::task::TaskHandle<Result<PullClientAppInputsResponse, IoError>> {
        let io = Arc::clone(io);
        let stop = stop.clone();
        flwr_runtime::task::spawn("held-pull", async move {
            io.inner_pull(&pull(token), &stop).await
        })
    }

    async fn bounded<T>(task: flwr_runtime::task::TaskHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the pull was answered")
            .expect("no panic")
    }

    #[tokio::test]
    async fn warm_token_ahead_of_the_message_and_held_pull() {
        let io = Arc::new(Exchange::warm(Duration::from_secs(60)));
        let stop = CancellationToken::new();
        // No message yet: the token is handed out anyway and the pull waits for the message.
        let token = io.inner_get_token().unwrap().token;
        assert_ne!(token, 0);
        let held = held_pull(&io, token, &stop);
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        // Priming takes the reserved token, whatever the node loop proposed.
        assert_eq!(io.set_inputs(inputs(5), false), Ok(token));
        let pulled = bounded(held).await.unwrap();
        assert!(pulled.message.is_some());
        // In flight: no second token (the reference's answer).
        assert_eq!(io.inner_get_token(), Err(IoError::TokenAlreadyReturned));
        io.inner_push(push(token, Some(reply()))).unwrap();
        // Answered: the next token is reserved before the node loop has collected the outputs,
        // and a pull for it waits instead of being refused as a mismatch.
        let next = io.inner_get_token().unwrap().token;
        assert_ne!(next, token);
        let held = held_pull(&io, next, &stop);
        assert!(io.finish().is_some());
        assert_eq!(io.set_inputs(inputs(6), false), Ok(next));
        bounded(held).await.unwrap();
        io.finish();
        // Other tokens get the reference's answers at once.
        assert_eq!(
            io.inner_pull(&pull(1), &stop).await.unwrap_err(),
            IoError::NoInputs
        );
    }

    #[tokio::test]
    async fn warm_hold_ends_on_revoke_replacement_bound_and_stop() {
        let io = Arc::new(Exchange::warm(Duration::from_millis(200)));
        let stop = CancellationToken::new();
        // Revoked (the app exited): "No inputs available.", and the token is gone.
        let token = io.inner_get_token().unwrap().token;
        let held = held_pull(&io, token, &stop);
        tokio::task::yield_now().await;
        io.revoke();
        assert_eq!(bounded(held).await.unwrap_err(), IoError::NoInputs);
        // A message primed now is handed out by GetToken, as in the reference.
        assert_eq!(io.set_inputs(inputs(8), false), Ok(8));
        assert_eq!(io.inner_get_token().unwrap().token, 8);
        io.finish();
        // Replaced by a later GetToken: the old pull ends, the new token is the one used.
        let old = io.inner_get_token().unwrap().token;
        let held = held_pull(&io, old, &stop);
        tokio::task::yield_now().await;
        let new = io.inner_get_token().unwrap().token;
        assert_eq!(bounded(held).await.unwrap_err(), IoError::NoInputs);
        assert_eq!(io.set_inputs(inputs(9), false), Ok(new));
        io.finish();
        // The bound: the pull ends and the reservation with it.
        let token = io.inner_get_token().unwrap().token;
        let held = held_pull(&io, token, &stop);
        assert_eq!(bounded(held).await.unwrap_err(), IoError::NoInputs);
        assert_eq!(io.set_inputs(inputs(10), false), Ok(10));
        io.finish();
        // Server stop, long before the bound.
        let long = Arc::new(Exchange::warm(Duration::from_secs(600)));
        let token = long.inner_get_token().unwrap().token;
        let held = held_pull(&long, token, &stop);
        tokio::task::yield_now().await;
        stop.cancel();
        assert_eq!(bounded(held).await.unwrap_err(), IoError::NoInputs);
    }

    #[test]
    fn reprime_gives_an_unpulled_message_a_new_token() {
        let io = Exchange::warm(Duration::from_secs(60));
        let dead = io.inner_get_token().unwrap().token;
        assert_eq!(io.set_inputs(inputs(3), false), Ok(dead));
        // The app that held `dead` is gone; its revocation finds nothing reserved.
        io.revoke();
        assert!(io.reprime());
        let token = io.inner_get_token().unwrap().token;
        assert_ne!(token, dead);
        assert_eq!(
            io.pull_now(&pull(dead)).unwrap_err(),
            IoError::TokenMismatch
        );
        io.pull_now(&pull(token)).unwrap();
        // Pulled: no more handing on.
        assert!(!io.reprime());
    }

    #[test]
    fn reference_exchange_never_reserves() {
        let io = Exchange::new();
        assert!(!io.is_warm());
        assert_eq!(io.inner_get_token(), Err(IoError::NoInputs));
        io.set_inputs(inputs(4), false).unwrap();
        assert_eq!(io.inner_get_token().unwrap().token, 4);
        io.pull_now(&pull(4)).unwrap();
        io.inner_push(push(4, Some(reply()))).unwrap();
        // Answered but not collected: still the reference's refusal.
        assert_eq!(io.inner_get_token(), Err(IoError::TokenAlreadyReturned));
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
            flwr_runtime::task::spawn("waiter", async move { io.outputs_pushed().await })
        };
        io.pull_now(&PullClientAppInputsRequest { token: 1 })
            .unwrap();
        io.inner_push(push(1, Some(reply()))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
