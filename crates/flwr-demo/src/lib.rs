//! A complete authenticated Flower federation on this machine, in one call: [`run`].
//!
//! The demo
//!
//! 1. writes TLS certificates (for `localhost` and `127.0.0.1`) and node-authentication keys
//!    for N+1 SuperNodes into a work directory, listing only N of them in the allow-list;
//! 2. starts `flower-superlink` with TLS and node authentication on free loopback ports, with
//!    `flwr-serverapp` on its `PATH` pointing at the Rust example ServerApp;
//! 3. starts N `flower-supernode`s (partition `i` of N each) with `flwr-clientapp` pointing at
//!    the Rust example ClientApp;
//! 4. starts a rogue SuperNode with the unlisted key and checks that it is refused (it exits
//!    non-zero);
//! 5. packages the logistic-regression app bundle (`crates/flwr-examples/app/logreg`) into a
//!    FAB and submits it with `StartRun` over the TLS Exec API, overriding
//!    `num-server-rounds`, `min-nodes` (every SuperNode in every round), `local-epochs` and
//!    `learning-rate`;
//! 6. follows the run with `StreamLogs`, reporting each round, and reads the per-round loss and
//!    accuracy from the ServerApp's `[HISTORY]` lines, then the final status with `ListRuns`;
//! 7. trains the same model centrally on all partitions for the same number of epochs
//!    ([`flwr_examples::logreg::train_centrally`]);
//! 8. writes `summary.json` and `learning_curve.svg` ([`report`]);
//! 9. stops the SuperNodes, then the SuperLink, with SIGTERM, and checks they exit 0.
//!
//! Any failure kills every process it started (they are process groups, so app processes go
//! too) and returns a [`DemoError`]; a temporary work directory is then kept for its logs.
//! Nothing is printed: progress goes to a [`Reporter`].
//!
//! # Layout
//!
//! - [`DemoConfig`], [`run`], [`run_with`]: the orchestration (this file);
//! - [`credentials`]: certificates and keys via `flwr-keygen`;
//! - [`bundle`]: packaging an app directory like `flwr build`;
//! - `federation`: the SuperLink and SuperNode processes, the private bin directory, the
//!   rogue check and the orderly stop;
//! - `exec`: the Exec API client (`StartRun`, `StreamLogs`, `ListRuns`);
//! - `run_log`: round progress and `[HISTORY]` metrics from the streamed log;
//! - [`report`]: [`Summary`], `summary.json`, the SVG learning curve;
//! - [`reporter`]: the [`Reporter`] trait and its [`Event`]s;
//! - [`flags`]: the flags both demo binaries take ([`flags::CommonFlags`]);
//! - the thin `flower-demo` binary (clap flags, an indicatif progress bar, the result table);
//! - [`ha`]: the same federation behind HAProxy on two SuperLink replicas sharing PostgreSQL,
//!   one of which is killed mid-run (the `flower-ha-demo` binary).
//!
//! # Work directory
//!
//! ```text
//! certs/   ca.crt ca.key server.pem server.key
//! keys/    server_credentials{,.pub} client_credentials_{1..N+1}{,.pub} client_public_keys.csv
//! bin/     flwr-serverapp -> flwr-rs-serverapp, flwr-clientapp -> flwr-rs-clientapp
//! home/    FLWR_HOME of each process (superlink/, supernode-0/, ..., rogue-supernode/)
//! logs/    superlink.log supernode-<i>.log rogue-supernode.log
//! ```

pub mod bundle;
pub mod credentials;
mod error;
mod exec;
mod federation;
pub mod flags;
pub mod ha;
pub mod report;
pub mod reporter;
mod run_log;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flwr_examples::logreg::train_centrally;
use flwr_proto::{scalar, Scalar};

pub use error::DemoError;
pub use report::{RoundMetrics, Summary};
pub use reporter::{Event, Reporter, Silent};

use crate::credentials::Credentials;
use crate::error::io_error;
use crate::exec::{ExecApi, LogFollower, Reopen};
use crate::federation::{Binaries, Federation, Layout, RogueOutcome, SuperLinkPorts};
use crate::run_log::{Progress, RunLog};

/// Default number of listed SuperNodes.
pub const DEFAULT_NODES: usize = 3;
/// Default number of rounds.
pub const DEFAULT_ROUNDS: u64 = 5;
/// Default local epochs per round. The bundle's own defaults (10 epochs at step 0.5) converge
/// within the first round on this easy task, which leaves nothing to see in a learning curve;
/// smaller steps let the rounds show progress.
pub const DEFAULT_LOCAL_EPOCHS: u64 = 5;
/// Default step size (see [`DEFAULT_LOCAL_EPOCHS`]).
pub const DEFAULT_LEARNING_RATE: f64 = 0.1;
/// Most local epochs per round.
pub const MAX_LOCAL_EPOCHS: u64 = 1000;
/// Most SuperNodes the demo starts.
pub const MAX_NODES: usize = 32;
/// Most rounds the demo runs.
pub const MAX_ROUNDS: u64 = 100;
/// The run config key for the number of rounds, as the bundle's `pyproject.toml` names it.
pub const ROUNDS_KEY: &str = "num-server-rounds";
/// The run config key for the nodes a round waits for.
pub const MIN_NODES_KEY: &str = "min-nodes";
/// The run config key for the local epochs per round.
pub const LOCAL_EPOCHS_KEY: &str = "local-epochs";
/// The run config key for the step size.
pub const LEARNING_RATE_KEY: &str = "learning-rate";

/// The app bundle in this repository.
pub fn default_app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flwr-examples/app/logreg")
}

/// What to run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DemoConfig {
    /// SuperNodes on the allow-list (1..=[`MAX_NODES`]); one more, unlisted, is the rogue.
    pub nodes: usize,
    /// Rounds of federated training (1..=[`MAX_ROUNDS`]).
    pub rounds: u64,
    /// Local epochs per round on each SuperNode (1..=[`MAX_LOCAL_EPOCHS`]); central training
    /// runs `rounds × local_epochs` epochs.
    pub local_epochs: u64,
    /// Gradient descent step size, federated and central (positive).
    pub learning_rate: f64,
    /// Where credentials, logs and app homes go; `None` for a temporary directory that is
    /// removed after a successful run.
    pub work_dir: Option<PathBuf>,
    /// Where `summary.json` and `learning_curve.svg` go.
    pub out_dir: PathBuf,
    /// The directory holding `flower-superlink`, `flower-supernode`, `flwr-rs-serverapp` and
    /// `flwr-rs-clientapp`.
    pub bin_dir: PathBuf,
    /// The app bundle to package and run.
    pub app_dir: PathBuf,
    /// Bound on the run, from `StartRun` to its final status.
    pub run_timeout: Duration,
    /// Stops the demo early when cancelled (checked at least every half second).
    pub cancel: Cancel,
}

impl DemoConfig {
    /// The defaults ([`DEFAULT_NODES`], [`DEFAULT_ROUNDS`], a temporary work directory,
    /// outputs in the current directory, the bundle of this repository) with binaries from
    /// `bin_dir`.
    pub fn new(bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            nodes: DEFAULT_NODES,
            rounds: DEFAULT_ROUNDS,
            local_epochs: DEFAULT_LOCAL_EPOCHS,
            learning_rate: DEFAULT_LEARNING_RATE,
            work_dir: None,
            out_dir: PathBuf::from("."),
            bin_dir: bin_dir.into(),
            app_dir: default_app_dir(),
            run_timeout: Self::run_timeout_for(DEFAULT_ROUNDS),
            cancel: Cancel::default(),
        }
    }

    /// A generous bound for `rounds` rounds: 30 s plus 20 s per round.
    pub fn run_timeout_for(rounds: u64) -> Duration {
        Duration::from_secs(30_u64.saturating_add(rounds.saturating_mul(20)))
    }

    fn validate(&self) -> Result<(), DemoError> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            return Err(DemoError::Config(format!(
                "nodes must be in 1..={MAX_NODES}, not {}",
                self.nodes
            )));
        }
        if !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return Err(DemoError::Config(format!(
                "rounds must be in 1..={MAX_ROUNDS}, not {}",
                self.rounds
            )));
        }
        if !(1..=MAX_LOCAL_EPOCHS).contains(&self.local_epochs) {
            return Err(DemoError::Config(format!(
                "local epochs must be in 1..={MAX_LOCAL_EPOCHS}, not {}",
                self.local_epochs
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(DemoError::Config(format!(
                "the learning rate must be a positive number, not {}",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// A flag that asks a running demo to stop: it then kills every process it started and
/// returns [`DemoError::Cancelled`]. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag (from any thread, e.g. a signal handler's).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the flag on the first SIGINT or SIGTERM (from a thread of its own); returns once
    /// the handlers are installed. The demos' servers run in process groups of their own, so a
    /// Ctrl-C in the terminal reaches only the demo, which then stops them.
    ///
    /// # Errors
    ///
    /// When the thread or the handlers cannot be set up.
    pub fn cancel_on_signals(&self) -> std::io::Result<()> {
        let cancel = self.clone();
        flwr_runtime::signal::on_signal_thread(move |_| cancel.cancel())
    }

    /// `Err(Cancelled)` once the flag is set.
    pub(crate) fn check(&self) -> Result<(), DemoError> {
        if self.is_cancelled() {
            return Err(DemoError::Cancelled);
        }
        Ok(())
    }
}

/// Runs the demo silently; see [`run_with`].
///
/// # Errors
///
/// As [`run_with`].
pub fn run(config: DemoConfig) -> Result<Summary, DemoError> {
    run_with(config, &mut Silent)
}

/// Runs the demo (see the crate docs), reporting progress to `reporter`, and returns what it
/// measured; `summary.json` and `learning_curve.svg` are in `config.out_dir`.
///
/// # Errors
///
/// A [`DemoError`] for the first step that failed; every process has been stopped by then.
pub fn run_with(config: DemoConfig, reporter: &mut dyn Reporter) -> Result<Summary, DemoError> {
    let started = Instant::now();
    config.validate()?;
    // Everything that needs no work directory first, so a bad setup leaves nothing behind.
    let binaries = Binaries::locate(&config.bin_dir)?;
    let fab = bundle::build(&config.app_dir)?;
    let overrides = run_config_overrides(&config, &fab.spec.config)?;
    let work = WorkDir::create(config.work_dir.as_deref())?;
    reporter.report(Event::WorkDirReady {
        dir: work.path(),
        temporary: work.is_temporary(),
    });
    let prepared = Prepared {
        binaries,
        fab,
        overrides,
    };
    let result = demo(&config, &prepared, work.path(), started, reporter);
    work.close(result.is_ok());
    result
}

/// What [`run_with`] checks before it creates the work directory.
#[derive(Debug)]
struct Prepared {
    binaries: Binaries,
    fab: bundle::Fab,
    overrides: Vec<(&'static str, Scalar)>,
}

/// The steps, in `dir`.
fn demo(
    config: &DemoConfig,
    prepared: &Prepared,
    dir: &Path,
    started: Instant,
    reporter: &mut dyn Reporter,
) -> Result<Summary, DemoError> {
    let Prepared {
        binaries,
        fab,
        overrides,
    } = prepared;

    let credentials = credentials::generate(dir, config.nodes)?;
    reporter.report(Event::CredentialsWritten {
        listed: config.nodes,
        allow_list: &credentials.allow_list,
    });
    let layout = layout(dir, config.nodes)?;
    binaries.link_apps(&layout.bin)?;

    config.cancel.check()?;
    let (mut federation, rogue) =
        start_federation(&layout, binaries, &credentials, config, reporter)?;
    reporter.report(Event::FabBuilt {
        hash: &fab.hash,
        bytes: fab.content.len(),
    });

    let run = run_federated(
        config,
        &layout,
        &credentials,
        fab,
        overrides,
        &mut federation,
        reporter,
    )?;
    let central = train_central(config, reporter)?;
    federation.stop(|name, exit_code| reporter.report(Event::Stopped { name, exit_code }))?;

    let mut summary = summarize(config, run, &central, &rogue, fab, started);
    report::write(&mut summary, &config.out_dir)?;
    reporter.report(Event::OutputsWritten {
        summary: &summary.summary_path,
        svg: &summary.curve_path,
    });
    Ok(summary)
}

/// Free loopback ports and the directories of the federation in `dir`.
fn layout(dir: &Path, nodes: usize) -> Result<Layout, DemoError> {
    // Fleet, ServerAppIo, Exec, then one ClientAppIo port per SuperNode and the rogue's;
    // `free_ports_vec` returns exactly as many as asked for, so the indexing below holds.
    let ports = flwr_runtime::free_ports_vec(4 + nodes + 1)?;
    Ok(Layout {
        logs: dir.join("logs"),
        bin: dir.join("bin"),
        homes: dir.join("home"),
        superlink: SuperLinkPorts {
            fleet: ports[0],
            serverappio: ports[1],
            exec: ports[2],
            metrics: ports[3],
        },
        clientappio: ports[4..].to_vec(),
    })
}

/// Starts the SuperLink, the listed SuperNodes and the rogue one, which must be refused.
fn start_federation(
    layout: &Layout,
    binaries: &Binaries,
    credentials: &Credentials,
    config: &DemoConfig,
    reporter: &mut dyn Reporter,
) -> Result<(Federation, RogueOutcome), DemoError> {
    let cancel = &config.cancel;
    let mut federation = Federation::start_superlink(layout, binaries, credentials, cancel)?;
    reporter.report(Event::SuperLinkStarted {
        fleet: &Layout::address(layout.superlink.fleet),
        exec: &Layout::address(layout.superlink.exec),
        metrics: &format!(
            "http://{}/metrics",
            Layout::address(layout.superlink.metrics)
        ),
    });
    let rogue = federation.start_supernodes(layout, binaries, credentials, cancel)?;
    reporter.report(Event::SuperNodesRegistered {
        count: config.nodes,
    });
    reporter.report(Event::RogueRefused {
        exit_code: rogue.exit_code,
        reason: rogue.reason.as_deref(),
    });
    Ok((federation, rogue))
}

/// A federated run that completed.
struct CompletedRun {
    run_id: u64,
    /// Its final `status:sub_status`.
    status: String,
    /// What its log said, round by round.
    log: RunLog,
}

/// Submits the FAB with `overrides` over the Exec API, follows the run to its end, reporting
/// its rounds, and fails unless it completed.
fn run_federated(
    config: &DemoConfig,
    layout: &Layout,
    credentials: &Credentials,
    fab: &bundle::Fab,
    overrides: &[(&'static str, Scalar)],
    federation: &mut Federation,
    reporter: &mut dyn Reporter,
) -> Result<CompletedRun, DemoError> {
    let cancel = &config.cancel;
    let ca = std::fs::read(&credentials.ca_cert).map_err(io_error(format!(
        "reading {}",
        credentials.ca_cert.display()
    )))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("starting the async runtime"))?;
    let rounds = config.rounds;
    let mut log = RunLog::default();
    let (run_id, status) = runtime.block_on(async {
        let mut exec = ExecApi::connect(layout.superlink.exec, &ca, credentials::HOSTS[0]).await?;
        let run_id = exec
            .start_run(fab.content.clone(), &fab.hash, overrides)
            .await?;
        reporter.report(Event::RunStarted { run_id, rounds });
        cancel.check()?;
        let mut follower = Follower {
            log: &mut log,
            reporter: &mut *reporter,
            federation: &mut *federation,
            cancel,
            rounds,
        };
        exec.follow_logs(run_id, config.run_timeout, Reopen::DIRECT, &mut follower)
            .await?;
        let rest = follower.log.finish();
        follower.report(rest);
        // The whole run may fit in one log chunk; a cancel asked while it was reported counts.
        cancel.check()?;
        let status = exec.status(run_id).await?;
        Ok::<_, DemoError>((run_id, status))
    })?;
    drop(runtime);
    reporter.report(Event::RunFinished {
        status: &status.status,
    });
    if !status.completed() {
        return Err(DemoError::RunFailed {
            run_id,
            status: status.status,
            details: status.details,
        });
    }
    Ok(CompletedRun {
        run_id,
        status: status.status,
        log,
    })
}

/// The baseline: the same model trained centrally on all partitions.
struct Central {
    /// Accuracy on the pooled evaluation data.
    accuracy: f64,
    /// As many as the federated run's local epochs in all its rounds.
    epochs: u64,
}

/// Trains the baseline for as many epochs as the federated run had.
fn train_central(config: &DemoConfig, reporter: &mut dyn Reporter) -> Result<Central, DemoError> {
    let epochs = config.rounds.saturating_mul(config.local_epochs);
    let central = train_centrally(
        config.nodes,
        usize::try_from(epochs).unwrap_or(usize::MAX),
        config.learning_rate,
    )
    .map_err(|e| DemoError::Central(e.to_string()))?;
    reporter.report(Event::CentralTrained {
        accuracy: central.accuracy,
    });
    Ok(Central {
        accuracy: central.accuracy,
        epochs,
    })
}

/// The [`Summary`] of the demo, without the paths of its files yet.
fn summarize(
    config: &DemoConfig,
    run: CompletedRun,
    central: &Central,
    rogue: &RogueOutcome,
    fab: &bundle::Fab,
    started: Instant,
) -> Summary {
    let rounds = config.rounds;
    let rounds_metrics: Vec<RoundMetrics> = run
        .log
        .history()
        .into_iter()
        .filter(|summary| summary.round <= rounds)
        .map(RoundMetrics::from)
        .collect();
    Summary {
        nodes: config.nodes,
        rounds_requested: rounds,
        rounds_completed: u64::try_from(rounds_metrics.len()).unwrap_or(u64::MAX),
        final_accuracy: rounds_metrics.last().and_then(|r| r.eval_accuracy),
        rounds: rounds_metrics,
        central_accuracy: central.accuracy,
        central_epochs: central.epochs,
        local_epochs: config.local_epochs,
        learning_rate: config.learning_rate,
        rogue_refused: true,
        rogue_exit_code: rogue.exit_code,
        run_id: run.run_id,
        run_status: run.status,
        fab_hash: fab.hash.clone(),
        wall_time_seconds: started.elapsed().as_secs_f64(),
        summary_path: PathBuf::new(),
        curve_path: PathBuf::new(),
    }
}

/// Follows the demo's run: round progress to the reporter, health from the federation.
struct Follower<'a> {
    log: &'a mut RunLog,
    reporter: &'a mut dyn Reporter,
    federation: &'a mut Federation,
    cancel: &'a Cancel,
    rounds: u64,
}

impl Follower<'_> {
    fn report(&mut self, progress: Vec<Progress>) {
        let rounds = self.rounds;
        for step in progress {
            self.reporter.report(match step {
                Progress::Began(round) => Event::RoundStarted { round, rounds },
                Progress::Ended(round) => Event::RoundCompleted { round, rounds },
                // One SuperLink fails a run whose ServerApp dies; it never starts one again.
                Progress::Restarted => continue,
            });
        }
    }
}

impl LogFollower for Follower<'_> {
    type Error = DemoError;

    fn chunk(&mut self, text: &str) -> Result<(), DemoError> {
        let progress = self.log.push(text);
        self.report(progress);
        Ok(())
    }

    fn health(&mut self) -> Result<(), DemoError> {
        self.cancel.check()?;
        self.federation.check_alive()
    }
}

/// The run config overrides of the demo's run: rounds, every SuperNode in every round, and
/// the training step. The bundle must define each key: the SuperLink silently drops overrides
/// of unknown keys (BEHAVIOR.md §11.2).
fn run_config_overrides(
    config: &DemoConfig,
    defaults: &flwr::Config,
) -> Result<Vec<(&'static str, Scalar)>, DemoError> {
    let int = |value: u64| Scalar {
        scalar: Some(scalar::Scalar::Sint64(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
    };
    let nodes = u64::try_from(config.nodes).unwrap_or(u64::MAX);
    let overrides = vec![
        (ROUNDS_KEY, int(config.rounds)),
        (MIN_NODES_KEY, int(nodes)),
        (LOCAL_EPOCHS_KEY, int(config.local_epochs)),
        (
            LEARNING_RATE_KEY,
            Scalar {
                scalar: Some(scalar::Scalar::Double(config.learning_rate)),
            },
        ),
    ];
    if let Some((key, _)) = overrides
        .iter()
        .find(|(key, _)| !defaults.contains_key(*key))
    {
        return Err(DemoError::Bundle {
            dir: config.app_dir.clone(),
            reason: format!("[tool.flwr.app.config] has no `{key}` to override"),
        });
    }
    Ok(overrides)
}

/// The work directory: given, or temporary.
#[derive(Debug)]
enum WorkDir {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl WorkDir {
    fn create(given: Option<&Path>) -> Result<Self, DemoError> {
        match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(io_error(format!("creating {}", dir.display())))?;
                // Absolute, because the processes get paths inside it and run elsewhere.
                let dir = std::path::absolute(dir)
                    .map_err(io_error(format!("resolving {}", dir.display())))?;
                Ok(Self::Given(dir))
            }
            None => tempfile::Builder::new()
                .prefix("flower-demo-")
                .tempdir()
                .map(Self::Temporary)
                .map_err(io_error("creating a temporary work directory")),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Given(dir) => dir,
            Self::Temporary(dir) => dir.path(),
        }
    }

    fn is_temporary(&self) -> bool {
        matches!(self, Self::Temporary(_))
    }

    /// Ends the demo's use of the directory: a temporary one is removed after a success (best
    /// effort: a leftover temp dir is harmless) and kept after a failure, for its logs.
    fn close(self, succeeded: bool) {
        if let Self::Temporary(dir) = self {
            if succeeded {
                let _ = dir.close();
            } else {
                let _ = dir.keep();
            }
        }
    }
}
