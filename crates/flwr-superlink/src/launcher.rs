//! The ServerApp launcher of `--isolation subprocess` (BEHAVIOR.md §4.5): when a run is created
//! (and every 3 s, as the reference's scheduler), if a run is pending and no child is already
//! handling it, spawn
//! `flwr-serverapp --run-once --serverappio-api-address <addr> --insecure`.
//!
//! Unlike the reference scheduler, which spawns blindly every 3 s and forgets its children,
//! each child here is supervised:
//!
//! - it runs in its own process group, is killed on drop, and is always reaped;
//! - it gets SIGKILL from the kernel when the SuperLink dies, even by SIGKILL
//!   ([`flwr_runtime::process::tie_to_parent`]);
//! - when it exits before its run finished, the run is marked `finished:failed` with the exit
//!   status in `details` (a run still `pending` gets [`MAX_ATTEMPTS`] tries first), so a broken
//!   app cannot make the SuperLink spawn forever;
//! - `StopRun` ([`LauncherHandle::stop_run`]) and shutdown kill its process group (SIGTERM, then
//!   SIGKILL after [`KILL_GRACE`]);
//! - runs that a previous SuperLink process left `starting` or `running` (it was killed or
//!   crashed, taking their ServerApps with it) are marked `finished:failed` at start
//!   ([`INTERRUPTED`]), so a restart on the same database never leaves a run stuck.
//!
//! On a store shared by several replicas (PostgreSQL) a run is launched by the replica that
//! [claims](LinkState::claim_pending_run) it, which renews its lease every
//! [`SHARED_POLL_INTERVAL`] while the ServerApp lives. When a replica dies, its ServerApps die
//! with it and its leases expire after [`LEASE`]; another replica then [takes the runs
//! over](LinkState::take_over_orphans) and starts their ServerApps again from the beginning,
//! instead of failing them. A replica that cannot renew for a whole lease kills its own
//! ServerApps, since another replica may have taken their runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flwr_core::Address;
use flwr_proto::RunStatus;
use flwr_runtime::process::{self, tie_to_parent, ProcessGroup};
use flwr_runtime::task::{self, TaskHandle};
use flwr_state::lifecycle::{FAILED, FINISHED, PENDING, RUNNING, STARTING};
use flwr_state::LinkState;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::LauncherCounters;

/// How often the launcher looks for a pending run (the reference's scheduler period).
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// How long a launch lease lasts without renewal (shared stores): a dead replica's runs are
/// taken over this long after its last renewal.
pub const LEASE: Duration = Duration::from_secs(4);
/// How often a launcher on a shared store renews its leases and looks for runs to take over
/// or start (other replicas' new runs also wake it at once).
pub const SHARED_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How many children may exit while their run is still `pending` before the run is failed.
pub const MAX_ATTEMPTS: u32 = 3;
/// How long a child may take to exit after SIGTERM before its process group gets SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Bound of the command queue from the services to the launcher.
const COMMAND_QUEUE: usize = 64;

/// What the launcher spawns and where the child should connect.
#[derive(Debug, Clone)]
pub struct LauncherSettings {
    /// The program, looked up on `PATH` unless it is a path (`flwr-serverapp`).
    pub program: PathBuf,
    /// The ServerAppIo address given to the child (bind address with `0.0.0.0` → `127.0.0.1`).
    pub serverappio_address: Address,
    /// Period of the pending-run check.
    pub poll_interval: Duration,
    /// `--grpc-max-message-length`, told to the child when it is not the reference's.
    pub max_message_size: usize,
}

/// Lets the services tell the launcher about runs; cheap to clone. A SuperLink without a
/// launcher (`--isolation process`) uses [`LauncherHandle::disabled`].
#[derive(Debug, Clone)]
pub struct LauncherHandle {
    commands: Option<mpsc::Sender<LauncherCommand>>,
}

/// What the services tell the launcher.
#[derive(Debug, Clone, Copy)]
enum LauncherCommand {
    /// Kill the ServerApp of this run.
    Stop(u64),
    /// A run was created: look for pending runs now rather than at the next poll.
    Look,
}

impl LauncherHandle {
    /// A handle that goes nowhere.
    pub fn disabled() -> Self {
        Self { commands: None }
    }

    /// The run was stopped: kill the process group of its ServerApp, if one runs.
    pub fn stop_run(&self, run_id: u64) {
        let Some(commands) = &self.commands else {
            return;
        };
        if commands.try_send(LauncherCommand::Stop(run_id)).is_err() {
            // Full queue or launcher gone: the child learns about the stop through
            // PERMISSION_DENIED on its next call and exits by itself.
            tracing::warn!(run_id, "could not ask the launcher to stop the ServerApp");
        }
    }
}

impl LauncherHandle {
    /// A run became pending: launch its ServerApp now instead of at the next poll. A full
    /// queue already holds a wake-up, and the poll remains as the fallback.
    pub fn run_pending(&self) {
        if let Some(commands) = &self.commands {
            let _ = commands.try_send(LauncherCommand::Look);
        }
    }
}

/// Starts the launcher task; it runs until `shutdown` is cancelled, then kills and reaps every
/// child before its handle resolves.
pub(crate) fn start(
    state: Arc<dyn LinkState>,
    settings: LauncherSettings,
    counters: LauncherCounters,
    shutdown: CancellationToken,
) -> (LauncherHandle, TaskHandle<()>) {
    let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
    let mut settings = settings;
    if state.shared() {
        settings.poll_interval = settings.poll_interval.min(SHARED_POLL_INTERVAL);
    }
    let launcher = Launcher {
        renewed: tokio::time::Instant::now(),
        state,
        settings,
        counters,
        children: HashMap::new(),
        attempts: HashMap::new(),
    };
    let handle = task::spawn("serverapp-launcher", launcher.run(receiver, shutdown));
    (
        LauncherHandle {
            commands: Some(sender),
        },
        handle,
    )
}

struct Launcher {
    state: Arc<dyn LinkState>,
    settings: LauncherSettings,
    counters: LauncherCounters,
    /// The supervised child per run id.
    children: HashMap<u64, Supervised>,
    /// Children started per run id, for runs that stay pending.
    attempts: HashMap<u64, u32>,
    /// When the leases were last renewed (shared stores).
    renewed: tokio::time::Instant,
}

/// A child's supervisor task and the token that makes it kill the child.
struct Supervised {
    kill: CancellationToken,
    task: TaskHandle<()>,
}

impl Launcher {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<LauncherCommand>,
        shutdown: CancellationToken,
    ) {
        tracing::debug!("started flwr-serverapp launcher");
        if !self.state.shared() {
            self.fail_interrupted_runs().await;
        }
        let first = tokio::time::Instant::now() + self.settings.poll_interval;
        let mut ticks = tokio::time::interval_at(first, self.settings.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => match command {
                    LauncherCommand::Stop(run_id) => {
                        if let Some(child) = self.children.get(&run_id) {
                            child.kill.cancel();
                        }
                    }
                    LauncherCommand::Look => self.launch_if_pending().await,
                },
                _ = ticks.tick() => {
                    self.keep_leases().await;
                    self.launch_if_pending().await;
                }
            }
        }
        // Shutdown: kill every child and wait until each supervisor has reaped its child.
        for child in self.children.values() {
            child.kill.cancel();
        }
        for (_, child) in self.children.drain() {
            let _ = child.task.await;
        }
    }

    async fn launch_if_pending(&mut self) {
        self.children.retain(|_, child| !child.task.is_finished());
        let state = Arc::clone(&self.state);
        let pending =
            match tokio::task::spawn_blocking(move || state.claim_pending_run(LEASE)).await {
                Ok(Ok(pending)) => pending,
                Ok(Err(error)) => {
                    tracing::error!(%error, "could not look for pending runs");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, "pending-run lookup panicked");
                    return;
                }
            };
        // Attempt counts matter only for the pending run and runs with a live child.
        self.attempts
            .retain(|run_id, _| pending == Some(*run_id) || self.children.contains_key(run_id));
        let Some(run_id) = pending else {
            return;
        };
        if self.children.contains_key(&run_id) {
            return;
        }
        let attempt = self.attempts.entry(run_id).or_insert(0);
        *attempt += 1;
        let attempt = *attempt;

        tracing::info!(
            "Launching {} subprocess. Connects to SuperLink on {}",
            self.settings.program.display(),
            self.settings.serverappio_address
        );
        let mut command = Command::new(&self.settings.program);
        command
            .arg("--run-once")
            .arg("--serverappio-api-address")
            .arg(self.settings.serverappio_address.to_string())
            .arg("--insecure")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if self.settings.max_message_size != flwr_proto::MAX_MESSAGE_SIZE {
            command.env(
                flwr_proto::MESSAGE_SIZE_ENV,
                self.settings.max_message_size.to_string(),
            );
        }
        // Own process group, and SIGKILL if the SuperLink dies. The parent-death signal follows
        // the forking *thread*: this runs in the launcher task on a runtime worker thread, which
        // lives as long as the runtime (never move this spawn into `spawn_blocking`).
        tie_to_parent(command.as_std_mut());
        let child = command.spawn();
        let outcome = match child {
            Ok(child) => {
                self.counters.starts.inc();
                let kill = CancellationToken::new();
                let supervisor = supervise(
                    child,
                    run_id,
                    attempt,
                    Arc::clone(&self.state),
                    kill.clone(),
                    self.counters.failures.clone(),
                );
                if self.children.is_empty() {
                    // The renewal clock starts with the first lease.
                    self.renewed = tokio::time::Instant::now();
                }
                let task = task::spawn("serverapp-child", supervisor);
                self.children.insert(run_id, Supervised { kill, task });
                return;
            }
            Err(error) => format!(
                "could not start {}: {error}",
                self.settings.program.display()
            ),
        };
        self.counters.failures.inc();
        tracing::error!(run_id, attempt, "{outcome}");
        if attempt >= MAX_ATTEMPTS {
            fail_run(&self.state, run_id, outcome).await;
        }
    }
}

impl Launcher {
    /// Shared stores: renews the leases of the runs whose ServerApps live here, and takes over
    /// the runs of replicas that stopped renewing theirs.
    async fn keep_leases(&mut self) {
        if !self.state.shared() {
            return;
        }
        self.children.retain(|_, child| !child.task.is_finished());
        let ours: Vec<u64> = self.children.keys().copied().collect();
        let state = Arc::clone(&self.state);
        let renewed = tokio::task::spawn_blocking(move || {
            state.renew_leases(&ours, LEASE)?;
            state.take_over_orphans(LEASE)
        })
        .await;
        match renewed {
            Ok(Ok(taken)) => {
                self.renewed = tokio::time::Instant::now();
                for run_id in taken {
                    tracing::warn!(
                        run_id,
                        "took over run {run_id}: the replica that launched it stopped renewing \
                         its lease; its ServerApp starts again"
                    );
                    self.attempts.remove(&run_id);
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "could not renew the launch leases"),
            Err(error) => tracing::error!(%error, "renewing the launch leases panicked"),
        }
        if !self.children.is_empty() && self.renewed.elapsed() >= LEASE {
            // Another replica may have taken these runs over: two ServerApps must not drive
            // one run.
            tracing::error!(
                "no lease renewal for {:?}: stopping this replica's ServerApps",
                LEASE
            );
            for child in self.children.values() {
                child.kill.cancel();
            }
        }
    }
}

/// Waits for the child (killing its process group when `kill` fires), then fails the run if
/// the child left it unfinished.
async fn supervise(
    mut child: Child,
    run_id: u64,
    attempt: u32,
    state: Arc<dyn LinkState>,
    kill: CancellationToken,
    failures: prometheus_client::metrics::counter::Counter,
) {
    let group = ProcessGroup::of(&child);
    let (status, killed) = tokio::select! {
        status = child.wait() => (status, false),
        () = kill.cancelled() => {
            (process::terminate(&mut child, group, KILL_GRACE).await.status, true)
        }
    };
    let description = match &status {
        Ok(status) => describe(*status),
        Err(error) => format!("could not be waited for: {error}"),
    };
    tracing::info!(run_id, "flwr-serverapp {description}");
    if !killed && !status.as_ref().is_ok_and(ExitStatus::success) {
        failures.inc();
    }

    let state_for_lookup = Arc::clone(&state);
    let run = tokio::task::spawn_blocking(move || state_for_lookup.run(run_id)).await;
    let Ok(Ok(Some(run))) = run else {
        return;
    };
    let current = run.status.unwrap_or_default();
    if current.status == FINISHED {
        return;
    }
    if current.status == PENDING && (killed || attempt < MAX_ATTEMPTS) {
        // The child died (or was stopped at shutdown) before taking the run: the run stays
        // pending for the next poll, or for the next start of a persistent SuperLink.
        return;
    }
    if killed && state.shared() {
        // This replica is shutting down (or lost its lease): another replica takes the run
        // over when the lease expires, rather than the run failing with this replica.
        return;
    }
    let details = if killed {
        format!("flwr-serverapp was stopped because the SuperLink shut down ({description})")
    } else {
        format!("flwr-serverapp {description} before the run finished")
    };
    fail_run(&state, run_id, details).await;
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("exited ({status})"),
    }
}

/// What a run left `starting` or `running` by a previous SuperLink process is marked with.
pub const INTERRUPTED: &str =
    "the SuperLink stopped while the run was in progress, and with it the run's ServerApp";

impl Launcher {
    /// Fails the runs a previous SuperLink left `starting` or `running` (a crash, a kill, a
    /// restart on the same database). Their ServerApps were this launcher's children and died
    /// with that process, so nobody would ever finish them: without this they stay `running`
    /// for ever.
    async fn fail_interrupted_runs(&self) {
        let state = Arc::clone(&self.state);
        let runs = match tokio::task::spawn_blocking(move || state.runs()).await {
            Ok(Ok(runs)) => runs,
            Ok(Err(error)) => {
                tracing::error!(%error, "could not look for interrupted runs");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "looking for interrupted runs panicked");
                return;
            }
        };
        for run in runs {
            let status = run
                .status
                .as_ref()
                .map_or("", |status| status.status.as_str());
            if status == STARTING || status == RUNNING {
                fail_run(&self.state, run.run_id, INTERRUPTED.to_owned()).await;
            }
        }
    }
}

async fn fail_run(state: &Arc<dyn LinkState>, run_id: u64, details: String) {
    tracing::warn!(run_id, "run failed: {details}");
    let state = Arc::clone(state);
    let status = RunStatus {
        status: FINISHED.to_owned(),
        sub_status: FAILED.to_owned(),
        details,
    };
    match tokio::task::spawn_blocking(move || state.update_run_status(run_id, status)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::error!(run_id, %error, "could not mark the run failed"),
        Err(error) => tracing::error!(run_id, %error, "marking the run failed panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::Path;
    use std::time::Instant;

    use flwr_proto::ConfigsRecord;
    use flwr_state::{InMemoryLinkState, SystemClock};
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;

    use super::*;

    /// Set for the re-executed test binary that plays the SuperLink.
    const DIR_ENV: &str = "FLWR_LAUNCHER_TEST_DIR";

    /// Whether `pid` still runs (a zombie waiting for PID 1 to reap it counts as gone).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
    }

    fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        condition()
    }

    fn read_pid(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// A SuperLink in miniature: a pending run and the real launcher, whose `flwr-serverapp`
    /// records its pid and sleeps. Only runs when re-executed by
    /// `serverapp_dies_with_a_killed_superlink`.
    #[test]
    #[ignore = "helper process of serverapp_dies_with_a_killed_superlink"]
    fn superlink_helper() {
        let Some(dir) = std::env::var_os(DIR_ENV).map(PathBuf::from) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let state: Arc<dyn LinkState> = Arc::new(InMemoryLinkState::new(Arc::new(SystemClock)));
            state
                .create_run("", "", "", HashMap::new(), ConfigsRecord::default(), None)
                .expect("create run");
            let settings = LauncherSettings {
                program: dir.join("flwr-serverapp"),
                serverappio_address: "127.0.0.1:9091".parse().expect("address"),
                poll_interval: Duration::from_millis(100),
                max_message_size: flwr_proto::MAX_MESSAGE_SIZE,
            };
            let shutdown = CancellationToken::new();
            let (_handle, _task) = start(state, settings, LauncherCounters::default(), shutdown);
            tokio::time::sleep(Duration::from_secs(300)).await;
        });
    }

    #[test]
    fn serverapp_dies_with_a_killed_superlink() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("serverapp.pid");
        let program = dir.path().join("flwr-serverapp");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
                pidfile.display()
            ),
        )
        .expect("write the fake flwr-serverapp");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
        let exe = std::env::current_exe().expect("test binary");
        let mut superlink = std::process::Command::new(exe)
            .args(["--exact", "launcher::tests::superlink_helper", "--ignored"])
            .env(DIR_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the SuperLink stand-in");
        wait_for(Duration::from_secs(20), || read_pid(&pidfile).is_some());
        let serverapp = read_pid(&pidfile);
        // SIGKILL: the SuperLink gets no chance to stop its children itself.
        let _ = superlink.kill();
        let _ = superlink.wait();
        let serverapp = serverapp.expect("the launcher never started flwr-serverapp");
        let gone = wait_for(Duration::from_secs(10), || !alive(serverapp));
        if !gone {
            let _ = killpg(Pid::from_raw(serverapp), Signal::SIGKILL);
        }
        assert!(gone, "flwr-serverapp outlived the SIGKILLed SuperLink");
    }
}
