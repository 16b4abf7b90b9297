//! The SuperNode's connection loop (BEHAVIOR.md §2.2–§2.10).
//!
//! ```text
//! bind ClientAppIo → CreateNode → start heartbeat
//! loop:
//!     PullTaskIns (asking the SuperLink to hold it) → nothing usable: sleep 3 s, or pull
//!                 again at once if the SuperLink held the pull
//!                 → instruction: GetRun (cached per run) → GetFab (cached per hash, verified,
//!                   installed) → run the ClientApp → validate the reply → PushTaskRes
//!     PERMISSION_DENIED for a run → forget its cached run and context
//!     heartbeat says the SuperLink forgot us → CreateNode again, carry on
//! shutdown: abandon the current message (stop the ClientApp), DeleteNode, exit 0
//! SuperLink unreachable past the retry limits, or a non-retried status: exit non-zero
//! ```
//!
//! Deliberate differences from the 1.14.0 reference, all invisible on the wire: the node
//! re-registers when the SuperLink forgot it (the reference keeps polling as a "zombie"); it exits
//! when it gives up (the reference idles until killed); the ClientAppIo state is reset after
//! every message (the reference can wedge after one crash); FABs are fetched once per hash; a
//! ClientApp is bounded by its message's TTL; the caches of runs, FABs and contexts are bounded
//! ([`MAX_CACHED_RUNS`], [`MAX_CACHED_FABS`]) instead of growing for the life of the process.
//! With subprocess isolation the ClientApp is by default one long-lived process per run
//! ([`crate::warm`]) instead of one process per message (`--clientapp-lifetime per-message`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flwr_core::message::error_code::{CLIENT_APP_RAISED_EXCEPTION, LOAD_CLIENT_APP_EXCEPTION};
use flwr_core::message::{
    error_reply, exception_reason, remaining_ttl, task_res, Parts, LOAD_CLIENT_APP_REASON,
};
use flwr_core::FabMetadata;
use flwr_proto::{Context, Fab, Message, Metadata, Node, RecordSet, Run, Scalar};
use flwr_runtime::clock::unix_now;
use flwr_runtime::health::Health;
use flwr_runtime::task::{spawn, TaskHandle};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::Lru;
use crate::clientappio::{self, Exchange, Inputs, Outputs};
use crate::config::{ClientAppLifetime, Config, Isolation, NodeAuthMode};
use crate::fleet::{CallError, ChannelError, Fleet, Tls};
use crate::heartbeat::{self, Beat};
use crate::install;
use crate::launcher::{LaunchError, Launcher};
use crate::message::{self, usable_message, validate_reply};
use crate::metrics::NodeMetrics;
use crate::signer::{NodeAuth, RequestSigner, Unsigned};
use crate::timing::IDLE_POLL;
use crate::warm::{self, Exit, Lease, WarmApp};

/// How long the main loop may take to wind down after a shutdown signal (a ClientApp gets
/// SIGTERM and a few seconds to exit within this).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Budget for the final `DeleteNode`, retries included.
const DELETE_NODE_BUDGET: Duration = Duration::from_secs(5);

/// The least time a ClientApp gets, even when the message's TTL says less (clocks of the
/// ServerApp's and this machine may disagree by a few seconds).
const MIN_CLIENTAPP_TIME: Duration = Duration::from_secs(10);

/// Runs whose `Run` and `Context` are kept; the least recently used beyond this is forgotten
/// (its next message fetches the run again and starts from a fresh context).
pub const MAX_CACHED_RUNS: usize = 64;

/// FABs kept in memory by hash. FABs can be large and runs usually share a few.
pub const MAX_CACHED_FABS: usize = 8;

/// Why a SuperNode stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The ClientAppIo address could not be bound (the reference's wording).
    #[error("Port in server address {address} is already in use")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The ClientAppIo API server ended although no shutdown was asked for.
    #[error("ClientAppIo API server stopped unexpectedly: {0}")]
    ClientAppIoStopped(String),
    /// The Fleet channel could not be configured.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// `--metrics-address` could not be bound.
    #[error("--metrics-address {address}: cannot listen: {source}")]
    Metrics {
        /// The address.
        address: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A Fleet call failed for good: the SuperLink stayed unreachable past the retry limits, or
    /// answered with a status the reference does not retry.
    #[error("lost the SuperLink")]
    Fleet(#[from] CallError),
}

/// Runs a SuperNode until `shutdown` completes (then: stop the ClientApp, `DeleteNode`,
/// `Ok(())`) or the SuperLink is lost (`Err`, without `DeleteNode`, as the reference does).
/// Fleet requests are signed with node authentication when the config has keys.
///
/// # Errors
///
/// See [`NodeError`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    run_operated(config, Operations::default(), shutdown).await
}

/// What a SuperNode exposes to operators beside its work (flower-rs flags, not the
/// reference's).
#[derive(Clone, Debug, Default)]
pub struct Operations {
    /// `--metrics-address`: where `/metrics` is served, if anywhere.
    pub metrics_address: Option<flwr_core::Address>,
}

/// [`run`] with the operator-facing extras of `operations`.
///
/// # Errors
///
/// See [`NodeError`].
pub async fn run_operated(
    config: Config,
    operations: Operations,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let signer: Arc<dyn RequestSigner> = match &config.auth {
        Some(keys) if keys.mode == NodeAuthMode::Hardened => {
            Arc::new(NodeAuth::hardened(keys.private.clone(), &keys.public))
        }
        Some(keys) => Arc::new(NodeAuth::new(keys.private.clone(), &keys.public)),
        None => Arc::new(Unsigned),
    };
    run_node(config, operations, signer, shutdown).await
}

/// [`run`] with an explicit [`RequestSigner`].
///
/// # Errors
///
/// See [`NodeError`].
pub async fn run_with_signer(
    config: Config,
    signer: Arc<dyn RequestSigner>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    run_node(config, Operations::default(), signer, shutdown).await
}

async fn run_node(
    config: Config,
    operations: Operations,
    signer: Arc<dyn RequestSigner>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    log_start(&config);
    let listener = TcpListener::bind(config.clientappio_address.to_string())
        .await
        .map_err(|source| NodeError::Bind {
            address: config.clientappio_address.to_string(),
            source,
        })?;
    let metrics_listener = bind_metrics(&operations).await?;
    let node_metrics = NodeMetrics::default();
    // NOT_SERVING until ClientAppIo serves.
    let health = Health::new(&[flwr_proto::client_app_io_server::SERVICE_NAME]).await;
    let io_stop = CancellationToken::new();
    let (grpc_metrics, _metrics_server) = match metrics_listener {
        Some(listener) => {
            let (grpc, served) = serve_metrics(listener, &node_metrics, &io_stop);
            (Some(grpc), Some(served))
        }
        None => (None, None),
    };
    let warm_clientapp = config.isolation == Isolation::Subprocess
        && config.clientapp_lifetime == ClientAppLifetime::Warm;
    let exchange = Arc::new(if warm_clientapp {
        Exchange::warm(warm::HOLD_BOUND)
    } else {
        Exchange::new()
    });
    let observed = clientappio::Observed {
        health: health.service(),
        grpc: grpc_metrics,
    };
    let mut io_server = spawn(
        "clientappio",
        clientappio::serve(
            listener,
            Arc::clone(&exchange),
            config.max_message_size,
            observed,
            io_stop.clone(),
        ),
    );
    health.set_serving().await;
    tracing::info!(
        "ClientAppIo API listening on {} (isolation: {:?})",
        config.clientappio_address,
        config.isolation
    );

    let mut supernode = SuperNode::new(config, signer, exchange, node_metrics, warm_clientapp)?;
    let outcome = match supernode
        .serve_until(&mut io_server, &health, shutdown)
        .await
    {
        Ending::Loop(outcome) => outcome,
        Ending::ClientAppIoStopped(error) => return Err(error),
    };
    health.set_not_serving().await;
    supernode.heartbeat = None;
    if outcome.is_ok() {
        supernode.unregister().await;
    }
    if let Some(warm) = supernode.warm.take() {
        warm.shutdown(SHUTDOWN_GRACE).await;
    }
    tracing::info!("Disconnect and shut down");
    io_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(2), io_server)
        .await
        .is_err()
    {
        tracing::warn!("ClientAppIo server did not stop within 2 s");
    }
    outcome
}

/// Logs the start and the security settings: the channel to the SuperLink, node
/// authentication.
fn log_start(config: &Config) {
    tracing::info!("Starting Flower SuperNode");
    match &config.tls {
        Tls::Insecure => tracing::warn!(
            "Option `--insecure` was set. Starting insecure HTTP channel to {}.",
            config.superlink
        ),
        Tls::SystemRoots => tracing::warn!(
            "Both `--insecure` and `--root-certificates` were not set. Using system certificates."
        ),
        Tls::RootCertificates(_) => {}
    }
    let Some(keys) = &config.auth else {
        return;
    };
    tracing::info!(
        "Node authentication enabled with public key {}",
        keys.public.fingerprint()
    );
    if keys.mode == NodeAuthMode::Hardened {
        tracing::info!(
            "Node authentication hardened: tokens are bound to method, time and counter \
             (needs our SuperLink with --node-auth-mode hardened)"
        );
    }
}

/// Binds `--metrics-address`, if given.
async fn bind_metrics(operations: &Operations) -> Result<Option<TcpListener>, NodeError> {
    let Some(address) = &operations.metrics_address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address.to_string())
        .await
        .map_err(|source| NodeError::Metrics {
            address: address.to_string(),
            source,
        })?;
    Ok(Some(listener))
}

/// Serves the node's Prometheus metrics on `listener` until `stop` is cancelled; returns the
/// gRPC counters that the ClientAppIo server updates.
fn serve_metrics(
    listener: TcpListener,
    node_metrics: &NodeMetrics,
    stop: &CancellationToken,
) -> (flwr_runtime::metrics::GrpcMetrics, TaskHandle<()>) {
    let mut metrics = flwr_runtime::metrics::Metrics::new();
    let grpc = flwr_runtime::metrics::GrpcMetrics::register(metrics.registry_mut());
    node_metrics.register(metrics.registry_mut());
    let served = flwr_runtime::metrics::serve(listener, Arc::new(metrics), stop.child_token());
    (grpc, spawn("metrics", served))
}

/// How serving ended.
enum Ending {
    /// The main loop ended, by itself or after a shutdown: the node's outcome, to be returned
    /// after unregistering and stopping.
    Loop(Result<(), NodeError>),
    /// The ClientAppIo server stopped although nothing asked it to: returned at once.
    ClientAppIoStopped(NodeError),
}

/// A run's context as kept across its messages (§11.3).
#[derive(Debug)]
struct RunContext {
    context: Context,
    initial_run_config: HashMap<String, Scalar>,
}

/// Why a run's FAB is not at hand.
#[derive(Debug)]
enum FabFailure {
    /// `GetFab` failed; handled like any failed call.
    Call(CallError),
    /// The FAB came but may not be run; answered with a `LOAD_CLIENT_APP_EXCEPTION` reply.
    Unusable(UnusableFab),
}

impl From<CallError> for FabFailure {
    fn from(error: CallError) -> Self {
        Self::Call(error)
    }
}

impl From<UnusableFab> for FabFailure {
    fn from(error: UnusableFab) -> Self {
        Self::Unusable(error)
    }
}

/// Why a fetched FAB may not be run.
#[derive(Debug, thiserror::Error)]
enum UnusableFab {
    /// Its hash or its `pyproject.toml` is wrong.
    #[error(transparent)]
    Fab(#[from] flwr_core::FabError),
    /// Installing it was refused (unsafe paths, or files that do not match its listing).
    #[error(transparent)]
    Install(#[from] install::InstallError),
}

/// A fetched, verified FAB with its metadata.
#[derive(Debug)]
struct CachedFab {
    fab: Fab,
    metadata: FabMetadata,
}

/// How handling one message ended, when it did not produce outputs.
#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the ClientApp exited without pushing outputs")]
    MissingOutputs,
    #[error("no ClientApp pushed outputs within {0:?}")]
    TimedOut(Duration),
    #[error("shutting down")]
    Cancelled,
    #[error(transparent)]
    Busy(#[from] clientappio::Busy),
}

impl ExecError {
    /// The error reply's reason, in the reference's format where it has one.
    fn reason(&self) -> String {
        match self {
            Self::Launch(error) => error.reason(),
            Self::MissingOutputs => exception_reason(
                "ValueError",
                "ClientAppOutputs not set before calling `get_outputs`.",
            ),
            Self::TimedOut(after) => exception_reason(
                "TimeoutError",
                &format!(
                    "no ClientApp returned outputs within {} seconds",
                    after.as_secs_f64()
                ),
            ),
            Self::Cancelled | Self::Busy(_) => exception_reason("RuntimeError", &self.to_string()),
        }
    }
}

/// Whether the loop goes on after a failed call.
enum Flow {
    Continue,
    Stop,
}

struct SuperNode {
    config: Config,
    fleet: Fleet,
    exchange: Arc<Exchange>,
    launcher: Launcher,
    /// The warm ClientApp's supervisor (subprocess isolation, `--clientapp-lifetime warm`).
    warm: Option<WarmApp>,
    flwr_home: std::path::PathBuf,
    cancel: CancellationToken,
    node: Option<Node>,
    heartbeat: Option<TaskHandle<()>>,
    beats_tx: mpsc::Sender<Beat>,
    beats_rx: mpsc::Receiver<Beat>,
    metrics: NodeMetrics,
    /// Successful `CreateNode`s so far; every one after the first is a reconnect.
    registrations: u64,
    runs: Lru<u64, Run>,
    fabs: Lru<String, Arc<CachedFab>>,
    contexts: Lru<u64, RunContext>,
}

impl SuperNode {
    /// A SuperNode that talks to `config.superlink` through `signer` and hands messages to
    /// ClientApps through `exchange`; with `warm_clientapp`, the warm ClientApp starts now.
    fn new(
        config: Config,
        signer: Arc<dyn RequestSigner>,
        exchange: Arc<Exchange>,
        metrics: NodeMetrics,
        warm_clientapp: bool,
    ) -> Result<Self, NodeError> {
        let cancel = CancellationToken::new();
        let fleet = Fleet::connect(
            &config.superlink,
            &config.tls,
            signer,
            config.retry,
            cancel.clone(),
        )?
        .with_max_message_size(config.max_message_size)
        .with_retry_counter(metrics.retries.clone());
        let (beats_tx, beats_rx) = mpsc::channel(4);
        let launcher = Launcher::new(
            config.clientapp_program.clone(),
            &config.clientappio_address,
            config.flwr_dir.clone(),
        )
        .with_max_message_size(config.max_message_size);
        let warm = warm_clientapp.then(|| {
            WarmApp::start(
                launcher.clone(),
                Arc::clone(&exchange),
                cancel.child_token(),
            )
        });
        Ok(Self {
            flwr_home: flwr_runtime::home::flwr_home(config.flwr_dir.as_deref()),
            config,
            fleet,
            exchange,
            launcher,
            warm,
            cancel,
            node: None,
            heartbeat: None,
            beats_tx,
            beats_rx,
            metrics,
            registrations: 0,
            runs: Lru::new(MAX_CACHED_RUNS),
            fabs: Lru::new(MAX_CACHED_FABS),
            contexts: Lru::new(MAX_CACHED_RUNS),
        })
    }

    /// Runs the main loop until it ends, `shutdown` resolves (the current ClientApp is
    /// stopped, the loop gets [`SHUTDOWN_GRACE`]) or the ClientAppIo server `io_server` ends.
    async fn serve_until(
        &mut self,
        io_server: &mut TaskHandle<Result<(), tonic::transport::Error>>,
        health: &Health,
        shutdown: impl Future<Output = ()>,
    ) -> Ending {
        let cancel = self.cancel.clone();
        let main = self.main_loop();
        tokio::pin!(main);
        tokio::select! {
            outcome = &mut main => Ending::Loop(outcome),
            // Nothing asked the ClientAppIo server to stop: without it no ClientApp can be
            // served, so the SuperNode must fail rather than idle on.
            ended = io_server => {
                cancel.cancel();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut main).await;
                Ending::ClientAppIoStopped(NodeError::ClientAppIoStopped(match ended {
                    Ok(Ok(())) => "it stopped".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(join) => join.to_string(),
                }))
            }
            () = shutdown => {
                health.set_not_serving().await;
                tracing::info!("Shutting down: stopping the current ClientApp, if any");
                cancel.cancel();
                match tokio::time::timeout(SHUTDOWN_GRACE, &mut main).await {
                    Ok(outcome) => Ending::Loop(outcome),
                    Err(_) => {
                        tracing::warn!("main loop did not stop within {SHUTDOWN_GRACE:?}; abandoning it");
                        Ending::Loop(Ok(()))
                    }
                }
            }
        }
    }

    /// `DeleteNode` for the registered node, if any, within [`DELETE_NODE_BUDGET`]; a failure
    /// is logged only (the SuperLink forgets the node when its heartbeats stop).
    async fn unregister(&self) {
        let Some(node) = &self.node else {
            return;
        };
        let fleet = self.fleet.with_cancel(CancellationToken::new());
        match tokio::time::timeout(DELETE_NODE_BUDGET, fleet.delete_node(node)).await {
            Ok(Ok(())) => {
                self.metrics.registered.set(0);
                tracing::info!("Unregistered node {}", node.node_id);
            }
            Ok(Err(error)) => tracing::warn!("DeleteNode failed: {error}"),
            Err(_) => {
                tracing::warn!("DeleteNode did not complete within {DELETE_NODE_BUDGET:?}")
            }
        }
    }

    /// Polls and handles messages until cancelled (`Ok`) or the SuperLink is lost (`Err`).
    async fn main_loop(&mut self) -> Result<(), NodeError> {
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            while let Ok(beat) = self.beats_rx.try_recv() {
                self.on_beat(beat);
            }
            let node = match self.node {
                Some(node) => node,
                None => match self.register().await? {
                    Some(node) => node,
                    None => return Ok(()),
                },
            };
            let pulled = match self.fleet.pull_task_ins(&node).await {
                Ok(pulled) => pulled,
                Err(error) => match self.on_call_error(error, None)? {
                    Flow::Continue => {
                        self.idle().await;
                        continue;
                    }
                    Flow::Stop => return Ok(()),
                },
            };
            match pulled.task_ins {
                Some(ins) => {
                    let task_id = ins.task_id.clone();
                    let Some(instruction) = usable_message(ins, node.node_id) else {
                        tracing::debug!(
                            task_id,
                            "dropping an instruction that is not for this node or has no content"
                        );
                        self.idle().await;
                        continue;
                    };
                    if let Flow::Stop = self.handle(node, instruction).await? {
                        return Ok(());
                    }
                }
                // The SuperLink waited for us: nothing came, ask again at once.
                None if pulled.held => {}
                None => self.idle().await,
            }
        }
    }

    /// `CreateNode` and a fresh heartbeat; `None` when cancelled.
    async fn register(&mut self) -> Result<Option<Node>, NodeError> {
        let node = match self.fleet.create_node().await {
            Ok(node) => node,
            Err(CallError::Cancelled(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        tracing::info!("Registered with the SuperLink as node {}", node.node_id);
        if self.registrations > 0 {
            self.metrics.reconnects.inc();
        }
        self.registrations += 1;
        self.metrics.registered.set(1);
        self.node = Some(node);
        self.heartbeat = Some(spawn(
            "heartbeat",
            heartbeat::run(
                self.fleet.clone(),
                node,
                self.beats_tx.clone(),
                self.cancel.child_token(),
            ),
        ));
        Ok(Some(node))
    }

    fn on_beat(&mut self, beat: Beat) {
        let Beat::Forgotten(node_id) = beat;
        if self.node.is_some_and(|node| node.node_id == node_id) {
            tracing::warn!("Node {node_id} is unknown to the SuperLink; registering again");
            self.node = None;
            self.heartbeat = None;
            self.metrics.registered.set(0);
        }
    }

    /// The idle pause between polls, cut short by shutdown or a heartbeat report.
    async fn idle(&mut self) {
        tokio::select! {
            () = tokio::time::sleep(IDLE_POLL) => {}
            () = self.cancel.cancelled() => {}
            Some(beat) = self.beats_rx.recv() => self.on_beat(beat),
        }
    }

    /// Sorts a failed call into "carry on" and "stop", or a fatal error.
    /// A run that is not running any more will not come back: its cached run and context go.
    fn on_call_error(&mut self, error: CallError, run_id: Option<u64>) -> Result<Flow, NodeError> {
        match error {
            CallError::Cancelled(_) => Ok(Flow::Stop),
            CallError::RunNotRunning { .. } => {
                if let Some(run_id) = run_id {
                    self.runs.remove(&run_id);
                    self.contexts.remove(&run_id);
                }
                let run = run_id.map_or_else(|| "?".to_owned(), |id| id.to_string());
                tracing::info!(
                    "SuperNode aborted sending the reply message. Run ID {run} is not in `RUNNING` status."
                );
                Ok(Flow::Continue)
            }
            error => Err(error.into()),
        }
    }

    /// Handles one instruction end to end.
    async fn handle(&mut self, node: Node, instruction: Parts) -> Result<Flow, NodeError> {
        let incoming = instruction.metadata.clone();
        let message = Message::from(instruction);
        let run_id = incoming.run_id;
        if !incoming.group_id.is_empty() {
            tracing::info!("[RUN {run_id}, ROUND {}]", incoming.group_id);
        }
        tracing::info!(
            "Received: {} message {}",
            incoming.message_type,
            incoming.message_id
        );
        self.metrics.received.inc();
        if incoming.message_type == message::RECONNECT_MESSAGE_TYPE {
            tracing::warn!("Ignoring a legacy reconnect message");
            return Ok(Flow::Continue);
        }

        let run = match self.run(node, run_id).await {
            Ok(Some(run)) => run,
            Ok(None) => {
                tracing::warn!("The SuperLink does not know run {run_id}; dropping the message");
                return Ok(Flow::Continue);
            }
            Err(error) => return self.on_call_error(error, Some(run_id)),
        };
        let reply = match self.fab(node, &run).await {
            Err(FabFailure::Call(error)) => return self.on_call_error(error, Some(run_id)),
            Err(FabFailure::Unusable(reason)) => {
                tracing::error!("Cannot use the FAB of run {run_id}: {reason}");
                error_reply(
                    &incoming,
                    LOAD_CLIENT_APP_EXCEPTION,
                    LOAD_CLIENT_APP_REASON.to_owned(),
                    unix_now(),
                )
            }
            Ok(fab) => match self.execute(node, message, &incoming, run, fab).await? {
                Some(reply) => reply,
                None => return Ok(Flow::Continue),
            },
        };
        if self.cancel.is_cancelled() {
            return Ok(Flow::Stop);
        }
        match self.fleet.push_task_res(&node, task_res(reply)).await {
            Ok(()) => {
                tracing::info!("Sent reply");
                Ok(Flow::Continue)
            }
            Err(error) => self.on_call_error(error, Some(run_id)),
        }
    }

    /// `GetRun`, cached (see [`MAX_CACHED_RUNS`]); `None` for an unknown run.
    async fn run(&mut self, node: Node, run_id: u64) -> Result<Option<Run>, CallError> {
        if let Some(run) = self.runs.get_mut(&run_id) {
            return Ok(Some(run.clone()));
        }
        let Some(run) = self.fleet.get_run(&node, run_id).await? else {
            return Ok(None);
        };
        self.runs.insert(run_id, run.clone());
        Ok(Some(run))
    }

    /// The run's FAB (`None` for a run without one), fetched once per hash, verified and
    /// installed.
    async fn fab(&mut self, node: Node, run: &Run) -> Result<Option<Arc<CachedFab>>, FabFailure> {
        if run.fab_hash.is_empty() {
            return Ok(None);
        }
        if let Some(cached) = self.fabs.get_mut(&run.fab_hash) {
            return Ok(Some(Arc::clone(cached)));
        }
        let fab = self.fleet.get_fab(&node, &run.fab_hash, run.run_id).await?;
        flwr_core::fab::verify_hash(&fab.content, &run.fab_hash).map_err(UnusableFab::Fab)?;
        let metadata = FabMetadata::from_fab(&fab.content).map_err(UnusableFab::Fab)?;
        let content = fab.content.clone();
        let home = self.flwr_home.clone();
        // Blocking file I/O. A FAB that is unsafe or does not match its listing is refused (and
        // not cached): no ClientApp may run it. A local write failure is only logged because
        // `flwr-clientapp` installs the FAB again itself and reports its own failure.
        match tokio::task::spawn_blocking(move || install::install(&content, &home)).await {
            Ok(Ok(dir)) => {
                tracing::info!("FAB {} installed in {}", metadata.fab_id(), dir.display())
            }
            Ok(Err(error)) if error.is_refusal() => return Err(UnusableFab::Install(error).into()),
            Ok(Err(error)) => {
                tracing::warn!("Could not install FAB {}: {error}", metadata.fab_id())
            }
            Err(error) => tracing::warn!("FAB installation task failed: {error}"),
        }
        let cached = Arc::new(CachedFab { fab, metadata });
        self.fabs.insert(run.fab_hash.clone(), Arc::clone(&cached));
        Ok(Some(cached))
    }

    /// Runs the ClientApp for `message`; returns the reply to send, or `None` when there is
    /// nothing to send (invalid reply, or shutting down).
    async fn execute(
        &mut self,
        node: Node,
        message: Message,
        incoming: &Metadata,
        mut run: Run,
        fab: Option<Arc<CachedFab>>,
    ) -> Result<Option<Parts>, NodeError> {
        let run_id = incoming.run_id;
        if let Some(cached) = &fab {
            run.fab_id = cached.metadata.fab_id();
            run.fab_version = cached.metadata.version.clone();
        }
        if self.contexts.get_mut(&run_id).is_none() {
            let run_config = fab
                .as_ref()
                .map(|cached| cached.metadata.run_config(&run.override_config))
                .unwrap_or_default();
            let fresh = RunContext {
                context: Context {
                    run_id,
                    node_id: node.node_id,
                    node_config: self.config.node_config.clone(),
                    state: Some(RecordSet::default()),
                    run_config: run_config.clone(),
                },
                initial_run_config: run_config,
            };
            self.contexts.insert(run_id, fresh);
        }
        let Some(run_context) = self.contexts.get_mut(&run_id) else {
            // Just inserted; only a zero-capacity map could lose it, and capacities are >= 1.
            return Ok(None);
        };
        // After a re-registration the node id changed; the state carries over.
        run_context.context.node_id = node.node_id;
        let inputs = Inputs {
            message,
            context: run_context.context.clone(),
            run,
            fab: fab.map(|cached| cached.fab.clone()),
            token: rand::random::<u64>(),
        };
        let started = tokio::time::Instant::now();
        let outcome = self.exchange_outputs(inputs, incoming).await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(outputs) => {
                let reply = match validate_reply(outputs.message, incoming) {
                    Ok(reply) => reply,
                    Err(invalid) => {
                        self.metrics.failed.inc();
                        tracing::error!("Invalid out message ({invalid}); not sending it");
                        return Ok(None);
                    }
                };
                self.metrics.completed.inc();
                if let Some(run_context) = self.contexts.get_mut(&run_id) {
                    let mut context = outputs.context;
                    // The reference leaves its main loop here; we keep serving and only refuse
                    // the change, since one misbehaving app should not take the node down.
                    if context.run_config != run_context.initial_run_config {
                        tracing::error!(
                            "The ClientApp changed the run_config of run {run_id}, which is not \
                             allowed; keeping the original"
                        );
                        context.run_config = run_context.initial_run_config.clone();
                    }
                    run_context.context = context;
                }
                Ok(Some(reply))
            }
            Err(ExecError::Cancelled | ExecError::Launch(LaunchError::Cancelled)) => {
                tracing::info!(
                    "Abandoned message {} because of shutdown",
                    incoming.message_id
                );
                Ok(None)
            }
            Err(error) => {
                self.metrics.failed.inc();
                tracing::error!("ClientApp raised an exception: {error}");
                Ok(Some(error_reply(
                    incoming,
                    CLIENT_APP_RAISED_EXCEPTION,
                    error.reason(),
                    unix_now(),
                )))
            }
        }
    }

    /// Primes the ClientAppIo exchange, runs or awaits the ClientApp, and collects its outputs.
    /// The exchange is reset however this ends.
    async fn exchange_outputs(
        &self,
        inputs: Inputs,
        incoming: &Metadata,
    ) -> Result<Outputs, ExecError> {
        let budget = Duration::try_from_secs_f64(remaining_ttl(incoming, unix_now()))
            .unwrap_or(Duration::ZERO)
            .max(MIN_CLIENTAPP_TIME);
        if let Some(warm) = &self.warm {
            return self
                .exchange_warm(warm, inputs, incoming.run_id, budget)
                .await;
        }
        let token = inputs.token;
        let subprocess = self.config.isolation == Isolation::Subprocess;
        self.exchange.set_inputs(inputs, subprocess)?;
        let reset = ResetOnDrop(&self.exchange);
        if subprocess {
            let ran = self.launcher.run(token, budget, &self.cancel).await;
            match &ran {
                Ok(()) => self.metrics.exited(&std::process::ExitStatus::default()),
                Err(LaunchError::Failed { status, .. }) => self.metrics.exited(status),
                Err(_) => {}
            }
            ran?;
        } else {
            tokio::select! {
                () = self.exchange.outputs_pushed() => {}
                () = tokio::time::sleep(budget) => return Err(ExecError::TimedOut(budget)),
                () = self.cancel.cancelled() => return Err(ExecError::Cancelled),
            }
        }
        let outputs = self.exchange.finish();
        drop(reset);
        outputs.ok_or(ExecError::MissingOutputs)
    }

    /// [`Self::exchange_outputs`] through the warm ClientApp: the message goes to the run's
    /// process (started or replaced by the supervisor as needed). A process that exits before
    /// pulling the message hands it on to the next one, once; one that exits after pulling it
    /// gets the reply a crashed per-message ClientApp gets; one that outlives `budget` is
    /// replaced.
    async fn exchange_warm(
        &self,
        warm: &WarmApp,
        inputs: Inputs,
        run_id: u64,
        budget: Duration,
    ) -> Result<Outputs, ExecError> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut lease = self.lease(warm, run_id, deadline, budget).await?;
        self.exchange.set_inputs(inputs, false)?;
        let reset = ResetOnDrop(&self.exchange);
        let mut handed_on = false;
        loop {
            tokio::select! {
                biased;
                () = self.exchange.outputs_pushed() => break,
                exit = lease.exited() => {
                    // Outputs pushed just before the exit still count.
                    if let Some(Exit::Status(status)) = &exit {
                        self.metrics.exited(status);
                    }
                    if self.exchange.has_outputs() {
                        break;
                    }
                    if !handed_on && self.exchange.reprime() {
                        handed_on = true;
                        tracing::info!(
                            "The ClientApp process exited before taking the message; handing it \
                             to a new one"
                        );
                        lease = self.lease(warm, run_id, deadline, budget).await?;
                        continue;
                    }
                    return Err(match exit {
                        Some(Exit::Status(status)) if status.success() => ExecError::MissingOutputs,
                        Some(Exit::Status(status)) => ExecError::Launch(LaunchError::Failed {
                            command: lease.command().to_vec(),
                            status,
                        }),
                        Some(Exit::WaitFailed(error)) => ExecError::Launch(LaunchError::Wait(
                            std::io::Error::other(error),
                        )),
                        None if self.cancel.is_cancelled() => ExecError::Cancelled,
                        None => ExecError::Launch(LaunchError::SupervisorStopped),
                    });
                }
                () = tokio::time::sleep_until(deadline) => {
                    warm.replace(&lease).await;
                    return Err(ExecError::Launch(LaunchError::TimedOut {
                        command: lease.command().to_vec(),
                        after: budget,
                    }));
                }
                () = self.cancel.cancelled() => return Err(ExecError::Cancelled),
            }
        }
        let outputs = self.exchange.finish();
        drop(reset);
        outputs.ok_or(ExecError::MissingOutputs)
    }

    /// The warm process for a message of `run_id`, within the message's budget.
    async fn lease(
        &self,
        warm: &WarmApp,
        run_id: u64,
        deadline: tokio::time::Instant,
        budget: Duration,
    ) -> Result<Lease, ExecError> {
        tokio::select! {
            lease = warm.acquire(run_id) => Ok(lease?),
            () = tokio::time::sleep_until(deadline) => Err(ExecError::Launch(LaunchError::TimedOut {
                command: self.launcher.warm_command_line(),
                after: budget,
            })),
            () = self.cancel.cancelled() => Err(ExecError::Cancelled),
        }
    }
}

/// Clears the ClientAppIo exchange however handling a message ends (success, error, or the
/// future being dropped on shutdown), so the next message can always be primed.
struct ResetOnDrop<'a>(&'a Exchange);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
