//! Starting `flwr-clientapp` (subprocess isolation, BEHAVIOR.md §2.5): per message here, or one
//! long-lived process per run through [`crate::warm`], which starts and stops its processes
//! with the same [`Launcher`].
//!
//! The reference runs `flwr-clientapp --clientappio-api-address <addr> --token <token>
//! --insecure` and waits for it without a time limit. Here the child also:
//!
//! - runs in its own process group, so whatever it starts is stopped with it;
//! - gets SIGKILL from the kernel when the SuperNode dies, even by SIGKILL
//!   ([`flwr_runtime::process::tie_to_parent`]);
//! - is bounded by the message's remaining TTL (after which its reply would be refused anyway);
//! - is stopped (SIGTERM to the group, then SIGKILL) when the SuperNode shuts down;
//! - is always reaped, whichever way the wait ends.
//!
//! Failures carry the reason text the reference would produce for the same failure (Python's
//! `subprocess` exception rendered as `<class '...'>:<'...'>`).

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use flwr_core::Address;
use flwr_runtime::process::{self, tie_to_parent, GroupGuard, ProcessGroup};
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::message::exception_reason;

/// Default program name, looked up on `PATH`.
pub const CLIENTAPP_PROGRAM: &str = "flwr-clientapp";

/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

/// How a ClientApp run ended, other than successfully.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The program could not be started (typically: not on `PATH`).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program name or path.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The program exited unsuccessfully or was killed by a signal.
    #[error("{} failed: {status}", command.join(" "))]
    Failed {
        /// The full command line.
        command: Vec<String>,
        /// Its exit status.
        status: ExitStatus,
    },
    /// The program outlived its time budget and was stopped.
    #[error("{} timed out after {after:?}", command.join(" "))]
    TimedOut {
        /// The full command line.
        command: Vec<String>,
        /// The budget.
        after: Duration,
    },
    /// The SuperNode is shutting down; the program was stopped.
    #[error("ClientApp stopped because the SuperNode is shutting down")]
    Cancelled,
    /// The warm ClientApp's supervisor is gone (it only stops when the SuperNode does).
    #[error("the ClientApp supervisor has stopped")]
    SupervisorStopped,
    /// Waiting for the program failed.
    #[error("waiting for the ClientApp failed: {0}")]
    Wait(#[source] io::Error),
}

impl LaunchError {
    /// The `Error.reason` of the reply the reference would send for this failure.
    pub fn reason(&self) -> String {
        match self {
            Self::Spawn { program, source } => {
                let errno = source.raw_os_error().unwrap_or(0);
                let class = if source.kind() == io::ErrorKind::NotFound {
                    "FileNotFoundError"
                } else {
                    "OSError"
                };
                let display = source.to_string();
                let text = strip_os_suffix(&display);
                exception_reason(class, &format!("[Errno {errno}] {text}: '{program}'"))
            }
            Self::Failed { command, status } => {
                let text = match (status.code(), signal_of(status)) {
                    (Some(code), _) => {
                        format!(
                            "Command '{}' returned non-zero exit status {code}.",
                            python_list(command)
                        )
                    }
                    (None, Some(signal)) => {
                        format!("Command '{}' died with {signal}.", python_list(command))
                    }
                    (None, None) => format!("Command '{}' failed.", python_list(command)),
                };
                exception_reason("subprocess.CalledProcessError", &text)
            }
            Self::TimedOut { command, after } => exception_reason(
                "subprocess.TimeoutExpired",
                &format!(
                    "Command '{}' timed out after {} seconds",
                    python_list(command),
                    after.as_secs_f64()
                ),
            ),
            Self::Cancelled => exception_reason("KeyboardInterrupt", ""),
            Self::SupervisorStopped => exception_reason("RuntimeError", &self.to_string()),
            Self::Wait(error) => exception_reason("OSError", &error.to_string()),
        }
    }
}

/// `io::Error`'s display ends in ` (os error N)`; Python shows the bare message.
fn strip_os_suffix(text: &str) -> &str {
    text.rfind(" (os error ").map_or(text, |at| &text[..at])
}

/// How Python prints a signal number in `CalledProcessError`: `<Signals.SIGKILL: 9>`.
fn signal_of(status: &ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt as _;
    let number = status.signal()?;
    Some(match Signal::try_from(number) {
        Ok(signal) => format!("<Signals.{}: {number}>", signal.as_str()),
        Err(_) => format!("unknown signal {number}"),
    })
}

/// A Python `repr` of a list of plain strings.
fn python_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("'{item}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Starts `flwr-clientapp` processes for single messages.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: PathBuf,
    io_address: Address,
    flwr_dir: Option<PathBuf>,
    /// A message-size limit other than the reference's, passed on to the app.
    max_message_size: Option<usize>,
}

impl Launcher {
    /// A launcher running `program` against the ClientAppIo server bound at `bind_address`
    /// (a wildcard `0.0.0.0` host is dialled as `127.0.0.1`). With `flwr_dir`, the child is told
    /// to install and load apps there too.
    pub fn new(
        program: impl Into<PathBuf>,
        bind_address: &Address,
        flwr_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            program: program.into(),
            io_address: bind_address.for_local_client(),
            flwr_dir,
            max_message_size: None,
        }
    }

    /// Tells launched apps about a message-size limit other than the reference's 512 MiB.
    #[must_use]
    pub fn with_max_message_size(mut self, limit: usize) -> Self {
        self.max_message_size = (limit != flwr_proto::MAX_MESSAGE_SIZE).then_some(limit);
        self
    }

    /// The command line for `token`: the reference's exactly, plus `--flwr-dir` when configured.
    pub fn command_line(&self, token: u64) -> Vec<String> {
        self.line(Some(token))
    }

    /// The command line of a warm ClientApp: as [`Self::command_line`] without `--token`, which
    /// makes `flwr-clientapp` ask for one message after another.
    pub fn warm_command_line(&self) -> Vec<String> {
        self.line(None)
    }

    fn line(&self, token: Option<u64>) -> Vec<String> {
        let mut line = vec![
            self.program.to_string_lossy().into_owned(),
            "--clientappio-api-address".to_owned(),
            self.io_address.to_string(),
        ];
        if let Some(token) = token {
            line.push("--token".to_owned());
            line.push(token.to_string());
        }
        line.push("--insecure".to_owned());
        if let Some(dir) = &self.flwr_dir {
            line.push("--flwr-dir".to_owned());
            line.push(dir.to_string_lossy().into_owned());
        }
        line
    }

    /// Starts `line` (from [`Self::command_line`] or [`Self::warm_command_line`]) in its own
    /// process group, tied to this process.
    ///
    /// The parent-death signal follows the forking *thread*: call this from async code on a
    /// runtime worker thread, which lives as long as the runtime, never from `spawn_blocking`.
    pub(crate) fn spawn(&self, line: &[String]) -> Result<(Child, GroupGuard), LaunchError> {
        let args: Vec<OsString> = line.iter().skip(1).map(OsString::from).collect();
        let mut command = Command::new(&self.program);
        command.args(&args).kill_on_drop(true);
        if let Some(limit) = self.max_message_size {
            command.env(flwr_proto::MESSAGE_SIZE_ENV, limit.to_string());
        }
        tie_to_parent(command.as_std_mut());
        let child = command.spawn().map_err(|source| LaunchError::Spawn {
            program: self.program.to_string_lossy().into_owned(),
            source,
        })?;
        // SIGKILLed on drop, so an abandoned run leaves nothing of its group behind.
        let group = GroupGuard::new(ProcessGroup::of(&child));
        tracing::debug!(pid = child.id(), "started {}", line.join(" "));
        Ok((child, group))
    }

    /// Runs the ClientApp for `token` until it exits, `timeout` passes, or `cancel` fires.
    ///
    /// # Errors
    ///
    /// A [`LaunchError`] for every outcome but exit status 0.
    pub async fn run(
        &self,
        token: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), LaunchError> {
        let line = self.command_line(token);
        // Own process group, and SIGKILL if the SuperNode dies; this async fn runs on a runtime
        // worker thread (see `spawn`).
        let (mut child, group) = self.spawn(&line)?;
        let outcome = tokio::select! {
            status = child.wait() => Some(status),
            () = tokio::time::sleep(timeout) => None,
            () = cancel.cancelled() => None,
        };
        match outcome {
            Some(status) => {
                let status = status.map_err(LaunchError::Wait)?;
                // The leader is gone; anything it left behind in its group goes too.
                group.kill(Signal::SIGKILL);
                if status.success() {
                    Ok(())
                } else {
                    Err(LaunchError::Failed {
                        command: line,
                        status,
                    })
                }
            }
            None => {
                stop(&mut child, &group).await;
                if cancel.is_cancelled() {
                    Err(LaunchError::Cancelled)
                } else {
                    Err(LaunchError::TimedOut {
                        command: line,
                        after: timeout,
                    })
                }
            }
        }
    }
}

/// SIGTERM to the group, a grace period, then SIGKILL; always reaps the leader, and takes
/// whatever the leader left behind in its group.
pub(crate) async fn stop(child: &mut Child, group: &GroupGuard) {
    let stopped = process::terminate(child, group.group(), TERMINATE_GRACE).await;
    if stopped.killed {
        tracing::warn!("ClientApp did not exit {TERMINATE_GRACE:?} after SIGTERM; killing it");
    }
    group.kill(Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn address() -> Address {
        "0.0.0.0:9094".parse().unwrap()
    }

    #[test]
    fn reference_command_line() {
        let launcher = Launcher::new(CLIENTAPP_PROGRAM, &address(), None);
        assert_eq!(
            launcher.command_line(123).join(" "),
            "flwr-clientapp --clientappio-api-address 127.0.0.1:9094 --token 123 --insecure"
        );
        let launcher = Launcher::new("x", &address(), Some("/d".into()));
        assert!(launcher
            .command_line(1)
            .ends_with(&["--flwr-dir".into(), "/d".into()]));
        assert_eq!(
            launcher.warm_command_line().join(" "),
            "x --clientappio-api-address 127.0.0.1:9094 --insecure --flwr-dir /d"
        );
    }

    fn script(dir: &tempfile::TempDir, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join("fake-clientapp");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn exit_codes_and_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let ok = Launcher::new(script(&dir, "exit 0"), &address(), None);
        ok.run(5, Duration::from_secs(20), &cancel).await.unwrap();

        let failing = Launcher::new(script(&dir, "exit 3"), &address(), None);
        let error = failing
            .run(5, Duration::from_secs(20), &cancel)
            .await
            .unwrap_err();
        let reason = error.reason();
        assert!(
            reason.starts_with("<class 'subprocess.CalledProcessError'>:<'Command '['"),
            "{reason}"
        );
        assert!(
            reason.ends_with("'--token', '5', '--insecure']' returned non-zero exit status 3.'>"),
            "{reason}"
        );

        let missing = Launcher::new("/nonexistent/flwr-clientapp", &address(), None);
        let reason = missing
            .run(5, Duration::from_secs(20), &cancel)
            .await
            .unwrap_err()
            .reason();
        assert_eq!(
            reason,
            "<class 'FileNotFoundError'>:<'[Errno 2] No such file or directory: '/nonexistent/flwr-clientapp''>"
        );
    }

    #[tokio::test]
    async fn timeout_and_cancel_stop_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-survived");
        // The grandchild would write the marker after 3 s unless the group is killed.
        let body = format!("(sleep 3; touch {}) &\nsleep 60", marker.display());
        let slow = Launcher::new(script(&dir, &body), &address(), None);
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let error = slow
            .run(1, Duration::from_millis(300), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(error, LaunchError::TimedOut { .. }), "{error}");
        assert!(error.reason().contains("timed out after 0.3 seconds"));
        assert!(started.elapsed() < Duration::from_secs(10));

        let canceller = cancel.clone();
        let _trigger = flwr_runtime::task::spawn("cancel", async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            canceller.cancel();
        });
        let error = slow
            .run(2, Duration::from_secs(60), &cancel)
            .await
            .unwrap_err();
        assert!(matches!(error, LaunchError::Cancelled), "{error}");

        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!marker.exists(), "a grandchild outlived its ClientApp");
    }
}
