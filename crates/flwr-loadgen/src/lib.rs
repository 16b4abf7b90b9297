//! `flower-loadgen`: acts as N Flower 1.14 SuperNodes against any SuperLink (ours or the
//! Python reference) over the real Fleet gRPC API, with TLS and node authentication or
//! without, and measures throughput, latency percentiles and the SuperLink's CPU time and
//! memory.
//!
//! A test has two phases. **Registration**: every node sends CreateNode with its
//! `public-key` header, a bounded number at a time, over one HTTP/2 connection per
//! `--nodes-per-connection` nodes. **Measurement**, for a fixed window: every node idles as a
//! reference SuperNode (`cadence`), or C requests of one RPC stay in flight (`closed-loop`), or
//! every node waits on a held PullTaskIns while the generator, as the ServerApp, pushes TaskIns
//! through the ServerAppIo API and times each until its node has it (`dispatch`). Requests are
//! signed once per node, so the generator spends its time on gRPC, not on cryptography. Every
//! call has a deadline and the whole test a hard one, so it ends by itself even if the
//! SuperLink hangs.
//!
//! # Usage
//!
//! ```text
//! # keys for 1000 nodes (and the SuperLink), then a SuperLink that lists them
//! flower-loadgen --generate-keys keys --generate-only --nodes 1000
//! flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key \
//!     --auth-list-public-keys keys/client_public_keys.csv \
//!     --auth-superlink-private-key keys/server_credentials \
//!     --auth-superlink-public-key keys/server_credentials.pub --isolation process
//! # 64 authenticated Pings in flight for 10 s, with the SuperLink's CPU time per request
//! flower-loadgen --keys keys --nodes 1000 --root-certificates ca.crt --server-pid PID
//! # the same nodes at rest, as reference SuperNodes, for 60 s, as one JSON line
//! flower-loadgen --keys keys --nodes 1000 --root-certificates ca.crt --mode cadence \
//!     --seconds 60 --json
//! # PushTaskRes of 1 MB arrays (a running run is made through the ServerAppIo API)
//! flower-loadgen --keys keys --nodes 1000 --root-certificates ca.crt --rpc push \
//!     --payload-bytes 1000000 --serverappio-api-address 127.0.0.1:9091
//! # 100 TaskIns per second for 30 s, each to a random node; push → node latency
//! flower-loadgen --keys keys --nodes 1000 --root-certificates ca.crt --mode dispatch \
//!     --rate 100 --seconds 30 --serverappio-api-address 127.0.0.1:9091
//! ```
//!
//! `scripts/bench` runs these against our SuperLink and the Python one and prints a table.
//!
//! # Layout
//!
//! - [`config`]: the flags ([`Args`]) and the validated [`Config`].
//! - [`keys`]: node and SuperLink keys in `flower-keygen`'s layout, generated or read on every
//!   core.
//! - [`limits`]: the open-file limit, raised to fit one descriptor per connection.
//! - [`connection`]: the connections, spread over loopback source addresses.
//! - [`signed`]: request bodies and their `public-key` / `auth-token` headers.
//! - [`push_run`]: a running run for PushTaskRes, made through the ServerAppIo API.
//! - [`server`]: the SuperLink's CPU time and memory from `/proc`.
//! - [`report`]: the [`Report`], as JSON or a table.
//! - [`run`]: the test itself; private modules hold registration, the cadence loops, the
//!   closed-loop workers, the dispatch pusher and pull loops, and the latency recorder.

mod cadence;
mod closed_loop;
pub mod config;
pub mod connection;
mod dispatch;
pub mod keys;
pub mod limits;
mod node;
mod parallel;
pub mod push_run;
mod recorder;
mod registration;
pub mod report;
pub mod round;
pub mod server;
pub mod signed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{
    Args, Config, ConfigError, Dispatch, KeySource, Mode, PushRun, RoundPlan, Rpc, Tls,
};
pub use report::Report;

use crate::connection::Connections;
use crate::dispatch::{Pulls, Pusher, Tracker};
use crate::keys::KeyError;
use crate::node::SimNode;
use crate::recorder::{Call, Recorder, Tally};
use crate::registration::{Identity, Registrar};
use crate::report::{Latency, RpcReport};
use crate::server::ServerProbe;
use crate::signed::{PushTemplate, SignError};

/// Deadline of every call but the cadence Ping (whose 5 s is the reference's).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time after the last possible call deadline before pending calls are abandoned.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Why a test could not run. Failed calls are not errors: they are counted in the [`Report`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The connections could not be configured.
    #[error(transparent)]
    Connection(#[from] connection::ConnectionError),
    /// The latency histograms could not be created.
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// Node keys could not be generated or read.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Too many connections for the open-file limit.
    #[error(transparent)]
    Limit(#[from] limits::LimitError),
    /// The run for PushTaskRes or PushTaskIns could not be set running, or the ServerAppIo API
    /// is unreachable.
    #[error(transparent)]
    PushRun(#[from] push_run::PushRunError),
    /// A node key and the SuperLink key do not make a secret.
    #[error("node keys and server_credentials.pub: {0}")]
    Secret(#[source] flwr_auth::AuthError),
    /// A request could not be signed.
    #[error("signing requests: {0}")]
    Sign(#[from] SignError),
    /// A worker thread for keys or signatures died.
    #[error("a key or signing thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

/// Writes the keys of `--generate-keys DIR` without running a test (`--generate-only`).
///
/// # Errors
///
/// [`KeyError`] when a file exists already or cannot be written.
pub fn generate_keys(dir: &std::path::Path, nodes: usize) -> Result<(), KeyError> {
    keys::generate(dir, nodes).map(drop)
}

/// Runs one test: keys, registration, then the measurement window.
///
/// # Errors
///
/// [`LoadError`] when the test cannot start: keys, the open-file limit, the endpoint or the
/// push run. Calls that fail once it runs are counted in the report instead.
pub async fn run(config: Config) -> Result<Report, LoadError> {
    limits::raise_open_files(config.connections(), config.nodes)?;
    let (identities, expected_superlink) = identities(&config).await?;
    let push_template = match &config.push_run {
        None => None,
        Some(PushRun::Existing(run_id)) => Some(PushTemplate::new(*run_id, config.payload_bytes)),
        Some(PushRun::Create(address)) => {
            let run_id = push_run::create_running_run(address).await?;
            Some(PushTemplate::new(run_id, config.payload_bytes))
        }
    };
    let connections =
        Arc::new(Connections::new(&config.superlink, &config.tls, config.connections()).await?);
    let registrar = Registrar {
        connections: Arc::clone(&connections),
        identities,
        expected_superlink,
        nodes_per_connection: config.nodes_per_connection,
        call_timeout: CALL_TIMEOUT,
        recorder: Recorder::new()?,
    };
    let recorder = Arc::new(Recorder::new()?);
    let probe = config.server_pid.map(ServerProbe::new);
    let phases = Phases {
        config: &config,
        registrar: &registrar,
        recorder: &recorder,
        probe: probe.as_ref(),
    };
    let mut rounds = None;
    let (nodes, measured, dispatched) = match (config.mode, &config.dispatch) {
        (Mode::Round, _) => {
            let (nodes, measured, played) = phases.rounds().await?;
            rounds = played;
            (nodes, measured, None)
        }
        (Mode::Dispatch, Some(dispatch)) => {
            let (nodes, measured, dispatched) = phases.dispatch(dispatch).await?;
            (nodes, measured, Some(dispatched))
        }
        // `Config::from_args` sets `dispatch` exactly for `--mode dispatch`; a hand-built
        // Config without it gets the same nodes without pushes.
        (Mode::Cadence, _) | (Mode::Dispatch, None) => {
            let (nodes, measured) = phases.cadence().await;
            (nodes, measured, None)
        }
        (Mode::ClosedLoop, _) => {
            let (nodes, measured) = phases.closed_loop(push_template.as_ref()).await?;
            (nodes, measured, None)
        }
    };
    let cpu_end = probe.as_ref().and_then(|probe| probe.cpu_micros().ok());
    let memory = probe.as_ref().and_then(|probe| probe.memory().ok());
    let registration = registrar.recorder.total()?;
    let mut calls = recorder.total()?;
    let run_id = match &dispatched {
        Some(dispatched) => Some(dispatched.tracker.run_id()),
        None => push_template.as_ref().map(|template| template.run_id()),
    };
    let opened = connections.opened();
    let mut report = report(
        &config,
        &registration,
        &mut calls,
        nodes,
        opened,
        &measured,
        run_id,
    );
    if let (Some(start), Some(end)) = (measured.cpu_start, cpu_end) {
        if report.requests > 0 {
            report.server_cpu_us_per_req =
                Some(end.saturating_sub(start) as f64 / report.requests as f64);
        }
    }
    if let (Some(dispatched), Some(dispatch)) = (&dispatched, &config.dispatch) {
        let push_latency = Latency::of(calls.latency(Call::PushTaskIns));
        report.dispatch = Some(dispatched.tracker.report(
            dispatch.rate,
            dispatch.hold,
            dispatched.grace,
            push_latency,
        ));
    }
    report.round = rounds;
    if let Some(memory) = memory {
        report.server_rss_mib = Some(memory.rss_kib as f64 / 1024.0);
        report.server_rss_peak_mib = Some(memory.peak_kib as f64 / 1024.0);
    }
    Ok(report)
}

/// What registration and the measurement window share.
#[derive(Debug)]
struct Phases<'a> {
    config: &'a Config,
    registrar: &'a Registrar,
    recorder: &'a Arc<Recorder>,
    probe: Option<&'a ServerProbe>,
}

impl Phases<'_> {
    /// Registers the nodes, starting each one's reference loops at once, then records the
    /// window; returns the registered nodes' count.
    async fn cadence(&self) -> (usize, Measured) {
        let config = self.config;
        let shared = cadence::Shared {
            window: Arc::default(),
            recorder: Arc::clone(self.recorder),
            stop: CancellationToken::new(),
            pull_interval: config.pull_interval,
            call_timeout: CALL_TIMEOUT,
        };
        let mut tasks = JoinSet::new();
        let (nodes, registration) = self
            .register(|node| {
                let node = Arc::new(node.clone());
                tasks.spawn(cadence::ping_loop(Arc::clone(&node), shared.clone()));
                tasks.spawn(cadence::pull_loop(node, shared.clone()));
            })
            .await;
        let cpu_start = self.cpu_micros();
        let start = Instant::now();
        let end = start + config.window;
        shared.window.open(start, end);
        tokio::time::sleep_until(end).await;
        shared.stop.cancel();
        let hard_stopped = drain(&mut tasks, end + CALL_TIMEOUT + DRAIN_GRACE).await;
        let measured = Measured {
            registration,
            window: config.window,
            cpu_start,
            hard_stopped,
        };
        (nodes.len(), measured)
    }

    /// Registers the nodes, signs their PushTaskRes if needed, then keeps `--concurrency`
    /// calls in flight for the window; returns the registered nodes' count.
    async fn closed_loop(
        &self,
        push_template: Option<&Arc<PushTemplate>>,
    ) -> Result<(usize, Measured), LoadError> {
        let config = self.config;
        let (mut nodes, registration) = self.register(|_| {}).await;
        if let Some(template) = push_template {
            nodes = prepare_push(nodes, Arc::clone(template)).await?;
        }
        let nodes = Arc::new(nodes);
        let mut tasks = JoinSet::new();
        let cpu_start = self.cpu_micros();
        let start = Instant::now();
        let end = start + config.window;
        closed_loop::spawn_workers(
            &mut tasks,
            &nodes,
            closed_loop::Loop {
                rpc: config.rpc,
                concurrency: config.concurrency,
                end,
                call_timeout: CALL_TIMEOUT,
                retries: config.retries,
            },
            self.recorder,
        );
        let hard_stopped = drain(&mut tasks, end + CALL_TIMEOUT + DRAIN_GRACE).await;
        let measured = Measured {
            registration,
            // Until the last call of the window was answered.
            window: if nodes.is_empty() {
                Duration::ZERO
            } else {
                start.elapsed()
            },
            cpu_start,
            hard_stopped,
        };
        Ok((nodes.len(), measured))
    }

    /// Creates (or takes) the running run, registers the nodes, starting each one's Ping and
    /// held-pull loops at once, then pushes TaskIns for the window and waits up to the grace
    /// for their delivery; returns the registered nodes' count.
    async fn dispatch(
        &self,
        dispatch: &Dispatch,
    ) -> Result<(usize, Measured, Dispatched), LoadError> {
        let config = self.config;
        let mut serverappio = push_run::connect(&dispatch.serverappio).await?;
        let run_id = match dispatch.run_id {
            Some(run_id) => run_id,
            None => push_run::start_run(&mut serverappio, "flwr-loadgen/dispatch").await?,
        };
        let tracker = Arc::new(Tracker::new(run_id)?);
        let grace = dispatch::grace(config.pull_interval);
        let shared = cadence::Shared {
            window: Arc::default(),
            recorder: Arc::clone(self.recorder),
            stop: CancellationToken::new(),
            pull_interval: config.pull_interval,
            call_timeout: CALL_TIMEOUT,
        };
        let hold = dispatch
            .hold
            .map(|hold| {
                tonic::metadata::MetadataValue::try_from(flwr_core::hold::format_millis(hold))
                    .map_err(SignError::from)
            })
            .transpose()?;
        let pulls = Pulls {
            cadence: shared.clone(),
            hold,
            // The SuperLink answers an empty held pull at the bound; the deadline leaves a
            // call's own time on top.
            deadline: dispatch.hold.unwrap_or_default() + CALL_TIMEOUT,
            tracker: Arc::clone(&tracker),
        };
        let mut tasks = JoinSet::new();
        let (nodes, registration) = self
            .register(|node| {
                let node = Arc::new(node.clone());
                tasks.spawn(cadence::ping_loop(Arc::clone(&node), shared.clone()));
                tasks.spawn(dispatch::pull_loop(node, pulls.clone()));
            })
            .await;
        let pusher = Pusher {
            client: serverappio,
            node_ids: nodes.iter().map(|node| node.node_id).collect(),
            tracker: Arc::clone(&tracker),
            recorder: Arc::clone(self.recorder),
            rate: dispatch.rate,
            ttl: dispatch::ttl(config.window, grace),
        };
        let cpu_start = self.cpu_micros();
        let start = Instant::now();
        let end = start + config.window;
        shared.window.open(start, end);
        let mut pushing = JoinSet::new();
        pushing.spawn(pusher.run(start, end, end + CALL_TIMEOUT + DRAIN_GRACE));
        let mut hard_stopped = drain(&mut pushing, end + CALL_TIMEOUT + 2 * DRAIN_GRACE).await;
        tracker.settle(Instant::now() + grace).await;
        shared.stop.cancel();
        // Pull loops end at once; a Ping in flight keeps its own 5 s deadline.
        hard_stopped |= drain(&mut tasks, Instant::now() + CALL_TIMEOUT + DRAIN_GRACE).await;
        let measured = Measured {
            registration,
            window: config.window,
            cpu_start,
            hard_stopped,
        };
        Ok((nodes.len(), measured, Dispatched { tracker, grace }))
    }

    /// Creates a running run, registers the nodes, then plays the rounds of `--mode round`.
    async fn rounds(&self) -> Result<(usize, Measured, Option<round::RoundReport>), LoadError> {
        let config = self.config;
        let Some(plan) = &config.round else {
            return Ok((0, Measured::default(), None));
        };
        let mut serverappio = push_run::connect(&plan.serverappio).await?;
        let run_id = push_run::start_run(&mut serverappio, "flwr-loadgen/round").await?;
        let (nodes, registration) = self.register(|_| {}).await;
        let nodes: Vec<Arc<SimNode>> = nodes.into_iter().map(Arc::new).collect();
        let cpu_start = self.cpu_micros();
        let start = Instant::now();
        let rounds = round::Rounds {
            client: serverappio,
            run_id,
            rounds: plan.rounds,
            model_bytes: config.payload_bytes,
        };
        let report = rounds.run(&nodes, self.probe).await;
        let measured = Measured {
            registration,
            window: start.elapsed(),
            cpu_start,
            hard_stopped: false,
        };
        Ok((nodes.len(), measured, Some(report)))
    }

    /// Registers the nodes, handing each to `on_node` as soon as it is registered (to start its
    /// loops); the nodes and how long registering took.
    async fn register(&self, on_node: impl FnMut(&SimNode)) -> (Vec<SimNode>, Duration) {
        let config = self.config;
        let started = Instant::now();
        let nodes = self
            .registrar
            .register_all(
                config.nodes,
                config.register_concurrency,
                started + config.registration_timeout,
                on_node,
            )
            .await;
        (nodes, started.elapsed())
    }

    fn cpu_micros(&self) -> Option<u64> {
        self.probe.and_then(|probe| probe.cpu_micros().ok())
    }
}

/// What a dispatch test leaves for its report.
#[derive(Debug)]
struct Dispatched {
    tracker: Arc<Tracker>,
    grace: Duration,
}

/// Timings of the two phases.
#[derive(Debug, Default)]
struct Measured {
    registration: Duration,
    window: Duration,
    cpu_start: Option<u64>,
    hard_stopped: bool,
}

/// Each node's `public-key` header and, when `server_credentials.pub` is known, its secret
/// derived ahead of registration; plus that key's header value.
async fn identities(config: &Config) -> Result<(Option<Vec<Identity>>, Option<String>), LoadError> {
    let nodes = config.nodes;
    let source = config.keys.clone();
    tokio::task::spawn_blocking(move || {
        let set = match source {
            KeySource::None => return Ok((None, None)),
            KeySource::Generate(dir) => keys::generate(&dir, nodes)?,
            KeySource::Read(dir) => keys::load(&dir, nodes)?,
        };
        let secrets = match &set.superlink {
            Some(superlink) => keys::derive_secrets(&set.nodes, superlink)
                .map_err(LoadError::Secret)?
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; set.nodes.len()],
        };
        let identities = set
            .nodes
            .into_iter()
            .zip(secrets)
            .map(|(key, secret)| {
                let public_key =
                    tonic::metadata::MetadataValue::try_from(key.public.header_value())
                        .map_err(SignError::from)?;
                Ok(Identity {
                    public_key,
                    private: key.private,
                    secret,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let expected = set.superlink.map(|key| key.header_value());
        Ok((Some(identities), expected))
    })
    .await?
}

/// Signs every node's PushTaskRes on every core.
async fn prepare_push(
    mut nodes: Vec<SimNode>,
    template: Arc<PushTemplate>,
) -> Result<Vec<SimNode>, LoadError> {
    tokio::task::spawn_blocking(move || {
        let tokens = parallel::map(nodes.len(), |index| nodes[index].push_token(&template))?;
        for (node, token) in nodes.iter_mut().zip(tokens) {
            node.set_push(Arc::clone(&template), token);
        }
        Ok(nodes)
    })
    .await?
}

/// Waits for every task until `deadline`, then abandons the rest; whether any was abandoned.
async fn drain(tasks: &mut JoinSet<()>, deadline: Instant) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(_) => {
                tasks.abort_all();
                return true;
            }
        }
    }
}

/// The report of a finished test (server figures are added by the caller).
fn report(
    config: &Config,
    registration: &Tally,
    calls: &mut Tally,
    nodes_connected: usize,
    connections: usize,
    measured: &Measured,
    run_id: Option<u64>,
) -> Report {
    let seconds = measured.window.as_secs_f64();
    let rate = |count: u64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    let sent: Vec<Call> = match config.mode {
        Mode::Cadence | Mode::Dispatch => vec![Call::Ping, Call::PullTaskIns],
        Mode::ClosedLoop => vec![config.rpc.into()],
        // Rounds report their own figures.
        Mode::Round => Vec::new(),
    };
    let by_rpc: BTreeMap<String, RpcReport> = sent
        .iter()
        .map(|call| {
            let histogram = calls.latency(*call);
            let name = match call {
                Call::PullTaskIns => "pull",
                Call::PushTaskRes => "push",
                Call::PushTaskIns => "push_task_ins",
                Call::Ping | Call::CreateNode => "ping",
            };
            (
                name.to_owned(),
                RpcReport {
                    requests: histogram.len(),
                    requests_per_s: rate(histogram.len()),
                    latency: Latency::of(histogram),
                },
            )
        })
        .collect();
    let all = calls.measured_latencies();
    let registration_errors: BTreeMap<String, u64> = registration
        .errors
        .iter()
        .map(|(code, count)| ((*code).to_owned(), *count))
        .collect();
    calls.merge(registration);
    // Registration failures come first in time, so they name the first error.
    let first_error = registration
        .first_error
        .clone()
        .or_else(|| calls.first_error.clone());
    Report {
        mode: config.mode.as_str().to_owned(),
        rpc: match config.mode {
            Mode::Cadence | Mode::Dispatch => "ping+pull".to_owned(),
            Mode::ClosedLoop => config.rpc.as_str().to_owned(),
            Mode::Round => "round".to_owned(),
        },
        superlink: config.superlink.to_string(),
        tls: config.tls(),
        auth: config.auth(),
        nodes: config.nodes,
        nodes_connected,
        connections,
        nodes_per_connection: config.nodes_per_connection,
        concurrency: config.concurrency,
        payload_bytes: config.payload_bytes,
        registration_s: measured.registration.as_secs_f64(),
        registration: Latency::of(registration.latency(Call::CreateNode)),
        registration_errors,
        seconds,
        requests: all.len(),
        requests_per_s: rate(all.len()),
        latency: Latency::of(&all),
        errors_total: calls.errors_total(),
        errors: calls
            .errors
            .iter()
            .map(|(code, count)| ((*code).to_owned(), *count))
            .collect(),
        first_error,
        by_rpc,
        ping_unsuccessful: calls.ping_unsuccessful,
        retried: calls.retried,
        push_not_stored: calls.push_not_stored,
        task_ins_received: calls.task_ins_received,
        run_id,
        server_cpu_us_per_req: None,
        server_rss_mib: None,
        server_rss_peak_mib: None,
        hard_stopped: measured.hard_stopped,
        dispatch: None,
        round: None,
    }
}
