//! Supervised child processes: command lines, long-running [`Proc`]s and bounded one-shot runs.
//!
//! The demos start their SuperLinks and SuperNodes with this, and the end-to-end test kit
//! re-exports it, so both stop their children the same way.
//!
//! Every child starts in its own process group, so that signals reach what it spawned in turn
//! (the SuperLink starts `flwr-serverapp`, the SuperNode starts `flwr-clientapp`), and every child
//! gets `FLWR_TELEMETRY_ENABLED=0` so the reference never phones home.
//!
//! The group leader is not reaped until the very end: its exit is observed with
//! `waitid(WNOWAIT)`, the rest of the group is killed, and only then is the zombie collected. A
//! reaped pid could be recycled as the leader of some other process group (`pid_max` is often
//! 32768), and a late `killpg` would then hit that group.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::process::ProcessGroup;

/// Result of every fallible supervision call.
pub type Result<T, E = ChildError> = std::result::Result<T, E>;

/// Everything that can go wrong while starting, watching and stopping child processes, and
/// while finding them ports and scratch databases.
///
/// Messages are multi-line on purpose: the tail of the relevant log or command output is
/// usually the only clue to what went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// A command ran to completion but failed, or printed something that could not be used.
    #[error("`{command}` {reason}\n--- output ---\n{output}")]
    Command {
        /// The command line, for humans.
        command: String,
        /// What was wrong, e.g. `exited with exit status: 1`.
        reason: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// A file-system or process-control call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the supervisor was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A watched process exited before the awaited event happened.
    #[error(
        "process `{name}` exited ({status}) while waiting for {waiting_for}\n\
         --- last lines of {log} ---\n{tail}"
    )]
    ProcessExited {
        /// The name given to [`Proc::spawn`].
        name: String,
        /// How it ended.
        status: String,
        /// The awaited event.
        waiting_for: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// A signal could not be sent to a process group.
    #[error("sending {signal} to the process group of `{name}`: {source}")]
    Signal {
        /// The name given to [`Proc::spawn`].
        name: String,
        /// The signal, e.g. `SIGTERM`.
        signal: &'static str,
        /// The underlying error.
        #[source]
        source: Errno,
    },
    /// A bounded wait ran out of time or iterations.
    #[error("timed out after {after:?} waiting for {waiting_for}\n{details}")]
    Timeout {
        /// The awaited event.
        waiting_for: String,
        /// The bound that ran out.
        after: Duration,
        /// Last observed state, log tail or partial output.
        details: String,
    },
}

/// Wraps an [`io::Error`] with what the caller was doing, for `map_err`.
pub fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ChildError {
    let context = context.into();
    move |source| ChildError::Io { context, source }
}

/// The last `lines` lines of `text`, for error messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(100);

/// How long a SIGKILLed group leader may take to become a zombie.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Grace between SIGTERM and SIGKILL when a [`Proc`] is dropped.
const DEFAULT_DROP_GRACE: Duration = Duration::from_secs(5);

/// Log lines shown in errors and when the owner of a [`Proc`] panics.
const TAIL_LINES: usize = 40;

/// A program, its arguments, extra environment and working directory.
///
/// Built by value (`CommandLine::new(path).arg("--insecure")`) and cloned freely; nothing runs
/// until it is passed to [`Proc::spawn`] or [`CommandLine::output`].
#[derive(Clone, Debug)]
pub struct CommandLine {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
}

impl CommandLine {
    /// A command line running `program` (a path, or a name looked up on `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
        }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (on top of the inherited environment).
    ///
    /// `FLWR_TELEMETRY_ENABLED` is always forced to `0`, whatever is set here.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs the program in `dir` instead of the test's working directory.
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs the command to completion with stdin closed, capturing stdout and stderr.
    ///
    /// A non-zero exit is *not* an error here: callers decide, since `flwr` exits 0 even on
    /// failure and prints JSON errors instead.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if it cannot start; [`ChildError::Timeout`] (with the output so far) if it is
    /// still running after `timeout`, in which case its process group has been killed.
    pub fn output(&self, timeout: Duration) -> Result<Output> {
        let mut command = self.to_command();
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(io_error(format!("starting `{self}`")))?;
        let pid = pid_of(&mut child, &self.to_string())?;
        // Drain both pipes on threads so a chatty child never blocks on a full pipe.
        let stdout = child
            .stdout
            .take()
            .map(|pipe| thread::spawn(|| read_all(pipe)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| thread::spawn(|| read_all(pipe)));

        let exited = wait_until_exit(pid, timeout);
        // Kill what is left of the group: the command itself after a timeout, otherwise strays
        // that would keep the pipes open. The leader is not reaped yet, so the group id is ours.
        let killed = send(pid, Signal::SIGKILL);
        let reaped = reap(&mut child, pid);
        let output = Output {
            status: reaped
                .as_ref()
                .copied()
                .unwrap_or_else(|_| ExitStatus::from_raw(-1)),
            stdout: stdout.map(join_reader).unwrap_or_default(),
            stderr: stderr.map(join_reader).unwrap_or_default(),
        };
        if !exited? {
            return Err(ChildError::Timeout {
                waiting_for: format!("`{self}` to finish"),
                after: timeout,
                details: format!("--- output so far ---\n{}", combined(&output)),
            });
        }
        killed.map_err(|source| ChildError::Signal {
            name: self.to_string(),
            signal: "SIGKILL",
            source,
        })?;
        reaped?;
        Ok(output)
    }

    fn to_command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        // Last, so that no caller-supplied environment can switch telemetry back on.
        command.env("FLWR_TELEMETRY_ENABLED", "0");
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command.stdin(Stdio::null()).process_group(0);
        command
    }
}

impl fmt::Display for CommandLine {
    /// Shell-like rendering for messages (arguments with spaces are quoted, not escaped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for arg in &self.args {
            let arg = arg.to_string_lossy();
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                write!(f, " {arg:?}")?;
            } else {
                write!(f, " {arg}")?;
            }
        }
        Ok(())
    }
}

/// A running child process whose stdout and stderr go to `<log_dir>/<name>.log`.
///
/// Dropping it sends SIGTERM to its whole process group, waits up to the drop grace (5 s by
/// default, see [`Proc::set_drop_grace`]), sends SIGKILL to the group and reaps the child. If the
/// thread is panicking (a failing test), the last lines of the log are printed to stderr first.
#[derive(Debug)]
pub struct Proc {
    name: String,
    command: String,
    child: Child,
    pid: Pid,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    drop_grace: Duration,
}

impl Proc {
    /// Starts `command` in its own process group, logging to `<log_dir>/<name>.log`.
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if the log file cannot be created or the program cannot be started.
    pub fn spawn(name: &str, command: &CommandLine, log_dir: &Path) -> Result<Self> {
        fs::create_dir_all(log_dir).map_err(io_error(format!(
            "creating log directory {}",
            log_dir.display()
        )))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let stdout = File::create(&log_path).map_err(io_error(format!(
            "creating log file {}",
            log_path.display()
        )))?;
        let stderr = stdout.try_clone().map_err(io_error(format!(
            "duplicating log file {}",
            log_path.display()
        )))?;
        let mut child = command
            .to_command()
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io_error(format!("starting `{command}`")))?;
        let pid = pid_of(&mut child, name)?;
        Ok(Self {
            name: name.to_owned(),
            command: command.to_string(),
            child,
            pid,
            log_path,
            exit: None,
            drop_grace: DEFAULT_DROP_GRACE,
        })
    }

    /// The name given to [`Proc::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also the process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The log file receiving stdout and stderr of the whole process group.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything logged so far (invalid UTF-8 replaced).
    ///
    /// # Errors
    ///
    /// [`ChildError::Io`] if the log file cannot be read.
    pub fn log_text(&self) -> Result<String> {
        let bytes = fs::read(&self.log_path).map_err(io_error(format!(
            "reading log file {}",
            self.log_path.display()
        )))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Whether the process (the group leader) has not exited yet.
    pub fn is_running(&self) -> bool {
        self.exit.is_none() && matches!(peek_exit(self.pid), Ok(None))
    }

    /// Sets how long dropping waits between SIGTERM and SIGKILL.
    ///
    /// The Python SuperLink with `--isolation subprocess` never exits on SIGTERM, so waiting
    /// long for it only slows tests down.
    pub fn set_drop_grace(&mut self, grace: Duration) {
        self.drop_grace = grace;
    }

    /// Waits until the log contains `pattern` (a plain substring).
    ///
    /// # Errors
    ///
    /// [`ChildError::ProcessExited`] if the process exits first, [`ChildError::Timeout`] after `timeout`;
    /// both carry the end of the log.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_count(pattern, 1, timeout)
    }

    /// Waits until the log contains `pattern` at least `count` times, e.g. two
    /// `Created node_id` lines once two SuperNodes have registered.
    ///
    /// # Errors
    ///
    /// As [`Proc::wait_for_log`].
    pub fn wait_for_log_count(&self, pattern: &str, count: usize, timeout: Duration) -> Result<()> {
        let waiting_for = format!("{count}× {pattern:?} in the log of `{}`", self.name);
        let found = |text: &str| text.matches(pattern).count() >= count;
        let deadline = Instant::now() + timeout;
        for _ in 0..max_polls(timeout) {
            if found(&self.log_text()?) {
                return Ok(());
            }
            if let Some(status) = self.exit_description()? {
                // It may have printed the pattern just before exiting.
                let text = self.log_text()?;
                if found(&text) {
                    return Ok(());
                }
                return Err(self.exited_error(status, waiting_for, &text));
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        Err(ChildError::Timeout {
            waiting_for,
            after: timeout,
            details: self.log_tail(),
        })
    }

    /// Waits for the process to exit by itself, then kills what is left of its group and reaps
    /// it.
    ///
    /// # Errors
    ///
    /// [`ChildError::Timeout`] if it is still running after `timeout` (it is left running).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        if !wait_until_exit(self.pid, timeout)? {
            return Err(ChildError::Timeout {
                waiting_for: format!("`{}` to exit", self.name),
                after: timeout,
                details: self.log_tail(),
            });
        }
        self.kill_group_and_reap()
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for the process to exit, then
    /// sends SIGKILL to the group (always, to catch children left behind) and reaps it.
    ///
    /// Returns how the process ended; `status.signal() == Some(9)` means it had to be killed.
    /// Calling it again returns the same status.
    ///
    /// # Errors
    ///
    /// [`ChildError::Signal`] if a signal cannot be sent, [`ChildError::Timeout`] if the process is not
    /// gone even after SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        if peek_exit(self.pid)?.is_none() {
            send(self.pid, Signal::SIGTERM)
                .map_err(|source| self.signal_error("SIGTERM", source))?;
            wait_until_exit(self.pid, grace)?;
        }
        self.kill_group_and_reap()
    }

    fn kill_group_and_reap(&mut self) -> Result<ExitStatus> {
        send(self.pid, Signal::SIGKILL).map_err(|source| self.signal_error("SIGKILL", source))?;
        let status = reap(&mut self.child, self.pid)?;
        self.exit = Some(status);
        Ok(status)
    }

    /// `Some(description)` once the leader has exited.
    fn exit_description(&self) -> Result<Option<String>> {
        if let Some(status) = self.exit {
            return Ok(Some(status.to_string()));
        }
        Ok(peek_exit(self.pid)?.map(|status| describe(&status)))
    }

    fn exited_error(&self, status: String, waiting_for: String, text: &str) -> ChildError {
        ChildError::ProcessExited {
            name: self.name.clone(),
            status,
            waiting_for,
            log: self.log_path.clone(),
            tail: tail(text, TAIL_LINES),
        }
    }

    fn signal_error(&self, signal: &'static str, source: Errno) -> ChildError {
        ChildError::Signal {
            name: self.name.clone(),
            signal,
            source,
        }
    }

    fn log_tail(&self) -> String {
        match self.log_text() {
            Ok(text) => format!(
                "--- last lines of {} ---\n{}",
                self.log_path.display(),
                tail(&text, TAIL_LINES)
            ),
            Err(error) => error.to_string(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- `{}`: {} ---\n{}",
                self.name,
                self.command,
                self.log_tail()
            );
        }
        if let Err(error) = self.terminate(self.drop_grace) {
            eprintln!("warning: could not stop `{}`: {error}", self.name);
        }
    }
}

/// The child's pid as a nix [`Pid`]; kills the child if it does not fit (it always does on
/// Linux, where pids are below 2^22).
fn pid_of(child: &mut Child, name: &str) -> Result<Pid> {
    match i32::try_from(child.id()) {
        Ok(raw) => Ok(Pid::from_raw(raw)),
        Err(_) => {
            // Best effort: the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            Err(ChildError::Io {
                context: format!("starting `{name}`"),
                source: std::io::Error::other(format!("pid {} out of range", child.id())),
            })
        }
    }
}

/// Sends `signal` to the process group led by `pid`; a group that is already gone is fine.
fn send(pid: Pid, signal: Signal) -> Result<(), Errno> {
    ProcessGroup::led_by(pid).signal(signal)
}

/// How the leader exited, without reaping it; `None` while it runs.
fn peek_exit(pid: Pid) -> Result<Option<WaitStatus>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Ok(None),
        Ok(status) => Ok(Some(status)),
        Err(errno) => Err(ChildError::Io {
            context: format!("checking whether pid {pid} exited"),
            source: errno.into(),
        }),
    }
}

/// Polls until the leader exits; `Ok(false)` if it still runs after `timeout`.
fn wait_until_exit(pid: Pid, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    for _ in 0..max_polls(timeout) {
        if peek_exit(pid)?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL.min(timeout));
    }
    Ok(peek_exit(pid)?.is_some())
}

/// Collects the exit status of a leader that was just sent SIGKILL.
fn reap(child: &mut Child, pid: Pid) -> Result<ExitStatus> {
    if !wait_until_exit(pid, KILL_WAIT)? {
        return Err(ChildError::Timeout {
            waiting_for: format!("pid {pid} to die after SIGKILL"),
            after: KILL_WAIT,
            details: String::new(),
        });
    }
    // It has exited, so this does not block.
    child.wait().map_err(io_error(format!("reaping pid {pid}")))
}

fn max_polls(timeout: Duration) -> u128 {
    timeout.as_millis() / POLL.as_millis() + 2
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

fn read_all(mut pipe: impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    // A read error just ends the capture; what was read so far is still useful.
    let _ = pipe.read_to_end(&mut bytes);
    bytes
}

fn join_reader(handle: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}

/// stdout followed by stderr, lossily decoded.
pub fn combined(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&stderr);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("flwr-runtime-child-")
            .tempdir()
            .expect("temp dir")
    }

    #[test]
    fn output_captures_both_streams_and_forces_telemetry_off() {
        let output = CommandLine::new("sh")
            .arg("-c")
            .arg("echo out; echo err >&2; echo \"t=$FLWR_TELEMETRY_ENABLED\"; exit 3")
            .env("FLWR_TELEMETRY_ENABLED", "1")
            .output(Duration::from_secs(10))
            .expect("runs");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "out\nt=0\n");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    }

    #[test]
    fn output_times_out_and_kills_the_group() {
        let started = Instant::now();
        let error = CommandLine::new("sh")
            .arg("-c")
            .arg("echo before; sleep 30 & wait")
            .output(Duration::from_millis(500))
            .expect_err("must time out");
        assert!(started.elapsed() < Duration::from_secs(10));
        let message = error.to_string();
        assert!(message.contains("timed out"), "{message}");
        assert!(message.contains("before"), "{message}");
    }

    #[test]
    fn wait_for_log_sees_output_and_terminate_kills_the_group() {
        let dir = scratch();
        let command = CommandLine::new("sh")
            .arg("-c")
            .arg("sleep 60 & echo \"child $!\"; echo ready; wait");
        let mut proc = Proc::spawn("sleeper", &command, dir.path()).expect("spawns");
        proc.wait_for_log("ready", Duration::from_secs(10))
            .expect("ready");
        assert!(proc.is_running());
        let text = proc.log_text().expect("log");
        let child: i32 = text
            .lines()
            .find_map(|line| line.strip_prefix("child "))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("child pid in log");

        let status = proc.terminate(Duration::from_secs(5)).expect("terminates");
        assert_eq!(status.signal(), Some(libc_sigterm()), "{status}");
        assert!(!proc.is_running());
        // The grandchild shared the group, so it got the signal too.
        let gone = (0..50).any(|_| {
            let alive =
                nix::sys::signal::kill(Pid::from_raw(child), None).is_ok() && !is_zombie(child);
            if alive {
                thread::sleep(Duration::from_millis(100));
            }
            !alive
        });
        assert!(gone, "grandchild {child} survived");
        // Idempotent.
        assert_eq!(proc.terminate(Duration::ZERO).expect("again"), status);
    }

    #[test]
    fn terminate_escalates_to_sigkill() {
        let dir = scratch();
        let command = CommandLine::new("sh")
            .arg("-c")
            .arg("trap '' TERM; echo armed; while :; do sleep 1; done");
        let mut proc = Proc::spawn("stubborn", &command, dir.path()).expect("spawns");
        proc.wait_for_log("armed", Duration::from_secs(10))
            .expect("armed");
        let status = proc.terminate(Duration::from_millis(300)).expect("killed");
        assert_eq!(status.signal(), Some(9), "{status}");
    }

    #[test]
    fn wait_for_log_reports_early_exit_with_log_tail() {
        let dir = scratch();
        let command = CommandLine::new("sh")
            .arg("-c")
            .arg("echo 'bad flag'; exit 2");
        let mut proc = Proc::spawn("quitter", &command, dir.path()).expect("spawns");
        let error = proc
            .wait_for_log("never printed", Duration::from_secs(10))
            .expect_err("exits first");
        let message = error.to_string();
        assert!(message.contains("exit code 2"), "{message}");
        assert!(message.contains("bad flag"), "{message}");
        assert_eq!(
            proc.wait_for_exit(Duration::from_secs(5))
                .expect("exited")
                .code(),
            Some(2)
        );
    }

    #[test]
    fn wait_for_log_times_out() {
        let dir = scratch();
        let command = CommandLine::new("sh").arg("-c").arg("echo quiet; sleep 30");
        let mut proc = Proc::spawn("quiet", &command, dir.path()).expect("spawns");
        proc.set_drop_grace(Duration::from_secs(1));
        let error = proc
            .wait_for_log_count("quiet", 2, Duration::from_millis(300))
            .expect_err("only once");
        assert!(matches!(error, ChildError::Timeout { .. }), "{error}");
    }

    #[test]
    fn display_quotes_arguments_with_spaces() {
        let command = CommandLine::new("/bin/flower-supernode")
            .arg("--node-config")
            .arg("partition-id=0 num-partitions=2");
        assert_eq!(
            command.to_string(),
            "/bin/flower-supernode --node-config \"partition-id=0 num-partitions=2\""
        );
    }

    fn libc_sigterm() -> i32 {
        Signal::SIGTERM as i32
    }

    fn is_zombie(pid: i32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }
}
