//! The warm ClientApp: one long-lived `flwr-clientapp` per SuperNode, started and supervised by
//! the SuperNode (`--isolation subprocess`, `--clientapp-lifetime warm`, the default).
//!
//! Started without `--token`, `flwr-clientapp` (Python 1.14 and our Rust runner alike) loops
//! `GetToken` → `PullClientAppInputs` → run → `PushClientAppOutputs`, so the interpreter and the
//! app's imports are paid once per run instead of once per message. Its ClientAppIo side is a
//! warm [`Exchange`]: the next token is handed out before the message exists and the pull is
//! held until the node loop primes the message (see [`crate::clientappio`]).
//!
//! Lifetime rules, all applied by one supervisor task that owns the process:
//!
//! - **Eager start.** A process is started when the SuperNode starts and again as soon as one is
//!   gone. A process that has not pulled a message has loaded no app, so it can serve any run:
//!   the first message of a run finds an interpreter that is already up. It is bound to the run
//!   of the first message it is given.
//! - **One process per run.** A message of another run stops the bound process (SIGTERM to its
//!   process group, a grace period, SIGKILL, reap) and starts a fresh one, so a Python module
//!   cache never serves an old app version.
//! - **Restarts with back-off.** A process that exits is replaced at once if it had been up for
//!   [`STABLE_AFTER`], else after a back-off growing from 1 s to 60 s, so a process that dies
//!   at start-up does not spin. Each exit is one log line.
//! - **Crashes answer the message.** A message whose process exits before pulling it is handed
//!   to the next process, once; a process that exits after pulling it and before replying gets
//!   it the reply a crashed per-message ClientApp gets. That is the node loop's part, through
//!   [`Lease::exited`].
//! - **Budgets and shutdown.** A message that outlives its budget has its process replaced
//!   ([`WarmApp::replace`]). Each process runs in its own group, gets SIGKILL from the kernel
//!   when the SuperNode dies ([`flwr_runtime::process::tie_to_parent`]), and is stopped and
//!   reaped when the supervisor stops.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use flwr_runtime::process::GroupGuard;
use flwr_runtime::task::{spawn, TaskHandle};
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clientappio::Exchange;
use crate::launcher::{self, LaunchError, Launcher};

/// How long a warm app's pull waits for a message before it is answered "No inputs
/// available." (the Python app then exits and is restarted; the Rust runner asks again). Long,
/// because each expiry costs a Python start-up; a bound, so a pull nothing will answer does
/// not stay open for ever.
pub const HOLD_BOUND: Duration = Duration::from_secs(15 * 60);

/// A process that exits after running this long is restarted at once; one that dies sooner
/// counts as failing at start-up and is restarted after a back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The first back-off step after a quick exit; doubled per further quick exit.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Requests from the node loop waiting in the supervisor's queue; the node sends one at a time.
const COMMAND_QUEUE: usize = 8;

/// How a warm process ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Exit {
    /// It exited, or was killed, with this status.
    Status(ExitStatus),
    /// Waiting for it failed (it was killed); the OS error's text.
    WaitFailed(String),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "{status}"),
            Self::WaitFailed(error) => write!(f, "waiting for it failed: {error}"),
        }
    }
}

/// The process the supervisor gave one message, and a way to learn when it exits.
#[derive(Clone, Debug)]
pub struct Lease {
    generation: u64,
    command: Arc<[String]>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Lease {
    /// The process's command line.
    pub fn command(&self) -> &[String] {
        &self.command
    }

    /// Waits until the process has exited; `None` when the supervisor went away first (it only
    /// does when the SuperNode stops).
    pub async fn exited(&mut self) -> Option<Exit> {
        let exit = self.exit.wait_for(Option::is_some).await.ok()?;
        exit.clone()
    }
}

enum Command {
    /// Hand out the process for a message of `run_id`, starting or replacing it as needed.
    Acquire {
        run_id: u64,
        reply: oneshot::Sender<Result<Lease, LaunchError>>,
    },
    /// Stop the process of `generation`, if it is still the current one, and start a new one.
    Replace { generation: u64 },
}

/// The handle on the warm ClientApp's supervisor.
#[derive(Debug)]
pub struct WarmApp {
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
    task: TaskHandle<()>,
}

impl WarmApp {
    /// Starts the supervisor, which starts the first process at once. Processes talk to
    /// `exchange` (a warm one) and are started with `launcher`. Cancelling `stop` stops the
    /// process and the supervisor.
    pub fn start(launcher: Launcher, exchange: Arc<Exchange>, stop: CancellationToken) -> Self {
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        let supervisor = Supervisor {
            launcher,
            exchange,
            current: None,
            generations: 0,
            restart_at: None,
            quick_exits: 0,
        };
        // The supervisor forks the processes, so it must run on a runtime worker thread (the
        // parent-death signal follows the forking thread): a plain task does.
        let task = spawn("warm-clientapp", supervisor.run(queue, stop.clone()));
        Self {
            commands,
            stop,
            task,
        }
    }

    /// The process to give a message of `run_id`: the current one if it serves that run or no
    /// run yet, else a fresh one (the old one stopped first).
    ///
    /// # Errors
    ///
    /// [`LaunchError::Spawn`] when a process cannot be started, or
    /// [`LaunchError::SupervisorStopped`].
    pub async fn acquire(&self, run_id: u64) -> Result<Lease, LaunchError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Acquire { run_id, reply })
            .await
            .map_err(|_| LaunchError::SupervisorStopped)?;
        answer.await.map_err(|_| LaunchError::SupervisorStopped)?
    }

    /// Stops the process of `lease` (if it is still the current one) and starts a new one.
    /// Returns once the request is queued; the next [`Self::acquire`] is served after it.
    pub async fn replace(&self, lease: &Lease) {
        let generation = lease.generation;
        // A supervisor that is gone has no process left to stop.
        let _ = self.commands.send(Command::Replace { generation }).await;
    }

    /// Stops the process and the supervisor, waiting up to `limit` for both.
    pub async fn shutdown(self, limit: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("the ClientApp process was not stopped within {limit:?}");
        }
    }
}

/// The current process.
struct Process {
    child: Child,
    group: GroupGuard,
    generation: u64,
    pid: u32,
    /// The run it serves, once it was given a message.
    run_id: Option<u64>,
    started: Instant,
    command: Arc<[String]>,
    exit: watch::Sender<Option<Exit>>,
}

impl Process {
    fn lease(&self) -> Lease {
        Lease {
            generation: self.generation,
            command: Arc::clone(&self.command),
            exit: self.exit.subscribe(),
        }
    }
}

/// What woke the supervisor.
enum Event {
    Command(Command),
    Exited(io::Result<ExitStatus>),
    Restart,
    Stop,
}

struct Supervisor {
    launcher: Launcher,
    exchange: Arc<Exchange>,
    current: Option<Process>,
    generations: u64,
    /// When to start a process while there is none.
    restart_at: Option<Instant>,
    /// Processes in a row that failed to start or exited within [`STABLE_AFTER`].
    quick_exits: u32,
}

impl Supervisor {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>, stop: CancellationToken) {
        // A start-up failure is logged and retried by `start` itself.
        let _ = self.start(None);
        loop {
            let restart_at = self.restart_at;
            let event = tokio::select! {
                biased;
                () = stop.cancelled() => Event::Stop,
                command = queue.recv() => command.map_or(Event::Stop, Event::Command),
                status = wait(self.current.as_mut()) => Event::Exited(status),
                () = sleep_until(restart_at) => Event::Restart,
            };
            match event {
                Event::Stop => break,
                Event::Command(Command::Acquire { run_id, reply }) => {
                    let lease = self.acquire(run_id).await;
                    // The node loop stopped waiting (shutdown); the process stays for later.
                    let _ = reply.send(lease);
                }
                Event::Command(Command::Replace { generation }) => {
                    if self
                        .current
                        .as_ref()
                        .is_some_and(|process| process.generation == generation)
                    {
                        self.stop_current().await;
                        let _ = self.start(None);
                    }
                }
                Event::Exited(status) => self.on_exit(status),
                Event::Restart => {
                    let _ = self.start(None);
                }
            }
        }
        self.stop_current().await;
    }

    async fn acquire(&mut self, run_id: u64) -> Result<Lease, LaunchError> {
        // An exit not yet observed is handled first, so no message goes to a dead process.
        if let Some(process) = self.current.as_mut() {
            match process.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => self.on_exit(Ok(status)),
                Err(error) => self.on_exit(Err(error)),
            }
        }
        if let Some(process) = self.current.as_mut() {
            match process.run_id {
                Some(bound) if bound != run_id => {
                    tracing::info!(
                        "A message of run {run_id} arrived: stopping the ClientApp process of \
                         run {bound} (pid {}) and starting one for run {run_id}",
                        process.pid
                    );
                    self.stop_current().await;
                }
                _ => {
                    process.run_id = Some(run_id);
                    return Ok(process.lease());
                }
            }
        }
        // A message is waiting: start now even during a back-off (messages come no faster
        // than the SuperLink hands them out, so this cannot spin).
        self.start(Some(run_id))
    }

    /// Starts a process (bound to `run_id` if given); on failure, schedules another attempt.
    fn start(&mut self, run_id: Option<u64>) -> Result<Lease, LaunchError> {
        self.restart_at = None;
        let line = self.launcher.warm_command_line();
        let (child, group) = match self.launcher.spawn(&line) {
            Ok(started) => started,
            Err(error) => {
                let delay = self.count_quick_exit();
                tracing::warn!(
                    "Cannot start the ClientApp process: {error}; trying again in {}",
                    seconds(delay)
                );
                self.restart_at = Some(Instant::now() + delay);
                return Err(error);
            }
        };
        self.generations += 1;
        let pid = child.id().unwrap_or_default();
        tracing::info!("Started ClientApp process {pid}: {}", line.join(" "));
        let process = Process {
            child,
            group,
            generation: self.generations,
            pid,
            run_id,
            started: Instant::now(),
            command: line.into(),
            exit: watch::Sender::new(None),
        };
        let lease = process.lease();
        self.current = Some(process);
        Ok(lease)
    }

    /// The current process exited on its own.
    fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let Some(mut process) = self.current.take() else {
            return;
        };
        let exit = match status {
            Ok(status) => Exit::Status(status),
            Err(error) => {
                // Whatever state it is in, it is not serving any more.
                let _ = process.child.start_kill();
                Exit::WaitFailed(error.to_string())
            }
        };
        // The leader is gone; anything it left behind in its group goes too.
        process.group.kill(Signal::SIGKILL);
        // Revoked before the exit is published, so a message handed on to the next process
        // cannot take a token that only the dead one knew.
        self.exchange.revoke();
        let lived = process.started.elapsed();
        let delay = if lived >= STABLE_AFTER {
            self.quick_exits = 0;
            Duration::ZERO
        } else {
            self.count_quick_exit()
        };
        let clean = matches!(&exit, Exit::Status(status) if status.success());
        let line = format!(
            "ClientApp process {} exited after {} ({exit}); starting a new one in {}",
            process.pid,
            seconds(lived),
            seconds(delay)
        );
        if clean && delay.is_zero() {
            tracing::info!("{line}");
        } else {
            tracing::warn!("{line}");
        }
        process.exit.send_replace(Some(exit));
        self.restart_at = Some(Instant::now() + delay);
    }

    /// Stops the current process, if any: SIGTERM to its group, grace, SIGKILL, reap.
    async fn stop_current(&mut self) {
        let Some(mut process) = self.current.take() else {
            return;
        };
        launcher::stop(&mut process.child, &process.group).await;
        self.exchange.revoke();
        if process.started.elapsed() >= STABLE_AFTER {
            // It had been running fine: earlier start-up failures are history.
            self.quick_exits = 0;
        }
        let exit = match process.child.wait().await {
            Ok(status) => Exit::Status(status),
            Err(error) => Exit::WaitFailed(error.to_string()),
        };
        tracing::debug!("Stopped ClientApp process {} ({exit})", process.pid);
        process.exit.send_replace(Some(exit));
    }

    /// Counts one more quick failure and returns the back-off before the next start.
    fn count_quick_exit(&mut self) -> Duration {
        self.quick_exits = self.quick_exits.saturating_add(1);
        backoff(self.quick_exits)
    }
}

/// The back-off after `quick_exits` quick failures in a row (at least one).
fn backoff(quick_exits: u32) -> Duration {
    let doublings = quick_exits.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// Waits for `process` to exit; never, without one.
async fn wait(process: Option<&mut Process>) -> io::Result<ExitStatus> {
    match process {
        Some(process) => process.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; for ever without it.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `1.5 s`, for log lines.
fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let steps: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
