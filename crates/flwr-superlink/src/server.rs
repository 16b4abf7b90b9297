//! Building and running the SuperLink: [`SuperLink::bind`] opens the stores and binds every
//! port (nothing serves yet, so a failure leaves nothing half-started), [`SuperLink::run`]
//! serves until the shutdown future resolves, then drains.
//!
//! Transport settings follow PROTOCOL.md §2.1: 512 MiB messages both ways, 1000 concurrent
//! streams, HTTP/2 keep-alive pings after 210 s; TLS (rustls, ALPN `h2`) on Fleet and Exec unless
//! `--insecure`; ServerAppIo always plaintext.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use flwr_core::{Address, Host};
use flwr_proto::exec_server::ExecServer;
use flwr_proto::fleet_server::FleetServer;
use flwr_proto::server_app_io_server::ServerAppIoServer;
use flwr_runtime::health::Health;
use flwr_runtime::limits;
use flwr_runtime::listener::{self, ConnectionBudget, Limits, ListenerSettings, ServerTls};
use flwr_runtime::metrics::GrpcMetrics;
use flwr_runtime::task::{self, TaskHandle};
use flwr_state::{
    Change, ChangeSink, FabStore, Ffs, InMemoryLinkState, LinkState, PostgresLinkState,
    SqliteLinkState, StateError, SystemClock,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic::transport::Server;

use crate::config::{Config, Database, Isolation, NodeAuthFiles};
use crate::fleet_auth::{self, FleetAuth, NodeAuthenticator};
use crate::launcher::{self, LauncherHandle, LauncherSettings};
use crate::metrics::{self, LauncherCounters, EXEC_METHODS, FLEET_METHODS, SERVERAPPIO_METHODS};
use crate::service::exec::ExecService;
use crate::service::fleet::{FleetHandler, FleetService};
use crate::service::serverappio::ServerAppIoService;
use crate::service::Stores;
use crate::shared_response::SharedPullTaskRes;
use crate::wakeups::Topic;

/// How long in-flight calls may take to finish after shutdown starts (the reference's 1 s
/// `grpc_server.stop(grace=1)`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Server-initiated HTTP/2 PING after this much idle time (`grpc.keepalive_time_ms`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(210);
/// `grpc.max_concurrent_streams` and `maximum_concurrent_rpcs` of the reference.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// Why the SuperLink could not start or stopped with an error. Messages name the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound for another reason than the port being taken.
    #[error("--{flag}: cannot listen on {address}: {source}")]
    Bind {
        /// The address flag without dashes.
        flag: &'static str,
        /// The address.
        address: Address,
        /// The OS error.
        source: io::Error,
    },
    /// The LinkState could not be opened.
    #[error("--database {database}: {reason}")]
    Database {
        /// The flag value.
        database: String,
        /// What failed.
        reason: String,
    },
    /// A node-authentication file cannot be used.
    #[error("--{flag} {}: {reason}", .path.display())]
    NodeAuth {
        /// The flag without dashes.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The port is taken (the reference's message).
    #[error("--{flag}: Port in server address {address} is already in use.")]
    PortInUse {
        /// The address flag without dashes.
        flag: &'static str,
        /// The address.
        address: Address,
    },
    /// A gRPC server failed while running.
    #[error("{api} API server failed: {source}")]
    Serve {
        /// `Exec`, `ServerAppIo` or `Fleet`.
        api: &'static str,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The storage directory cannot be created.
    #[error("--storage-dir {}: {source}", .path.display())]
    StorageDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An API server ended although no shutdown was asked for.
    #[error("{api} API server stopped unexpectedly")]
    Stopped {
        /// `Exec`, `ServerAppIo` or `Fleet`.
        api: &'static str,
    },
    /// The certificate or key was refused by the TLS stack.
    #[error("--ssl-certfile/--ssl-keyfile: unusable TLS identity: {0}")]
    Tls(#[source] listener::TlsError),
}

/// A SuperLink with its stores open and its ports bound, not serving yet.
#[derive(Debug)]
pub struct SuperLink {
    config: Config,
    stores: Stores,
    serverappio: TcpListener,
    fleet: TcpListener,
    exec: TcpListener,
    /// `--metrics-address`, bound.
    metrics: Option<TcpListener>,
    /// `--health-server-address`, bound.
    health: Option<TcpListener>,
    serverapp_program: std::path::PathBuf,
    launcher_poll_interval: Duration,
    node_auth: Option<Arc<NodeAuthenticator>>,
    tls: Option<ServerTls>,
}

impl SuperLink {
    /// Binds the Exec, ServerAppIo and Fleet ports and opens the LinkState and FAB storage.
    ///
    /// # Errors
    ///
    /// See [`StartError`]; on error every port bound so far is released.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let node_auth = config.node_auth.as_ref().map(load_node_auth).transpose()?;
        // Validate the TLS identity with the TLS stack before binding anything.
        let tls = config
            .tls
            .as_ref()
            .map(|tls| listener::tls_acceptor(&tls.cert, &tls.key))
            .transpose()
            .map_err(StartError::Tls)?;
        let exec = listen("exec-api-address", &config.exec_address).await?;
        let serverappio = listen("serverappio-api-address", &config.serverappio_address).await?;
        let fleet = listen("fleet-api-address", &config.fleet_address).await?;
        let metrics = match &config.metrics_address {
            Some(address) => Some(listen("metrics-address", address).await?),
            None => None,
        };
        let health = match &config.health_address {
            Some(address) => Some(listen("health-server-address", address).await?),
            None => None,
        };
        std::fs::create_dir_all(&config.storage_dir).map_err(|source| StartError::StorageDir {
            path: config.storage_dir.clone(),
            source,
        })?;
        let (state, ffs) = open_state(&config.database, &config.storage_dir).await?;
        let stores = Stores::new(state, ffs);
        Ok(Self {
            config,
            stores,
            serverappio,
            fleet,
            exec,
            metrics,
            health,
            serverapp_program: "flwr-serverapp".into(),
            launcher_poll_interval: launcher::POLL_INTERVAL,
            node_auth,
            tls,
        })
    }

    /// Feeds what other SuperLink replicas change in a shared store (PostgreSQL) into this
    /// process: their TaskIns and replies wake the pulls held here, their new runs wake the
    /// launcher. A store only this process uses has nothing to tell.
    async fn hear_other_replicas(&self, launcher: &LauncherHandle) -> Result<(), StartError> {
        if !self.stores.state.shared() {
            return Ok(());
        }
        let events = Arc::clone(&self.stores.events);
        let launcher = launcher.clone();
        let sink: ChangeSink = Arc::new(move |change| match change {
            Change::NodeTasks(node_id) => events.publish(Topic::Node(node_id)),
            Change::Run(run_id) => events.publish(Topic::Run(run_id)),
            Change::RunPending => launcher.run_pending(),
        });
        let state = Arc::clone(&self.stores.state);
        let watched = tokio::task::spawn_blocking(move || state.watch(sink))
            .await
            .map_err(|error| StateError::Postgres(error.to_string()))
            .and_then(|watched| watched);
        watched.map_err(|error| StartError::Database {
            database: match &self.config.database {
                Database::Postgres(url) => url.to_string(),
                _ => String::new(),
            },
            reason: format!(
                "cannot listen for other replicas' changes: {}",
                error_chain(&error)
            ),
        })
    }

    /// Uses `program` instead of `flwr-serverapp` (looked up on `PATH`) for launched
    /// ServerApps.
    pub fn with_serverapp_program(mut self, program: impl Into<std::path::PathBuf>) -> Self {
        self.serverapp_program = program.into();
        self
    }

    /// Looks for pending runs every `interval` instead of every 3 s (tests).
    pub fn with_launcher_poll_interval(mut self, interval: Duration) -> Self {
        self.launcher_poll_interval = interval;
        self
    }

    /// The bound Fleet API address.
    ///
    /// # Errors
    ///
    /// The OS cannot report the socket address.
    pub fn fleet_address(&self) -> io::Result<SocketAddr> {
        self.fleet.local_addr()
    }

    /// The bound ServerAppIo API address.
    ///
    /// # Errors
    ///
    /// The OS cannot report the socket address.
    pub fn serverappio_address(&self) -> io::Result<SocketAddr> {
        self.serverappio.local_addr()
    }

    /// The bound Exec API address.
    ///
    /// # Errors
    ///
    /// The OS cannot report the socket address.
    pub fn exec_address(&self) -> io::Result<SocketAddr> {
        self.exec.local_addr()
    }

    /// The bound `--metrics-address`, if any.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound `--health-server-address`, if any.
    pub fn health_address(&self) -> Option<SocketAddr> {
        self.health.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Warns when an API without authentication listens beyond loopback: whoever reaches
    /// ServerAppIo reads and writes every task, and whoever reaches Exec runs code on every
    /// SuperNode of the federation. The defaults (`0.0.0.0`) are the reference's and stay.
    fn warn_about_exposure(&self) {
        let exposed = [
            (
                "--serverappio-api-address",
                self.serverappio.local_addr(),
                "ServerAppIo API (no authentication, plaintext): anyone who can reach it can read \
                 and write every task and result of every run",
            ),
            (
                "--exec-api-address",
                self.exec.local_addr(),
                "Exec API (no user authentication): anyone who can reach it can StartRun, i.e. \
                 run code on every SuperNode of the federation",
            ),
        ];
        for (flag, address, what) in exposed {
            let Ok(address) = address else { continue };
            if !address.ip().to_canonical().is_loopback() {
                tracing::warn!(
                    "{flag} {address} listens beyond loopback and exposes the {what}; bind it to \
                     127.0.0.1 or restrict access with a firewall"
                );
            }
        }
    }

    /// The stores the services use (for tests and embedding).
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Serves Exec, ServerAppIo and Fleet (and launches ServerApps with `--isolation
    /// subprocess`) until `shutdown` resolves; then stops accepting, lets in-flight calls finish
    /// for [`SHUTDOWN_GRACE`], kills launched ServerApps and returns.
    ///
    /// # Errors
    ///
    /// A server failed while running ([`StartError::Serve`]).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        for warning in &self.config.warnings {
            tracing::warn!("{warning}");
        }
        self.warn_about_exposure();
        let stop = CancellationToken::new();
        // NOT_SERVING until every server below runs.
        let health = Health::new(&[
            flwr_proto::exec_server::SERVICE_NAME,
            flwr_proto::server_app_io_server::SERVICE_NAME,
            flwr_proto::fleet_server::SERVICE_NAME,
        ])
        .await;
        let launcher_counters = LauncherCounters::default();
        let (launcher, launcher_task) = self.start_launcher(launcher_counters.clone(), &stop);
        self.hear_other_replicas(&launcher).await?;
        let services = self.services(launcher);

        let budget = connection_budget(self.config.max_connections);
        let (grpc_metrics, metrics_server) = match self.metrics.take() {
            Some(listener) => {
                let (grpc, served) =
                    self.serve_metrics(listener, budget.clone(), launcher_counters, &stop);
                (Some(grpc), Some(served))
            }
            None => (None, None),
        };
        let grpc_metrics = grpc_metrics.as_ref();
        let mut apis = ApiServers {
            health: &health,
            limits: self.config.connection_limits,
            budget,
            stop: &stop,
            started: Vec::with_capacity(3),
        };
        let tls = self.tls.as_ref();
        apis.start(
            "Exec",
            format_args!(
                "Flower Deployment Engine: Starting Exec API on {}",
                self.config.exec_address
            ),
            route(grpc_metrics, "Exec", EXEC_METHODS, services.exec),
            self.exec,
            tls,
        );
        apis.start(
            "ServerAppIo",
            format_args!(
                "Flower ECE: Starting ServerAppIo API (gRPC-rere) on {}",
                self.config.serverappio_address
            ),
            route(
                grpc_metrics,
                "ServerAppIo",
                SERVERAPPIO_METHODS,
                services.serverappio,
            ),
            self.serverappio,
            None,
        );
        let (fleet_router, watcher) = fleet_router(
            services.fleet,
            services.fleet_handler,
            self.node_auth.as_ref(),
            &self.config,
            grpc_metrics,
            &stop,
        );
        apis.start(
            "Fleet",
            format_args!(
                "Flower ECE: Starting Fleet API (gRPC-rere) on {}",
                self.config.fleet_address
            ),
            fleet_router,
            self.fleet,
            tls,
        );
        // The plaintext health-only port outlives the APIs' drain, so that probes see
        // NOT_SERVING rather than a refused connection while calls finish.
        let health_stop = CancellationToken::new();
        let health_server = self
            .health
            .take()
            .map(|listener| apis.serve_health(listener, &health_stop));
        let mut servers = apis.started;
        health.set_serving().await;

        let outcome = serve_until(&mut servers, shutdown).await;

        // Load balancers stop sending new work before the servers stop taking it.
        health.set_not_serving().await;
        tracing::info!("SuperLink shutting down");
        // Held pulls answer now, so that draining does not wait for their bounds.
        self.stores.events.close();
        stop.cancel();
        drain(&mut servers).await;
        // Dropping the handles aborts whatever is still running.
        drop(servers);
        drop(watcher);
        health_stop.cancel();
        if let Some((_, server)) = health_server {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
        }
        drop(metrics_server);
        if let Some(launcher_task) = launcher_task {
            let _ = launcher_task.await;
        }
        outcome
    }

    /// Starts the ServerApp launcher with `--isolation subprocess`; with `process` ServerApps
    /// are started by someone else and there is no launcher task.
    fn start_launcher(
        &self,
        counters: LauncherCounters,
        stop: &CancellationToken,
    ) -> (LauncherHandle, Option<TaskHandle<()>>) {
        match self.config.isolation {
            Isolation::Subprocess => {
                let settings = LauncherSettings {
                    program: self.serverapp_program.clone(),
                    serverappio_address: self.config.serverappio_address.for_local_client(),
                    poll_interval: self.launcher_poll_interval,
                    max_message_size: self.config.max_message_size,
                };
                let (handle, task) = launcher::start(
                    Arc::clone(&self.stores.state),
                    settings,
                    counters,
                    stop.child_token(),
                );
                (handle, Some(task))
            }
            Isolation::Process => (LauncherHandle::disabled(), None),
        }
    }

    /// The gRPC services of the three APIs over the stores, with the configured message size.
    fn services(&self, launcher: LauncherHandle) -> Services {
        let max_message_size = self.config.max_message_size;
        let exec = ExecServer::new(ExecService::new(self.stores.clone(), launcher))
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size);
        let serverappio_service = Arc::new(
            ServerAppIoService::new(self.stores.clone())
                .with_unasked_hold(self.config.unasked_hold),
        );
        let serverappio = ServerAppIoServer::from_arc(Arc::clone(&serverappio_service))
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size);
        let serverappio =
            SharedPullTaskRes::new(serverappio, serverappio_service, max_message_size);
        let fleet_handler = Arc::new(
            FleetHandler::new(self.stores.clone()).with_unasked_hold(self.config.unasked_hold),
        );
        let fleet = FleetServer::new(FleetService::new(Arc::clone(&fleet_handler)))
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size);
        Services {
            exec,
            serverappio,
            fleet,
            fleet_handler,
        }
    }

    /// Serves the Prometheus metrics on `listener` until `stop` is cancelled; returns the
    /// per-API gRPC counters that the routers update.
    fn serve_metrics(
        &self,
        listener: TcpListener,
        budget: ConnectionBudget,
        launcher: LauncherCounters,
        stop: &CancellationToken,
    ) -> (GrpcMetrics, TaskHandle<()>) {
        let (grpc, registry) = metrics::build(metrics::Sources {
            stores: self.stores.clone(),
            budget,
            auth: self.node_auth.clone(),
            launcher,
        });
        let served = flwr_runtime::metrics::serve(listener, Arc::new(registry), stop.child_token());
        (grpc, task::spawn("metrics", served))
    }
}

/// Binds and serves with `config` until `shutdown` resolves: [`SuperLink::bind`] then
/// [`SuperLink::run`].
///
/// # Errors
///
/// See [`StartError`].
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    SuperLink::bind(config).await?.run(shutdown).await
}

/// A tonic server builder with the reference's transport settings. TLS is not tonic's: the
/// listener does the handshake, with a deadline (see [`flwr_runtime::listener`]).
fn builder() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS as usize)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
}

/// A router for `service`, counted as API `api` when metrics are on.
fn route<S>(
    metrics: Option<&GrpcMetrics>,
    api: &'static str,
    methods: &'static [&'static str],
    service: S,
) -> Router
where
    S: tower_service::Service<
            http::Request<BoxBody>,
            Response = http::Response<BoxBody>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    match metrics {
        Some(metrics) => builder().add_service(metrics.wrap(api, methods, service)),
        None => builder().add_service(service),
    }
}

/// The gRPC services of the three APIs, built and not yet routed.
struct Services {
    exec: ExecServer<ExecService>,
    serverappio: SharedPullTaskRes<ServerAppIoServer<ServerAppIoService>>,
    fleet: FleetServer<FleetService>,
    /// Shared with the node-authentication layer, which serves held pulls itself.
    fleet_handler: Arc<FleetHandler>,
}

/// What the API servers of one SuperLink share, and the servers started so far.
struct ApiServers<'a> {
    health: &'a Health,
    limits: Limits,
    budget: ConnectionBudget,
    stop: &'a CancellationToken,
    started: Vec<ServerTask>,
}

impl ApiServers<'_> {
    /// Logs `announcement`, then serves `router` with the health service beside it as `api` on
    /// `listener` (with `tls`, if any) until the stop token is cancelled. Health checks answer
    /// outside any layer of `router`, so without node authentication on Fleet.
    fn start(
        &mut self,
        api: &'static str,
        announcement: std::fmt::Arguments<'_>,
        router: Router,
        listener: TcpListener,
        tls: Option<&ServerTls>,
    ) {
        tracing::info!("{announcement}");
        let router = router.add_service(self.health.service());
        let server = serve_api(router, listener, self.settings(api, tls), self.stop);
        self.started.push(server);
    }

    /// Serves only the health service, plaintext, on `listener` until `stop` is cancelled.
    fn serve_health(&self, listener: TcpListener, stop: &CancellationToken) -> ServerTask {
        if let Ok(address) = listener.local_addr() {
            tracing::info!("Serving gRPC health checks (plaintext) on {address}");
        }
        serve_api(
            builder().add_service(self.health.service()),
            listener,
            self.settings("Health", None),
            stop,
        )
    }

    fn settings(&self, api: &'static str, tls: Option<&ServerTls>) -> ListenerSettings {
        ListenerSettings {
            api,
            tls: tls.cloned(),
            limits: self.limits,
            budget: self.budget.clone(),
        }
    }
}

/// The Fleet router. With node authentication, requests pass [`FleetAuth`] (which also serves
/// held pulls) and a task reloads the allow-list while the SuperLink runs; metrics count
/// outside that layer, so that refused requests are counted too.
fn fleet_router(
    fleet: FleetServer<FleetService>,
    handler: Arc<FleetHandler>,
    node_auth: Option<&Arc<NodeAuthenticator>>,
    config: &Config,
    metrics: Option<&GrpcMetrics>,
    stop: &CancellationToken,
) -> (Router, Option<TaskHandle<()>>) {
    let Some(auth) = node_auth else {
        return (route(metrics, "Fleet", FLEET_METHODS, fleet), None);
    };
    let watcher = config.node_auth.as_ref().map(|files| {
        let reload = fleet_auth::watch_allow_list(
            files.public_keys_csv.clone(),
            Arc::clone(auth),
            stop.clone().cancelled_owned(),
        );
        task::spawn("allow-list-watcher", reload)
    });
    let fleet =
        FleetAuth::new(fleet, Arc::clone(auth), config.max_message_size).serving_pulls(handler);
    (route(metrics, "Fleet", FLEET_METHODS, fleet), watcher)
}

/// Serves until `shutdown` resolves (`Ok`) or until a server ends, which nobody asked for:
/// whatever ended it, the SuperLink is no longer whole, and a supervisor must see a failure.
async fn serve_until(
    servers: &mut [ServerTask],
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let first_exit = futures::future::select_all(
        servers
            .iter_mut()
            .map(|(api, handle)| Box::pin(async move { (*api, handle.await) })),
    );
    tokio::select! {
        () = shutdown => Ok(()),
        ((api, result), _, _) = first_exit => Err(match result {
            Ok(Ok(())) => StartError::Stopped { api },
            Ok(Err(source)) => StartError::Serve { api, source },
            Err(join) => {
                tracing::error!(api, %join, "API server task ended abnormally");
                StartError::Stopped { api }
            }
        }),
    }
}

/// Lets the servers, whose stop token is cancelled, finish their in-flight calls for
/// [`SHUTDOWN_GRACE`], and warns when they do not.
async fn drain(servers: &mut [ServerTask]) {
    let drained = tokio::time::timeout(
        SHUTDOWN_GRACE,
        // A server that already ended was awaited before and must not be polled again.
        futures::future::join_all(
            servers
                .iter_mut()
                .filter(|(_, handle)| !handle.is_finished())
                .map(|(_, handle)| handle),
        ),
    )
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight calls did not finish within {SHUTDOWN_GRACE:?}; closing them");
    }
}

type ServerTask = (
    &'static str,
    TaskHandle<Result<(), tonic::transport::Error>>,
);

/// Serves `router` on `listener` until `stop` is cancelled, through the bounded accept loop.
fn serve_api(
    router: Router,
    listener: TcpListener,
    settings: ListenerSettings,
    stop: &CancellationToken,
) -> ServerTask {
    let api = settings.api;
    let connections = listener::incoming(listener, settings, stop.child_token());
    let served = router.serve_with_incoming_shutdown(connections, stop.clone().cancelled_owned());
    (api, task::spawn(api, served))
}

/// Raises the open-file limit as far as allowed and sizes the connection cap: `--max-connections`
/// when given, else what the descriptors allow.
fn connection_budget(max_connections: Option<usize>) -> ConnectionBudget {
    let soft = match limits::raise_open_file_limit() {
        Ok(limit) => {
            if limit.soft > limit.before {
                tracing::info!(
                    "Raised the open-file limit from {} to {}",
                    limit.before,
                    limit.soft
                );
            }
            limit.soft
        }
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            limits::open_file_limit().unwrap_or(1024)
        }
    };
    let budget = match max_connections {
        Some(max) => ConnectionBudget::new(max),
        None => ConnectionBudget::for_open_file_limit(soft),
    };
    tracing::info!(
        "Accepting up to {} connections (open-file limit {soft})",
        budget.max()
    );
    budget
}

async fn listen(flag: &'static str, address: &Address) -> Result<TcpListener, StartError> {
    let bind_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            StartError::PortInUse {
                flag,
                address: address.clone(),
            }
        } else {
            StartError::Bind {
                flag,
                address: address.clone(),
                source,
            }
        }
    };
    let socket_address = resolve(address).map_err(bind_error)?;
    TcpListener::bind(socket_address).await.map_err(bind_error)
}

/// Resolves `address` for binding a listener (DNS names are looked up; the first result wins).
fn resolve(address: &Address) -> io::Result<SocketAddr> {
    match &address.host {
        Host::Ip(ip) => Ok(SocketAddr::new(*ip, address.port)),
        Host::Domain(name) => (name.as_str(), address.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{name} does not resolve"))
            }),
    }
}

/// Reads the SuperLink key pair and the allow-list (AUTH.md §1.1), refusing a key pair whose
/// halves do not belong together, listed keys on another curve, and an empty list (the
/// reference accepts all three and then fails every request of the nodes concerned).
fn load_node_auth(files: &NodeAuthFiles) -> Result<Arc<NodeAuthenticator>, StartError> {
    let fail = |flag: &'static str, path: &std::path::Path, reason: String| StartError::NodeAuth {
        flag,
        path: path.to_owned(),
        reason,
    };
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| fail(flag, path, e.to_string()))
    };
    let private_flag = "auth-superlink-private-key";
    let private_path = &files.superlink_private_key;
    let private =
        flwr_auth::PrivateKey::from_openssh(read(private_flag, private_path)?).map_err(|e| {
            fail(
                private_flag,
                private_path,
                format!("not an unencrypted OpenSSH EC private key: {e}"),
            )
        })?;
    let public_flag = "auth-superlink-public-key";
    let public_path = &files.superlink_public_key;
    let public =
        flwr_auth::PublicKey::from_openssh(read(public_flag, public_path)?).map_err(|e| {
            fail(
                public_flag,
                public_path,
                format!("not an OpenSSH EC public key: {e}"),
            )
        })?;
    if !private.matches(&public) {
        return Err(fail(
            public_flag,
            public_path,
            format!(
                "does not belong to the private key in {}",
                private_path.display()
            ),
        ));
    }
    let csv_flag = "auth-list-public-keys";
    let csv_path = &files.public_keys_csv;
    // The same rules as a live reload: keys on the SuperLink key's curve only (others would
    // register and then fail every call), and at least one key (the reference starts with none
    // and refuses every SuperNode, which is never what an operator wants).
    let allowed = fleet_auth::parse_allow_list(&read(csv_flag, csv_path)?, private.curve())
        .map_err(|e| fail(csv_flag, csv_path, e.to_string()))?;
    let keys = allowed.len();
    tracing::info!("Node authentication enabled with {keys} known public keys");
    let mut auth = NodeAuthenticator::new(private, allowed)
        .map_err(|e| fail(public_flag, public_path, e.to_string()))?;
    if files.mode == crate::config::NodeAuthMode::Hardened {
        tracing::info!(
            "Node authentication hardened: Flower 1.14 tokens are refused; requests need \
             flwr-auth-time within {} s and an unused flwr-auth-counter",
            files.max_clock_skew.as_secs()
        );
        auth = auth.with_hardened_mode(files.max_clock_skew);
    }
    Ok(Arc::new(auth))
}

async fn open_state(
    database: &Database,
    storage_dir: &std::path::Path,
) -> Result<(Arc<dyn LinkState>, Arc<Ffs>), StartError> {
    let clock = Arc::new(SystemClock);
    let files = || Arc::new(Ffs::new(storage_dir.to_path_buf()));
    let failed = |error: StateError| StartError::Database {
        database: match database {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => url.to_string(),
            _ => ":memory:".to_owned(),
        },
        reason: error_chain(&error),
    };
    match database {
        Database::InMemory => Ok((Arc::new(InMemoryLinkState::new(clock)), files())),
        // One shared connection, so `:memory:` works (the reference's did not, §8.1).
        Database::SqliteMemory => {
            let state = SqliteLinkState::open_in_memory(clock).map_err(failed)?;
            Ok((Arc::new(state), files()))
        }
        Database::Sqlite(path) => {
            let state = SqliteLinkState::open(path, clock).map_err(failed)?;
            Ok((Arc::new(state), files()))
        }
        // Replicas share everything through the database, FABs included.
        Database::Postgres(url) => {
            let url = url.expose().to_owned();
            let connected =
                tokio::task::spawn_blocking(move || PostgresLinkState::connect(&url, clock))
                    .await
                    .map_err(|error| failed(StateError::Postgres(error.to_string())))?;
            let state = Arc::new(connected.map_err(failed)?);
            tracing::info!(replica = state.replica_id(), "LinkState on PostgreSQL");
            let ffs = Arc::new(Ffs::shared(Arc::clone(&state) as Arc<dyn FabStore>));
            Ok((state, ffs))
        }
    }
}

/// `error: cause: cause …`, for one-line messages.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
