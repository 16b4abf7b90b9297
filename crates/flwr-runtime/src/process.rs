//! Child processes that do not outlive the process that started them.
//!
//! A ServerApp or ClientApp runs in its own process group so that stopping it stops everything
//! it started. The price is that nothing ties it to its parent any more: when a SuperLink or
//! SuperNode is killed with SIGKILL (OOM killer, `kill -9`, a crashed supervisor) its apps keep
//! running, re-parented to PID 1, still holding ports, GPU memory and files. [`tie_to_parent`]
//! closes that gap with Linux's parent-death signal.
//!
//! Stopping such a child is one rule for every launcher: SIGTERM to its group, a grace period
//! for the leader to exit, SIGKILL to the group, reap ([`terminate`]). [`ProcessGroup`] is the
//! one place that signals a group.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpid, getppid, Pid};

/// Makes the child of `command` the leader of a new process group that gets SIGKILL when its
/// parent dies (Linux `PR_SET_PDEATHSIG`).
///
/// The kernel sends the signal when the *thread* that forked the child exits, not when the
/// process does. Call `spawn` from a thread that lives as long as the child should: the main
/// thread or an async runtime worker (`tokio::process::Command::spawn` from async code). Never
/// spawn from `tokio::task::spawn_blocking` — blocking-pool threads exit after ~10 s idle and
/// would take the child with them.
///
/// A `tokio::process::Command` is configured through `as_std_mut()`.
#[allow(unsafe_code)] // `pre_exec` is the only way to run prctl in the child before exec.
pub fn tie_to_parent(command: &mut Command) -> &mut Command {
    // Captured before the fork: in the child, a different parent id means the parent already
    // died between fork and prctl, so the signal it should have sent will never come.
    let parent = getpid();
    command.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed. It calls prctl(2) and getppid(2) (both system calls, no locks, no
    // allocation) and builds an `io::Error` from a raw errno (no allocation). On `Err` the
    // standard library reports the error to the parent and the child calls `_exit`.
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            if getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// The process group a child leads ([`tie_to_parent`] or `process_group(0)` made the group id
/// the child's pid).
///
/// Signal a group only while its leader is not yet reaped: until then the id cannot have been
/// recycled for some other group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    /// The group led by `leader`.
    pub fn led_by(leader: Pid) -> Self {
        Self(Some(leader))
    }

    /// The group `child` leads; an empty group (signals go nowhere) if tokio has already reaped
    /// the child, since it then no longer reports a pid.
    pub fn of(child: &tokio::process::Child) -> Self {
        Self(
            child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        )
    }

    /// Sends `signal` to every process of the group.
    ///
    /// # Errors
    ///
    /// The `killpg` error, except `ESRCH`: a group that is already gone is the normal case
    /// after a clean exit.
    pub fn signal(&self, signal: Signal) -> Result<(), Errno> {
        let Some(group) = self.0 else {
            return Ok(());
        };
        match killpg(group, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(errno),
        }
    }

    /// Sends `signal` to the group, best effort: the launchers have no better answer to a failed
    /// `killpg` than carrying on to the reap.
    pub fn kill(&self, signal: Signal) {
        let _ = self.signal(signal);
    }
}

/// A [`ProcessGroup`] that gets SIGKILL when this guard drops, so a child abandoned mid-wait
/// (its owner's future cancelled) leaves nothing of its group behind; `kill_on_drop` on the
/// command takes care of the leader.
#[derive(Debug)]
pub struct GroupGuard(ProcessGroup);

impl GroupGuard {
    /// Guards `group`.
    pub fn new(group: ProcessGroup) -> Self {
        Self(group)
    }

    /// The guarded group.
    pub fn group(&self) -> ProcessGroup {
        self.0
    }

    /// Sends `signal` to the group, best effort (see [`ProcessGroup::kill`]).
    pub fn kill(&self, signal: Signal) {
        self.0.kill(signal);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.0.kill(Signal::SIGKILL);
    }
}

/// How [`terminate`] ended.
#[derive(Debug)]
pub struct Terminated {
    /// The leader's exit status, as `wait` reported it.
    pub status: io::Result<ExitStatus>,
    /// Whether the leader outlived the grace period and the group got SIGKILL.
    pub killed: bool,
}

/// Stops `child` and the group it leads: SIGTERM to the group, up to `grace` for the leader to
/// exit, then SIGKILL to the group. Always reaps the leader.
///
/// The group is signalled before the leader is reaped, so its id is still the child's own.
/// After a clean exit within the grace the rest of the group is left alone: callers that want
/// stragglers gone send SIGKILL themselves (see [`GroupGuard`]).
pub async fn terminate(
    child: &mut tokio::process::Child,
    group: ProcessGroup,
    grace: Duration,
) -> Terminated {
    group.kill(Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return Terminated {
            status,
            killed: false,
        };
    }
    group.kill(Signal::SIGKILL);
    // SIGKILL cannot be ignored, so this wait ends.
    Terminated {
        status: child.wait().await,
        killed: true,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    use super::*;

    /// Set for the re-executed test binary that plays the parent.
    const PIDFILE_ENV: &str = "FLWR_RUNTIME_TEST_PIDFILE";

    /// Whether `pid` still runs (a zombie waiting for PID 1 to reap it counts as gone).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name: `pid (comm) S ...`.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
            Err(_) => false,
        }
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

    /// The parent: spawns a long `sleep` tied to itself, records its pid, then waits to be
    /// killed. Only runs when re-executed by `child_dies_with_its_parent`.
    #[test]
    #[ignore = "helper process of child_dies_with_its_parent"]
    fn parent_helper() {
        let Some(pidfile) = std::env::var_os(PIDFILE_ENV) else {
            return;
        };
        let mut command = Command::new("sleep");
        command.arg("300").stdin(Stdio::null());
        // Never waited for: this process is SIGKILLed while the child runs, which is the point.
        #[allow(clippy::zombie_processes)]
        let child = tie_to_parent(&mut command).spawn().expect("spawn sleep");
        std::fs::write(&pidfile, child.id().to_string()).expect("write pid file");
        std::thread::sleep(Duration::from_secs(300));
    }

    #[test]
    fn child_dies_with_its_parent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("child.pid");
        let exe = std::env::current_exe().expect("test binary");
        let mut parent = Command::new(exe)
            .args(["--exact", "process::tests::parent_helper", "--ignored"])
            .env(PIDFILE_ENV, &pidfile)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the parent");
        let started = wait_for(Duration::from_secs(20), || read_pid(&pidfile).is_some());
        let child = read_pid(&pidfile);
        let _ = parent.kill();
        let _ = parent.wait();
        let child = child
            .filter(|_| started)
            .expect("the parent never started its child");
        let gone = wait_for(Duration::from_secs(10), || !alive(child));
        if !gone {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        assert!(gone, "the child outlived its SIGKILLed parent");
    }

    #[test]
    fn child_runs_in_its_own_process_group() {
        let mut command = Command::new("sleep");
        command.arg("0");
        let mut child = tie_to_parent(&mut command).spawn().expect("spawn sleep");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
        let group = nix::unistd::getpgid(Some(pid));
        let _ = child.wait();
        // The group query may race with the exit; only a successful answer is checked.
        if let Ok(group) = group {
            assert_eq!(group, pid);
        }
    }

    fn tied(script: &str) -> tokio::process::Child {
        let mut command = tokio::process::Command::new("sh");
        command.arg("-c").arg(script).kill_on_drop(true);
        tie_to_parent(command.as_std_mut());
        command.spawn().expect("spawn sh")
    }

    #[tokio::test]
    async fn terminate_stops_a_cooperative_child_with_sigterm() {
        let mut child = tied("sleep 60 & wait");
        let group = ProcessGroup::of(&child);
        let stopped = terminate(&mut child, group, Duration::from_secs(10)).await;
        assert!(!stopped.killed);
        let status = stopped.status.expect("reaped");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_after_the_grace() {
        let mut child = tied("trap '' TERM; while :; do sleep 1; done");
        let group = ProcessGroup::of(&child);
        // Give the shell time to install its trap.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopped = terminate(&mut child, group, Duration::from_millis(300)).await;
        assert!(stopped.killed);
        let status = stopped.status.expect("reaped");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
        // Reaped: a second group signal finds nothing, which is not an error.
        assert!(ProcessGroup::of(&child).signal(Signal::SIGKILL).is_ok());
    }

    #[tokio::test]
    async fn a_dropped_guard_kills_the_group() {
        let mut child = tied("sleep 60");
        let guard = GroupGuard::new(ProcessGroup::of(&child));
        drop(guard);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("killed promptly")
            .expect("reaped");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status}");
    }
}
