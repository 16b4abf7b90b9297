//! Child processes that do not outlive the process that started them.
//!
//! A ServerApp or ClientApp runs in its own process group so that stopping it stops everything
//! it started. The price is that nothing ties it to its parent any more: when a SuperLink or
//! SuperNode is killed with SIGKILL (OOM killer, `kill -9`, a crashed supervisor) its apps keep
//! running, re-parented to PID 1, still holding ports, GPU memory and files. [`tie_to_parent`]
//! closes that gap with Linux's parent-death signal.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid};

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
}
