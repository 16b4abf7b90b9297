//! High availability on this machine, in one call: [`run_ha`].
//!
//! The demo
//!
//! 1. starts a throwaway PostgreSQL cluster (Debian's packages, as a non-root user, on a free
//!    port; [`flwr_runtime::scratch_postgres`]) and creates the SuperLink database in it;
//! 2. starts two `flower-superlink` replicas on that database (`--database postgresql://...`),
//!    each with TLS (one server certificate for `localhost`/`127.0.0.1`), node authentication
//!    (one allow-list and server key pair), subprocess isolation, and its own `FLWR_HOME`, FAB
//!    storage and log;
//! 3. starts HAProxy in TCP mode in front of them (TLS passes through): a Fleet frontend
//!    balanced round-robin over both replicas and an Exec frontend sending everything to the
//!    first healthy one, with health checks every 500 ms;
//! 4. starts N SuperNodes with TLS and node authentication against the Fleet frontend;
//! 5. submits the logistic-regression app through the Exec frontend and follows its log;
//! 6. after round K of the run, SIGKILLs one replica: by default the one whose `flwr-serverapp`
//!    child drives the run ([`KillTarget::ServerApp`]: the other replica must take the run over
//!    once the launch lease of the dead one expires, and start its ServerApp again from round
//!    1), or the other one ([`KillTarget::Other`]: the ServerApp keeps going, only connections
//!    move);
//! 7. keeps following through HAProxy (reopening the log stream when it breaks) and measures
//!    the failover: from the kill until a round completes again (for a takeover: the first
//!    round of the restarted ServerApp);
//! 8. reads the final status, writes [`HA_SUMMARY_FILE`], stops everything and returns an
//!    [`HaSummary`].
//!
//! ClientApps are paced ([`HaConfig::message_delay`]): the rounds of this small example take
//! milliseconds, so without a pause per message the run would be over before anyone could
//! kill a replica in its middle.
//!
//! PostgreSQL runs in a private directory under the system temp dir, which is removed when it
//! stops (the harness's watchdog sees to that even if this process is killed).
//!
//! Any failure stops every process it started (process groups, SuperNodes first, then HAProxy,
//! the replicas and PostgreSQL) and keeps the work directory with its logs.
//!
//! # Work directory
//!
//! ```text
//! certs/ keys/  as the single-SuperLink demo
//! bin/          flwr-serverapp -> flwr-rs-serverapp, flwr-clientapp (pacing script)
//! home/         FLWR_HOME of each process (superlink-a/, superlink-b/, supernode-0/, ...)
//! haproxy/      haproxy.cfg
//! logs/         superlink-a.log superlink-b.log haproxy.log supernode-<i>.log
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flwr_runtime::{CommandLine, Proc, TempPostgres};

use crate::credentials::{self, Credentials};
use crate::error::{io_error, DemoError};
use crate::exec::{ExecApi, FinalStatus, LogFollower, Reopen};
use crate::federation::{
    check_running, spawn_logged, spawn_superlink, stop_all, wait_listening, wait_registered,
    Binaries, Layout, SuperLinkPorts, SuperNodeSpec, POLL, STOP_GRACE,
};
use crate::report::RoundMetrics;
use crate::run_log::{Progress, RunLog};
use crate::{bundle, Cancel, DemoConfig, Silent, WorkDir};

/// Default round after which a replica is killed.
pub const DEFAULT_KILL_AFTER_ROUND: u64 = 2;
/// Default pause before each ClientApp message: a round (fit, then evaluate) then lasts about
/// two seconds, long enough to kill a replica in the middle of the run.
pub const DEFAULT_MESSAGE_DELAY: Duration = Duration::from_millis(1000);
/// Longest pause per ClientApp message.
pub const MAX_MESSAGE_DELAY: Duration = Duration::from_secs(10);
/// Where Debian's haproxy package puts the program.
pub const DEFAULT_HAPROXY: &str = "/usr/sbin/haproxy";
/// File name of the summary written to the output directory.
pub const HA_SUMMARY_FILE: &str = "ha_summary.json";
/// Names of the two replicas (process names, log file stems, HAProxy server names).
pub const REPLICAS: [&str; 2] = ["superlink-a", "superlink-b"];
/// The database the SuperLinks share.
const DATABASE: &str = "flower";

/// How long the killed replica may take to be reaped after SIGKILL.
const REAP_LIMIT: Duration = Duration::from_secs(10);
/// How long the demo looks for the ServerApp child when it is time to kill.
const FIND_SERVERAPP_LIMIT: Duration = Duration::from_secs(5);
/// Bound on a `kill` or `haproxy -c` command.
const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// How the log stream through HAProxy rides out a dying backend: a failover takes a lease
/// (4 s) and a restart, so up to 40 reopenings with pauses growing from 250 ms to 2 s.
const THROUGH_BALANCER: Reopen = Reopen {
    max: 40,
    pause: Duration::from_millis(250),
    max_pause: Duration::from_secs(2),
    confirm_end: true,
};
/// Bound on one `StartRun` or `ListRuns` call.
const CALL_LIMIT: Duration = Duration::from_secs(60);
/// Tries of the final `ListRuns` through HAProxy.
const STATUS_TRIES: u32 = 10;
/// Most lines quoted from one SuperNode log after the kill.
const QUOTED_LINES: usize = 3;

/// Which replica to kill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum KillTarget {
    /// The replica whose `flwr-serverapp` child drives the run: the other must take it over.
    #[default]
    #[serde(rename = "serverapp")]
    ServerApp,
    /// The other replica: the run keeps its ServerApp; only connections move.
    #[serde(rename = "other")]
    Other,
}

impl fmt::Display for KillTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServerApp => "serverapp",
            Self::Other => "other",
        })
    }
}

/// What to run: the single-SuperLink demo's settings plus the failover's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HaConfig {
    /// Nodes, rounds, training settings, directories, binaries, app bundle, run timeout and
    /// cancel flag, as for [`crate::run`] (rounds at least 2: the kill needs a round after
    /// it).
    pub demo: DemoConfig,
    /// Which replica to kill.
    pub kill: KillTarget,
    /// The round after which the replica is killed (1..rounds).
    pub kill_after_round: u64,
    /// Pause before each ClientApp message (at most [`MAX_MESSAGE_DELAY`]; zero runs the
    /// ClientApps unpaced, and the run may then end before the kill).
    pub message_delay: Duration,
    /// The `haproxy` program; `None` for [`DEFAULT_HAPROXY`], else `haproxy` on `PATH`.
    pub haproxy: Option<PathBuf>,
}

impl HaConfig {
    /// The defaults ([`DemoConfig::new`], [`DEFAULT_KILL_AFTER_ROUND`],
    /// [`DEFAULT_MESSAGE_DELAY`], [`DEFAULT_HAPROXY`]) with binaries from `bin_dir`.
    pub fn new(bin_dir: impl Into<PathBuf>) -> Self {
        let mut demo = DemoConfig::new(bin_dir);
        demo.run_timeout = Self::run_timeout_for(demo.rounds, DEFAULT_MESSAGE_DELAY);
        Self {
            demo,
            kill: KillTarget::default(),
            kill_after_round: DEFAULT_KILL_AFTER_ROUND,
            message_delay: DEFAULT_MESSAGE_DELAY,
            haproxy: None,
        }
    }

    /// A generous bound for `rounds` rounds paced by `delay`: 60 s for the failover plus, per
    /// round, twice (a takeover repeats rounds) 10 s and two paced messages.
    pub fn run_timeout_for(rounds: u64, delay: Duration) -> Duration {
        let round = Duration::from_secs(10).saturating_add(delay.saturating_mul(2));
        let rounds = u32::try_from(rounds.saturating_mul(2)).unwrap_or(u32::MAX);
        Duration::from_secs(60).saturating_add(round.saturating_mul(rounds))
    }

    fn validate(&self) -> Result<(), DemoError> {
        self.demo.validate()?;
        if self.demo.rounds < 2 {
            return Err(DemoError::Config(format!(
                "rounds must be at least 2 (one before the kill, one after), not {}",
                self.demo.rounds
            )));
        }
        if !(1..self.demo.rounds).contains(&self.kill_after_round) {
            return Err(DemoError::Config(format!(
                "the kill must come after a round in 1..={} (before the last), not after {}",
                self.demo.rounds - 1,
                self.kill_after_round
            )));
        }
        if self.message_delay > MAX_MESSAGE_DELAY {
            return Err(DemoError::Config(format!(
                "the message delay must be at most {MAX_MESSAGE_DELAY:?}, not {:?}",
                self.message_delay
            )));
        }
        Ok(())
    }
}

/// Why the high-availability demo stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HaError {
    /// What the single-SuperLink demo can fail with (bad settings, processes, the Exec API,
    /// the run's status, cancellation).
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// A program from a Debian package is not installed.
    #[error("{program} not found ({looked_for}): install Debian's {package} package")]
    Missing {
        /// The program.
        program: &'static str,
        /// Where the demo looked.
        looked_for: String,
        /// The package that has it.
        package: &'static str,
    },
    /// The throwaway PostgreSQL cluster could not be set up.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// HAProxy rejected the generated configuration.
    #[error("HAProxy rejected {}: {reason}", config.display())]
    BalancerConfig {
        /// The configuration file.
        config: PathBuf,
        /// HAProxy's complaint (its first error line).
        reason: String,
    },
    /// The kill or the failover did not go as it must.
    #[error("failover: {0}")]
    Failover(String),
}

impl From<flwr_runtime::ChildError> for HaError {
    fn from(error: flwr_runtime::ChildError) -> Self {
        Self::Demo(DemoError::Process(error))
    }
}

/// Receives the demo's progress.
pub trait HaReporter {
    /// Called once per event, in order, from the thread that called [`run_ha_with`].
    fn report(&mut self, event: HaEvent<'_>);
}

impl HaReporter for Silent {
    fn report(&mut self, _event: HaEvent<'_>) {}
}

/// One step of the high-availability demo, in the order they occur.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HaEvent<'a> {
    /// The work directory is ready (logs go to its `logs/` subdirectory).
    WorkDirReady {
        /// The directory.
        dir: &'a Path,
        /// Whether it is removed after a successful run.
        temporary: bool,
    },
    /// PostgreSQL accepts connections and the SuperLink database exists.
    PostgresStarted {
        /// The database URL with the password shown as `***`.
        url: &'a str,
    },
    /// A replica accepts connections.
    ReplicaStarted {
        /// Its name.
        name: &'a str,
        /// Its Fleet API address.
        fleet: &'a str,
        /// Its Exec API address.
        exec: &'a str,
        /// Its Prometheus metrics URL.
        metrics: &'a str,
    },
    /// HAProxy accepts connections.
    BalancerStarted {
        /// The Fleet frontend.
        fleet: &'a str,
        /// The Exec frontend.
        exec: &'a str,
        /// Its configuration file.
        config: &'a Path,
    },
    /// Every SuperNode registered through HAProxy.
    SuperNodesRegistered {
        /// How many.
        count: usize,
    },
    /// `StartRun` through HAProxy succeeded.
    RunStarted {
        /// The run.
        run_id: u64,
        /// Rounds requested.
        rounds: u64,
    },
    /// The run's ServerApp was found.
    ServerAppFound {
        /// The replica whose child it is.
        replica: &'a str,
        /// Its process id.
        pid: u32,
    },
    /// A round began (`attempt` counts ServerApp restarts, 0 for the first ServerApp).
    RoundStarted {
        /// The round.
        round: u64,
        /// Rounds requested.
        rounds: u64,
        /// Which ServerApp.
        attempt: u32,
    },
    /// A round ended.
    RoundCompleted {
        /// The round.
        round: u64,
        /// Rounds requested.
        rounds: u64,
        /// Which ServerApp.
        attempt: u32,
    },
    /// A replica was SIGKILLed.
    Killed {
        /// Which.
        replica: &'a str,
        /// Its process id.
        pid: u32,
        /// Whether the run's ServerApp was its child.
        ran_serverapp: bool,
    },
    /// The log stream through HAProxy broke and is being reopened.
    StreamReopening {
        /// Why.
        why: &'a str,
    },
    /// HAProxy's health checks marked the killed replica down.
    BalancerMarkedDown {
        /// The replica.
        replica: &'a str,
        /// Time since the kill (as seen by polling HAProxy's log).
        after: Duration,
    },
    /// The killed replica's ServerApp is gone.
    OldServerAppGone {
        /// Its process id.
        pid: u32,
        /// Time since the kill (as seen by polling).
        after: Duration,
    },
    /// The surviving replica started a new ServerApp for the run.
    TakenOver {
        /// The replica.
        replica: &'a str,
        /// The new ServerApp's process id.
        pid: u32,
        /// Time since the kill (as seen by polling).
        after: Duration,
    },
    /// The run's log started over at round 1.
    ServerAppRestarted {
        /// Time since the kill.
        after: Duration,
    },
    /// A round completed after the kill: the failover is over.
    Progressing {
        /// The round.
        round: u64,
        /// Time since the kill.
        after: Duration,
    },
    /// The run reached a final status.
    RunFinished {
        /// `status:sub_status`.
        status: &'a str,
    },
    /// A process exited after SIGTERM.
    Stopped {
        /// Which.
        name: &'a str,
        /// Its exit code (`None` if a signal ended it).
        exit_code: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
    },
    /// PostgreSQL stopped and its files are removed.
    PostgresStopped,
    /// [`HA_SUMMARY_FILE`] is written.
    SummaryWritten {
        /// Where.
        path: &'a Path,
    },
}

/// What one SuperNode logged after the kill.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SuperNodeAfterKill {
    /// The SuperNode.
    pub name: String,
    /// Whether it was still running when the run finished.
    pub running: bool,
    /// Warning and error lines it logged after the kill.
    pub warnings: usize,
    /// The first few of them.
    pub quoted: Vec<String>,
}

/// What a high-availability run did and measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct HaSummary {
    /// SuperNodes.
    pub nodes: usize,
    /// Rounds asked for.
    pub rounds_requested: u64,
    /// Rounds the final ServerApp reported metrics for.
    pub rounds_completed: u64,
    /// Per-round metrics of the final ServerApp, in round order.
    pub rounds: Vec<RoundMetrics>,
    /// Evaluation accuracy after the last round.
    pub final_accuracy: Option<f64>,
    /// The run.
    pub run_id: u64,
    /// Its final `status:sub_status`.
    pub run_status: String,
    /// The database URL, password shown as `***`.
    pub database: String,
    /// Which replica was to be killed.
    pub kill: KillTarget,
    /// The round after which it was killed.
    pub killed_after_round: u64,
    /// The replica that was killed.
    pub killed_replica: String,
    /// The replica whose child the ServerApp was at the kill.
    pub serverapp_replica: String,
    /// Whether the killed replica ran the ServerApp.
    pub killed_ran_serverapp: bool,
    /// Whether the surviving replica took the run over (a new ServerApp under it, the run's
    /// log starting over).
    pub taken_over: bool,
    /// Whether the survivor logged `took over run <id>`.
    pub takeover_logged: bool,
    /// How many times the run's log started over at round 1.
    pub restarts: u32,
    /// Seconds from the kill until a round completed again.
    pub failover_seconds: f64,
    /// Seconds from the kill until the survivor's new ServerApp was seen.
    pub takeover_seconds: Option<f64>,
    /// Seconds from the kill until the log showed round 1 again.
    pub restart_seconds: Option<f64>,
    /// Seconds from the kill until HAProxy logged the replica down.
    pub balancer_down_seconds: Option<f64>,
    /// Seconds from the kill until the killed replica's ServerApp was seen gone.
    pub old_serverapp_gone_seconds: Option<f64>,
    /// Times the log stream through HAProxy was reopened.
    pub stream_reopens: u32,
    /// SuperNode connections HAProxy had sent to the killed replica that the kill cut (their
    /// SuperNodes had to connect again).
    pub fleet_connections_cut: usize,
    /// The SuperNodes after the kill.
    pub supernodes: Vec<SuperNodeAfterKill>,
    /// Seconds from the start of the demo to its end.
    pub wall_time_seconds: f64,
    /// Where the summary was written.
    pub summary_path: PathBuf,
}

/// Runs the demo silently; see [`run_ha_with`].
///
/// # Errors
///
/// As [`run_ha_with`].
pub fn run_ha(config: HaConfig) -> Result<HaSummary, HaError> {
    run_ha_with(config, &mut Silent)
}

/// Runs the high-availability demo (see the module docs), reporting progress to `reporter`.
///
/// # Errors
///
/// An [`HaError`] for the first step that failed; every process has been stopped by then and
/// the work directory is kept.
pub fn run_ha_with(config: HaConfig, reporter: &mut dyn HaReporter) -> Result<HaSummary, HaError> {
    let started = Instant::now();
    config.validate()?;
    // Everything that needs no work directory first, so a bad setup leaves nothing behind.
    let binaries = Binaries::locate(&config.demo.bin_dir)?;
    let haproxy = locate_haproxy(config.haproxy.as_deref())?;
    let fab = bundle::build(&config.demo.app_dir)?;
    let overrides = crate::run_config_overrides(&config.demo, &fab.spec.config)?;
    // PostgreSQL lives in a private directory of its own, so it can start before the work
    // directory exists: a machine without it fails here, leaving nothing behind.
    let postgres = TempPostgres::start().map_err(postgres_error)?;
    let work = WorkDir::create(config.demo.work_dir.as_deref())?;
    reporter.report(HaEvent::WorkDirReady {
        dir: work.path(),
        temporary: work.is_temporary(),
    });
    let prepared = Prepared {
        binaries,
        haproxy,
        fab,
        overrides,
    };
    let result = ha_demo(&config, &prepared, postgres, work.path(), started, reporter);
    work.close(result.is_ok());
    result
}

/// What [`run_ha_with`] checks before it creates the work directory.
#[derive(Debug)]
struct Prepared {
    binaries: Binaries,
    haproxy: PathBuf,
    fab: bundle::Fab,
    overrides: Vec<(&'static str, flwr_proto::Scalar)>,
}

/// `given` if it is a file; without one, [`DEFAULT_HAPROXY`] or else `haproxy` on `PATH`.
fn locate_haproxy(given: Option<&Path>) -> Result<PathBuf, HaError> {
    let missing = |looked_for: String| HaError::Missing {
        program: "haproxy",
        looked_for,
        package: "haproxy",
    };
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(missing(path.display().to_string()))
        };
    }
    let default = Path::new(DEFAULT_HAPROXY);
    if default.is_file() {
        return Ok(default.to_owned());
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("haproxy"))
                .find(|candidate| candidate.is_file())
        })
        .ok_or_else(|| missing(format!("{DEFAULT_HAPROXY} and PATH")))
}

/// One SuperLink replica.
#[derive(Debug)]
struct Replica {
    name: &'static str,
    process: Proc,
    ports: SuperLinkPorts,
    /// Set once it has been SIGKILLed (and reaped).
    killed: bool,
}

/// Every process of the demo. Field order is drop order: SuperNodes, HAProxy, replicas, then
/// PostgreSQL, each killed as a process group.
#[derive(Debug)]
struct Cluster {
    supernodes: Vec<Proc>,
    balancer: Option<Proc>,
    replicas: Vec<Replica>,
    postgres: Option<TempPostgres>,
}

impl Cluster {
    /// Fails when a process that should run has exited.
    fn check_alive(&mut self) -> Result<(), DemoError> {
        self.supernodes
            .iter_mut()
            .chain(self.balancer.iter_mut())
            .chain(
                self.replicas
                    .iter_mut()
                    .filter(|replica| !replica.killed)
                    .map(|replica| &mut replica.process),
            )
            .try_for_each(check_running)
    }

    /// Ended SuperNode connections that HAProxy had sent to replica `index`, from its log.
    fn fleet_connections_of(&self, index: usize) -> usize {
        let log = self
            .balancer
            .as_ref()
            .and_then(|balancer| balancer.log_text().ok())
            .unwrap_or_default();
        REPLICAS
            .get(index)
            .map_or(0, |name| connections_served(&log, "fleet", name))
    }

    /// The replica whose child runs a ServerApp, and the ServerApp's pid, looking for up to
    /// [`FIND_SERVERAPP_LIMIT`].
    fn find_serverapp(&self, cancel: &Cancel) -> Result<(usize, u32), HaError> {
        let started = Instant::now();
        let polls = FIND_SERVERAPP_LIMIT.as_millis() / POLL.as_millis().max(1) + 1;
        for _ in 0..polls {
            for (index, replica) in self.replicas.iter().enumerate() {
                if replica.killed {
                    continue;
                }
                if let Some(&pid) = serverapps_of(replica.process.id()).first() {
                    return Ok((index, pid));
                }
            }
            if started.elapsed() >= FIND_SERVERAPP_LIMIT {
                break;
            }
            cancel.check()?;
            std::thread::sleep(POLL);
        }
        Err(HaError::Failover(format!(
            "no replica has a flwr-serverapp child (looked for {FIND_SERVERAPP_LIMIT:?}); if the \
             run was already over, a longer --message-delay-ms makes its rounds last longer"
        )))
    }

    /// SIGKILLs replica `index` (only its own process: its ServerApp must die by the
    /// parent-death signal, as it would in a crash) and reaps it; returns the kill instant.
    fn kill(&mut self, index: usize) -> Result<Instant, HaError> {
        let replica = self
            .replicas
            .get_mut(index)
            .ok_or_else(|| HaError::Failover(format!("no replica {index}")))?;
        let pid = replica.process.id().to_string();
        // The shell's builtin: no extra dependency for one signal.
        let command = CommandLine::new("sh")
            .arg("-c")
            .arg("kill -KILL \"$1\"")
            .arg("kill")
            .arg(&pid);
        let at = Instant::now();
        let output = command.output(COMMAND_LIMIT)?;
        if !output.status.success() {
            return Err(HaError::Failover(format!(
                "kill -KILL {pid} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        replica.process.wait_for_exit(REAP_LIMIT)?;
        replica.killed = true;
        Ok(at)
    }
}

/// The steps, in `dir`.
fn ha_demo(
    config: &HaConfig,
    prepared: &Prepared,
    postgres: TempPostgres,
    dir: &Path,
    started: Instant,
    reporter: &mut dyn HaReporter,
) -> Result<HaSummary, HaError> {
    let demo = &config.demo;
    let cancel = &demo.cancel;
    let binaries = &prepared.binaries;
    let credentials = credentials::generate(dir, demo.nodes)?;

    // Per replica: Fleet, ServerAppIo, Exec, metrics; then HAProxy's Fleet and Exec
    // frontends; then one ClientAppIo port per SuperNode. `free_ports_vec` returns exactly as
    // many as asked for, so the slicing below holds.
    let ports = flwr_runtime::free_ports_vec(4 * REPLICAS.len() + 2 + demo.nodes)?;
    let (superlink_ports, rest) = ports.split_at(4 * REPLICAS.len());
    let replica_ports: Vec<SuperLinkPorts> = superlink_ports
        .chunks(4)
        .filter_map(SuperLinkPorts::from_slice)
        .collect();
    let (front_fleet, front_exec) = (rest[0], rest[1]);
    let layout = Layout {
        logs: dir.join("logs"),
        bin: dir.join("bin"),
        homes: dir.join("home"),
        superlink: replica_ports[0],
        clientappio: rest[2..].to_vec(),
    };
    if config.message_delay.is_zero() {
        binaries.link_apps(&layout.bin)?;
    } else {
        binaries.link_apps_paced(&layout.bin, config.message_delay)?;
    }

    cancel.check()?;
    let mut cluster = Cluster {
        supernodes: Vec::new(),
        balancer: None,
        replicas: Vec::new(),
        postgres: Some(postgres),
    };
    let database = create_database(&cluster)?;
    reporter.report(HaEvent::PostgresStarted {
        url: &database.redacted,
    });

    for (name, ports) in REPLICAS.into_iter().zip(&replica_ports) {
        cancel.check()?;
        // The password goes in PGPASSWORD, not on the command line, where every local user
        // could read it.
        let (bare, password) = split_password(&database.url);
        let mut command = layout
            .superlink_command(binaries, &credentials, name, ports)
            .arg("--database")
            .arg(bare);
        if let Some(password) = password {
            command = command.env("PGPASSWORD", password);
        }
        let process = spawn_superlink(name, &command, &layout, ports, cancel)
            .map_err(|error| database.mask(error))?;
        cluster.replicas.push(Replica {
            name,
            process,
            ports: *ports,
            killed: false,
        });
        reporter.report(HaEvent::ReplicaStarted {
            name,
            fleet: &Layout::address(ports.fleet),
            exec: &Layout::address(ports.exec),
            metrics: &format!("http://{}/metrics", Layout::address(ports.metrics)),
        });
    }

    let balancer_config = write_balancer_config(dir, front_fleet, front_exec, &cluster.replicas)?;
    check_balancer_config(&prepared.haproxy, &balancer_config)?;
    let command = CommandLine::new(&prepared.haproxy)
        .arg("-f")
        .arg(&balancer_config)
        .arg("-db");
    let mut balancer = spawn_logged("haproxy", &command, &layout.logs)?;
    for port in [front_fleet, front_exec] {
        wait_listening(&mut balancer, port, cancel)?;
    }
    cluster.balancer = Some(balancer);
    reporter.report(HaEvent::BalancerStarted {
        fleet: &Layout::address(front_fleet),
        exec: &Layout::address(front_exec),
        config: &balancer_config,
    });

    start_supernodes(
        config,
        &mut cluster,
        &layout,
        binaries,
        &credentials,
        front_fleet,
    )?;
    reporter.report(HaEvent::SuperNodesRegistered { count: demo.nodes });

    let ca = fs::read(&credentials.ca_cert).map_err(io_error(format!(
        "reading {}",
        credentials.ca_cert.display()
    )))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("starting the async runtime"))?;
    let rounds = demo.rounds;
    let mut log = RunLog::default();
    let mut follower = Follower {
        cluster: &mut cluster,
        log: &mut log,
        reporter,
        cancel,
        rounds,
        kill_target: config.kill,
        kill_after_round: config.kill_after_round,
        kill: None,
        failover: Failover::default(),
        reopens: 0,
        supernode_logs_at_kill: Vec::new(),
        fleet_connections_before_kill: 0,
    };
    let (run_id, status) = runtime.block_on(async {
        let mut exec = ExecApi::connect(front_exec, &ca, credentials::HOSTS[0]).await?;
        let start = exec.start_run(
            prepared.fab.content.clone(),
            &prepared.fab.hash,
            &prepared.overrides,
        );
        let run_id = tokio::time::timeout(CALL_LIMIT, start)
            .await
            .map_err(|_| DemoError::Timeout {
                waiting_for: "StartRun through HAProxy".to_owned(),
                after: CALL_LIMIT,
            })??;
        follower
            .reporter
            .report(HaEvent::RunStarted { run_id, rounds });
        cancel.check()?;
        exec.follow_logs(run_id, demo.run_timeout, THROUGH_BALANCER, &mut follower)
            .await?;
        let rest = follower.log.finish();
        follower.progress(rest)?;
        cancel.check()?;
        let status = status_through_balancer(&mut exec, run_id, &mut follower).await?;
        Ok::<_, HaError>((run_id, status))
    })?;
    drop(runtime);
    follower.observe();
    let Follower {
        kill,
        failover,
        reopens,
        supernode_logs_at_kill,
        fleet_connections_before_kill,
        ..
    } = follower;
    reporter.report(HaEvent::RunFinished {
        status: &status.status,
    });
    if !status.completed() {
        return Err(DemoError::RunFailed {
            run_id,
            status: status.status,
            details: status.details,
        }
        .into());
    }
    let Some(kill) = kill else {
        return Err(HaError::Failover(format!(
            "the run finished before round {} was seen ending, so no replica was killed",
            config.kill_after_round
        )));
    };
    let Some((_, failover_after)) = failover.progress else {
        return Err(HaError::Failover(
            "the run finished without a round completing after the kill (it was over before the \
             kill took effect; a longer --message-delay-ms makes rounds last longer)"
                .to_owned(),
        ));
    };

    let rounds_metrics: Vec<RoundMetrics> = log
        .history()
        .into_iter()
        .filter(|summary| summary.round <= rounds)
        .map(RoundMetrics::from)
        .collect();
    if u64::try_from(rounds_metrics.len()).ok() != Some(rounds) {
        return Err(HaError::Failover(format!(
            "the run completed but its log reports {} of {rounds} rounds",
            rounds_metrics.len()
        )));
    }
    let survivor = 1 - kill.replica;
    let survivor_log = cluster.replicas[survivor]
        .process
        .log_text()
        .unwrap_or_default();
    let takeover_logged = survivor_log.contains(&format!("took over run {run_id}"));
    let taken_over = failover.taken_over.is_some() && log.restarts() > 0;
    if kill.ran_serverapp && !taken_over {
        return Err(HaError::Failover(format!(
            "the run completed, but {} never started its ServerApp again (restarts in the log: \
             {}); see {}",
            REPLICAS[survivor],
            log.restarts(),
            cluster.replicas[survivor].process.log_path().display()
        )));
    }
    let supernodes = supernodes_after_kill(&mut cluster, &supernode_logs_at_kill);

    // The orderly stop: SuperNodes first (they deregister while a SuperLink still answers),
    // then the surviving replica, HAProxy and PostgreSQL.
    let mut stopped = |name: &str, exit_code| {
        reporter.report(HaEvent::Stopped {
            name,
            exit_code,
            signal: None,
        });
    };
    let supernodes_stopped = stop_all(&mut cluster.supernodes, &mut stopped);
    let survivor_stopped = stop_all(
        std::slice::from_mut(&mut cluster.replicas[survivor].process),
        &mut stopped,
    );
    let fleet_connections_cut = cluster
        .fleet_connections_of(kill.replica)
        .saturating_sub(fleet_connections_before_kill);
    if let Some(mut balancer) = cluster.balancer.take() {
        // HAProxy ends by SIGTERM's default action (no exit code); that says nothing about the
        // demo.
        let status = balancer.terminate(STOP_GRACE)?;
        reporter.report(HaEvent::Stopped {
            name: balancer.name(),
            exit_code: status.code(),
            signal: std::os::unix::process::ExitStatusExt::signal(&status),
        });
    }
    if let Some(postgres) = cluster.postgres.take() {
        // Dropping it stops the server and removes its directory.
        drop(postgres);
        reporter.report(HaEvent::PostgresStopped);
    }
    supernodes_stopped?;
    survivor_stopped?;

    let restart_after = failover.restarted;
    let final_accuracy = rounds_metrics.last().and_then(|round| round.eval_accuracy);
    let mut summary = HaSummary {
        nodes: demo.nodes,
        rounds_requested: rounds,
        rounds_completed: u64::try_from(rounds_metrics.len()).unwrap_or(u64::MAX),
        rounds: rounds_metrics,
        final_accuracy,
        run_id,
        run_status: status.status,
        database: database.redacted.clone(),
        kill: config.kill,
        killed_after_round: config.kill_after_round,
        killed_replica: REPLICAS[kill.replica].to_owned(),
        serverapp_replica: REPLICAS[kill.serverapp_replica].to_owned(),
        killed_ran_serverapp: kill.ran_serverapp,
        taken_over,
        takeover_logged,
        restarts: log.restarts(),
        failover_seconds: failover_after.as_secs_f64(),
        takeover_seconds: failover.taken_over.map(|(_, _, after)| after.as_secs_f64()),
        restart_seconds: restart_after.map(|after| after.as_secs_f64()),
        balancer_down_seconds: failover.balancer_down.map(|after| after.as_secs_f64()),
        old_serverapp_gone_seconds: failover.old_serverapp_gone.map(|after| after.as_secs_f64()),
        stream_reopens: reopens,
        fleet_connections_cut,
        supernodes,
        wall_time_seconds: started.elapsed().as_secs_f64(),
        summary_path: demo.out_dir.join(HA_SUMMARY_FILE),
    };
    write_summary(&mut summary)?;
    reporter.report(HaEvent::SummaryWritten {
        path: &summary.summary_path,
    });
    Ok(summary)
}

/// Starts the SuperNodes against HAProxy's Fleet frontend and waits until each registered.
fn start_supernodes(
    config: &HaConfig,
    cluster: &mut Cluster,
    layout: &Layout,
    binaries: &Binaries,
    credentials: &Credentials,
    front_fleet: u16,
) -> Result<(), HaError> {
    let superlink = Layout::address(front_fleet);
    let nodes = credentials.supernodes.len();
    for (index, keys) in credentials.supernodes.iter().enumerate() {
        config.demo.cancel.check()?;
        let name = format!("supernode-{index}");
        let node = SuperNodeSpec {
            name: &name,
            superlink: &superlink,
            partition: index,
            partitions: nodes,
            clientappio: layout.clientappio.get(index).copied().unwrap_or_default(),
            keys,
        };
        let mut command = layout.supernode_command(binaries, credentials, &node);
        if !config.message_delay.is_zero() {
            // The pacing script runs once per message only if each message gets a process.
            command = command.arg("--clientapp-lifetime").arg("per-message");
        }
        cluster
            .supernodes
            .push(spawn_logged(&name, &command, &layout.logs)?);
    }
    for supernode in &mut cluster.supernodes {
        wait_registered(supernode, &config.demo.cancel)?;
    }
    Ok(())
}

/// The kill, once done.
#[derive(Clone, Copy, Debug)]
struct Kill {
    /// The killed replica.
    replica: usize,
    /// The replica whose child the ServerApp was.
    serverapp_replica: usize,
    /// The ServerApp's pid at the kill.
    serverapp_pid: u32,
    /// Whether the killed replica ran it.
    ran_serverapp: bool,
    /// When.
    at: Instant,
}

/// What the demo saw after the kill, each as time since the kill.
#[derive(Clone, Copy, Debug, Default)]
struct Failover {
    /// A round completed again (which, when).
    progress: Option<(u64, Duration)>,
    /// The log started over at round 1.
    restarted: Option<Duration>,
    /// The survivor's new ServerApp (replica, pid, when).
    taken_over: Option<(usize, u32, Duration)>,
    /// HAProxy marked the killed replica down.
    balancer_down: Option<Duration>,
    /// The killed replica's ServerApp was gone.
    old_serverapp_gone: Option<Duration>,
}

/// Follows the run's log: reports rounds, kills a replica after the chosen round, watches the
/// failover, and checks the processes.
struct Follower<'a> {
    cluster: &'a mut Cluster,
    log: &'a mut RunLog,
    reporter: &'a mut dyn HaReporter,
    cancel: &'a Cancel,
    rounds: u64,
    kill_target: KillTarget,
    kill_after_round: u64,
    kill: Option<Kill>,
    failover: Failover,
    reopens: u32,
    /// How much each SuperNode had logged at the kill, in bytes.
    supernode_logs_at_kill: Vec<u64>,
    /// Fleet connections of the killed replica that had ended before the kill.
    fleet_connections_before_kill: usize,
}

impl Follower<'_> {
    /// Reports `progress`; kills when its round has ended; notes the failover's end.
    fn progress(&mut self, progress: Vec<Progress>) -> Result<(), HaError> {
        // Only chunks read after the kill tell what happened after it: the rest of the chunk
        // that showed the kill's round ending was logged before the kill.
        let after_kill = self.kill.is_some();
        for step in progress {
            let attempt = self.log.restarts();
            let rounds = self.rounds;
            match step {
                Progress::Began(round) => self.reporter.report(HaEvent::RoundStarted {
                    round,
                    rounds,
                    attempt,
                }),
                Progress::Ended(round) => {
                    self.reporter.report(HaEvent::RoundCompleted {
                        round,
                        rounds,
                        attempt,
                    });
                    if self.kill.is_none() && attempt == 0 && round == self.kill_after_round {
                        self.kill_replica()?;
                    } else if after_kill {
                        self.note_progress(round, attempt);
                    }
                }
                Progress::Restarted => {
                    if let Some(kill) = self.kill.filter(|_| after_kill) {
                        if self.failover.restarted.is_none() {
                            let after = kill.at.elapsed();
                            self.failover.restarted = Some(after);
                            self.reporter.report(HaEvent::ServerAppRestarted { after });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A round ended after the kill: the first one that counts ends the failover.
    fn note_progress(&mut self, round: u64, attempt: u32) {
        let Some(kill) = self.kill else { return };
        if self.failover.progress.is_some() {
            return;
        }
        // After a takeover only the new ServerApp's rounds show the run moving again.
        if kill.ran_serverapp && attempt == 0 {
            return;
        }
        let after = kill.at.elapsed();
        self.failover.progress = Some((round, after));
        self.reporter.report(HaEvent::Progressing { round, after });
    }

    fn kill_replica(&mut self) -> Result<(), HaError> {
        let (serverapp_replica, serverapp_pid) = self.cluster.find_serverapp(self.cancel)?;
        self.reporter.report(HaEvent::ServerAppFound {
            replica: REPLICAS[serverapp_replica],
            pid: serverapp_pid,
        });
        let replica = match self.kill_target {
            KillTarget::ServerApp => serverapp_replica,
            KillTarget::Other => 1 - serverapp_replica,
        };
        self.supernode_logs_at_kill = self
            .cluster
            .supernodes
            .iter()
            .map(|node| fs::metadata(node.log_path()).map_or(0, |meta| meta.len()))
            .collect();
        self.fleet_connections_before_kill = self.cluster.fleet_connections_of(replica);
        let pid = self.cluster.replicas[replica].process.id();
        let at = self.cluster.kill(replica)?;
        self.kill = Some(Kill {
            replica,
            serverapp_replica,
            serverapp_pid,
            ran_serverapp: replica == serverapp_replica,
            at,
        });
        self.reporter.report(HaEvent::Killed {
            replica: REPLICAS[replica],
            pid,
            ran_serverapp: replica == serverapp_replica,
        });
        Ok(())
    }

    /// Notes what changed since the kill: HAProxy's verdict, the old ServerApp's end, the
    /// survivor's new ServerApp.
    fn observe(&mut self) {
        let Some(kill) = self.kill else { return };
        let after = kill.at.elapsed();
        let killed = REPLICAS[kill.replica];
        if self.failover.balancer_down.is_none() {
            let down = format!("{killed} is DOWN");
            let marked = self
                .cluster
                .balancer
                .as_ref()
                .and_then(|balancer| balancer.log_text().ok())
                .is_some_and(|log| log.lines().any(|line| line.contains(&down)));
            if marked {
                self.failover.balancer_down = Some(after);
                self.reporter.report(HaEvent::BalancerMarkedDown {
                    replica: killed,
                    after,
                });
            }
        }
        if kill.ran_serverapp {
            if self.failover.old_serverapp_gone.is_none() && !is_alive(kill.serverapp_pid) {
                self.failover.old_serverapp_gone = Some(after);
                self.reporter.report(HaEvent::OldServerAppGone {
                    pid: kill.serverapp_pid,
                    after,
                });
            }
            if self.failover.taken_over.is_none() {
                let survivor = 1 - kill.replica;
                let parent = self.cluster.replicas[survivor].process.id();
                if let Some(&pid) = serverapps_of(parent).first() {
                    self.failover.taken_over = Some((survivor, pid, after));
                    self.reporter.report(HaEvent::TakenOver {
                        replica: REPLICAS[survivor],
                        pid,
                        after,
                    });
                }
            }
        }
    }
}

impl LogFollower for Follower<'_> {
    type Error = HaError;

    fn chunk(&mut self, text: &str) -> Result<(), HaError> {
        let progress = self.log.push(text);
        self.observe();
        self.progress(progress)
    }

    fn health(&mut self) -> Result<(), HaError> {
        self.cancel.check()?;
        self.observe();
        Ok(self.cluster.check_alive()?)
    }

    fn reopening(&mut self, why: &str) {
        self.reopens += 1;
        self.reporter.report(HaEvent::StreamReopening { why });
    }
}

/// `ListRuns` through HAProxy, retried while the connection recovers from a dead backend.
async fn status_through_balancer(
    exec: &mut ExecApi,
    run_id: u64,
    follower: &mut Follower<'_>,
) -> Result<FinalStatus, HaError> {
    let timed_out = || DemoError::Timeout {
        waiting_for: format!("ListRuns of run {run_id} through HAProxy"),
        after: CALL_LIMIT,
    };
    let mut pause = THROUGH_BALANCER.pause;
    for _ in 1..STATUS_TRIES {
        let status = tokio::time::timeout(CALL_LIMIT, exec.status(run_id))
            .await
            .map_err(|_| timed_out())?;
        match status {
            Err(DemoError::Rpc { code, message }) if THROUGH_BALANCER.retries(code) => {
                follower.reopening(&format!("ListRuns: {message} ({code:?})"));
                follower.health()?;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(THROUGH_BALANCER.max_pause);
            }
            done => return Ok(done?),
        }
    }
    let status = tokio::time::timeout(CALL_LIMIT, exec.status(run_id))
        .await
        .map_err(|_| timed_out())?;
    Ok(status?)
}

/// How each SuperNode fared after the kill: still running, and what it warned about.
fn supernodes_after_kill(cluster: &mut Cluster, logged_at_kill: &[u64]) -> Vec<SuperNodeAfterKill> {
    cluster
        .supernodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let text = fs::read(node.log_path()).unwrap_or_default();
            let from = logged_at_kill
                .get(index)
                .and_then(|&offset| usize::try_from(offset).ok())
                .unwrap_or(0)
                .min(text.len());
            let after = String::from_utf8_lossy(&text[from..]).into_owned();
            let warnings: Vec<&str> = after
                .lines()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .collect();
            SuperNodeAfterKill {
                name: node.name().to_owned(),
                running: node.is_running(),
                warnings: warnings.len(),
                quoted: warnings
                    .iter()
                    .take(QUOTED_LINES)
                    .map(|line| line.trim().to_owned())
                    .collect(),
            }
        })
        .collect()
}

/// How many connections of `frontend` HAProxy's log shows `server` served: with `option
/// tcplog` a line `... <frontend> <frontend>_replicas/<server> ...` is written when one ends
/// (health-check lines name the server too, but not the frontend).
fn connections_served(log: &str, frontend: &str, server: &str) -> usize {
    let served = format!(" {frontend} {frontend}_replicas/{server} ");
    log.lines().filter(|line| line.contains(&served)).count()
}

/// Writes `haproxy/haproxy.cfg` for the two frontends over the replicas.
fn write_balancer_config(
    dir: &Path,
    fleet: u16,
    exec: u16,
    replicas: &[Replica],
) -> Result<PathBuf, HaError> {
    let config_dir = dir.join("haproxy");
    fs::create_dir_all(&config_dir)
        .map_err(io_error(format!("creating {}", config_dir.display())))?;
    let path = config_dir.join("haproxy.cfg");
    let servers: Vec<(&str, SuperLinkPorts)> = replicas
        .iter()
        .map(|replica| (replica.name, replica.ports))
        .collect();
    fs::write(&path, balancer_config(fleet, exec, &servers))
        .map_err(io_error(format!("writing {}", path.display())))?;
    Ok(path)
}

/// HAProxy's configuration: TCP mode (TLS passes through to the replicas, which share one
/// certificate), a Fleet frontend balanced round-robin over the replicas and an Exec frontend
/// that sends everything to the first healthy one. Listens only on the given 127.0.0.1 ports.
fn balancer_config(fleet: u16, exec: u16, replicas: &[(&str, SuperLinkPorts)]) -> String {
    let servers = |port: fn(&SuperLinkPorts) -> u16| -> String {
        replicas
            .iter()
            .map(|(name, ports)| {
                // A replica counts as down after two failed checks (about a second) and as up
                // again after one.
                format!(
                    "    server {name} 127.0.0.1:{} check inter 500ms fall 2 rise 1\n",
                    port(ports)
                )
            })
            .collect()
    };
    format!(
        "# Written by flower-ha-demo: two SuperLink replicas on one PostgreSQL database.
global
    log stdout format raw local0 info
    maxconn 1024

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    # A connection to a dead replica is retried on the other.
    option redispatch
    retries 2
    timeout connect 1s
    timeout check 1s
    # SuperNodes hold pulls for 20 s and ping over HTTP/2 after 60 s of silence; the log
    # stream can be quiet while a run is taken over.
    timeout client 90s
    timeout server 90s

frontend fleet
    bind 127.0.0.1:{fleet}
    default_backend fleet_replicas

backend fleet_replicas
    balance roundrobin
{fleet_servers}
frontend exec
    bind 127.0.0.1:{exec}
    default_backend exec_replicas

backend exec_replicas
    # One replica serves the CLI side while it is up; the other takes over when it is not.
    balance first
{exec_servers}",
        fleet_servers = servers(|ports| ports.fleet),
        exec_servers = servers(|ports| ports.exec),
    )
}

/// `haproxy -c -f <config>`: a clear error for a configuration HAProxy rejects.
fn check_balancer_config(haproxy: &Path, config: &Path) -> Result<(), HaError> {
    let output = CommandLine::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output(COMMAND_LIMIT)?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let reason = text
        .lines()
        .find(|line| line.contains("ALERT"))
        .or_else(|| text.lines().find(|line| !line.trim().is_empty()))
        .unwrap_or("no output")
        .trim()
        .to_owned();
    Err(HaError::BalancerConfig {
        config: config.to_owned(),
        reason: format!("{reason} ({})", output.status),
    })
}

/// Writes the summary as JSON to its path.
fn write_summary(summary: &mut HaSummary) -> Result<(), HaError> {
    let path = std::path::absolute(&summary.summary_path).map_err(io_error(format!(
        "resolving {}",
        summary.summary_path.display()
    )))?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    }
    summary.summary_path = path;
    let json = serde_json::to_string_pretty(summary)
        .map_err(|error| io_error("encoding the summary")(std::io::Error::other(error)))?;
    fs::write(&summary.summary_path, json + "\n").map_err(io_error(format!(
        "writing {}",
        summary.summary_path.display()
    )))?;
    Ok(())
}

/// `(state, parent pid)` of a process, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces and parentheses of its own.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn is_alive(pid: u32) -> bool {
    stat_of(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
}

/// The live `flwr-serverapp` children of `parent`: the launcher starts them with
/// `--run-once`, whatever the program is called.
fn serverapps_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_of(pid)
                .is_some_and(|(state, ppid)| ppid == parent && !matches!(state, 'Z' | 'X' | 'x'))
        })
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == b"--run-once"))
        })
        .collect();
    found.sort_unstable();
    found
}

/// `scheme://user:***@host/...` for `scheme://user:secret@host/...`; other text unchanged.
pub fn redact_password(url: &str) -> String {
    match split_password(url) {
        (_, None) => url.to_owned(),
        (without, Some(_)) => match without.split_once("@") {
            // `without` is `scheme://user@rest`: put the mask back between user and host.
            Some((user, rest)) => format!("{user}:***@{rest}"),
            None => without,
        },
    }
}

/// The URL without its password, and the password.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    match rest[..at].split_once(':') {
        Some((user, password)) => (
            format!("{scheme}://{user}{}", &rest[at..]),
            Some(password.to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

/// The database the replicas share.
#[derive(Debug)]
struct Database {
    /// The URL for `--database`, password included.
    url: String,
    /// The URL as shown: password as `***`.
    redacted: String,
}

impl Database {
    /// `error` with the URL masked: a process that cannot start is reported with its command
    /// line, which holds the URL.
    fn mask(&self, error: DemoError) -> DemoError {
        match error {
            DemoError::Process(flwr_runtime::ChildError::Io { context, source }) => {
                DemoError::Process(flwr_runtime::ChildError::Io {
                    context: context.replace(&self.url, &self.redacted),
                    source,
                })
            }
            other => other,
        }
    }
}

/// Creates the SuperLinks' database on the cluster.
fn create_database(cluster: &Cluster) -> Result<Database, HaError> {
    let postgres = cluster
        .postgres
        .as_ref()
        .ok_or_else(|| HaError::Postgres("the cluster is not running".to_owned()))?;
    let url = postgres.create_database(DATABASE).map_err(postgres_error)?;
    Ok(Database {
        redacted: redact_password(&url),
        url,
    })
}

/// [`HaError::Missing`] when PostgreSQL is not installed, else the first line of the
/// harness's error (the rest is command output, which may be long).
fn postgres_error(error: flwr_runtime::ChildError) -> HaError {
    if let flwr_runtime::ChildError::Io { source, .. } = &error {
        if source.kind() == std::io::ErrorKind::NotFound {
            return HaError::Missing {
                program: "PostgreSQL (initdb, pg_ctl)",
                looked_for: "/usr/lib/postgresql/<version>/bin and PATH".to_owned(),
                package: "postgresql",
            };
        }
    }
    let message = error.to_string();
    HaError::Postgres(message.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_split_off() {
        let url = "postgresql://flwr:s3cr@t@127.0.0.1:5433/flower";
        assert_eq!(
            redact_password(url),
            "postgresql://flwr:***@127.0.0.1:5433/flower"
        );
        assert_eq!(
            split_password(url),
            (
                "postgresql://flwr@127.0.0.1:5433/flower".to_owned(),
                Some("s3cr@t".to_owned())
            )
        );
        for plain in [
            "postgresql://flwr@host/db",
            "postgresql://host/db",
            "not a url",
        ] {
            assert_eq!(redact_password(plain), plain);
            assert_eq!(split_password(plain), (plain.to_owned(), None));
        }
    }

    #[test]
    fn the_balancer_listens_on_loopback_only_and_checks_both_replicas() {
        let ports = |base: u16| SuperLinkPorts {
            fleet: base,
            serverappio: base + 1,
            exec: base + 2,
            metrics: base + 3,
        };
        let config = balancer_config(
            9000,
            9001,
            &[("superlink-a", ports(9100)), ("superlink-b", ports(9200))],
        );
        let binds: Vec<&str> = config
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("bind"))
            .collect();
        assert_eq!(binds, ["bind 127.0.0.1:9000", "bind 127.0.0.1:9001"]);
        for server in [
            "server superlink-a 127.0.0.1:9100 check inter 500ms fall 2 rise 1",
            "server superlink-b 127.0.0.1:9200 check inter 500ms fall 2 rise 1",
            "server superlink-a 127.0.0.1:9102 check",
            "server superlink-b 127.0.0.1:9202 check",
        ] {
            assert!(config.contains(server), "{server} missing:\n{config}");
        }
        assert!(!config.contains("9101") && !config.contains("9103"));
        for setting in [
            "mode tcp",
            "balance roundrobin",
            "balance first",
            "option redispatch",
        ] {
            assert!(config.contains(setting), "{setting} missing:\n{config}");
        }
    }

    #[test]
    fn connections_are_counted_per_server_from_the_tcp_log() {
        let log = "\
127.0.0.1:1 [30/Nov/2026:20:19:31.353] fleet fleet_replicas/superlink-b 1/1/4605 7546 -- 3/2/1/0/0 0/0
Server fleet_replicas/superlink-b is DOWN, reason: Layer4 connection problem
127.0.0.1:2 [30/Nov/2026:20:19:31.403] exec exec_replicas/superlink-b 1/0/8575 7345 -- 3/1/0/0/0 0/0
127.0.0.1:3 [30/Nov/2026:20:19:31.357] fleet fleet_replicas/superlink-a 1/0/8624 10184 -- 2/2/1/1/0 0/0
";
        assert_eq!(connections_served(log, "fleet", "superlink-b"), 1);
        assert_eq!(connections_served(log, "fleet", "superlink-a"), 1);
        assert_eq!(connections_served(log, "exec", "superlink-b"), 1);
        assert_eq!(connections_served(log, "exec", "superlink-a"), 0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut config = HaConfig::new("/nonexistent");
        assert!(config.validate().is_ok());
        config.kill_after_round = config.demo.rounds;
        assert!(matches!(config.validate(), Err(DemoError::Config(_))));
        config.kill_after_round = 0;
        assert!(matches!(config.validate(), Err(DemoError::Config(_))));
        config.kill_after_round = 1;
        config.demo.rounds = 1;
        assert!(matches!(config.validate(), Err(DemoError::Config(_))));
        config.demo.rounds = 3;
        config.message_delay = MAX_MESSAGE_DELAY + Duration::from_millis(1);
        assert!(matches!(config.validate(), Err(DemoError::Config(_))));
    }

    #[test]
    fn proc_stat_parsing_finds_this_process() {
        let me = std::process::id();
        let (state, parent) = stat_of(me).expect("own stat");
        assert!(matches!(state, 'R' | 'S' | 'D'), "{state}");
        assert!(parent > 0);
        assert!(is_alive(me));
        assert!(serverapps_of(me).is_empty());
    }
}
