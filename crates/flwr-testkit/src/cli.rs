//! The `flwr` CLI (Exec API client) as a typed, bounded wrapper.
//!
//! Flags relied on (flwr 1.14.0, see CLI.md §4):
//!
//! - `flwr run APP FEDERATION --format json` →
//!   `{"success": true, "run-id": <u64>, "fab-id": …}` or `{"success": false, "error-message": …}`;
//! - `flwr ls APP FEDERATION --format json` → `{"success": true, "runs": [{"run-id", "status", …}]}`;
//! - `flwr log RUN_ID APP FEDERATION --show` prints the logs so far and exits (the default,
//!   `--stream`, follows them until the run finishes);
//! - `flwr stop RUN_ID APP FEDERATION --format json` → `{"success": true, "run-id": <u64>}`.
//!
//! `flwr` exits 0 even when a command fails, so success is read from the JSON, never from the
//! exit status. Run ids are full 64-bit values (often above `i64::MAX`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use flwr_core::RunStatus;
use flwr_runtime::child::combined;
use flwr_runtime::ChildError;
use serde::Deserialize;

use crate::{CommandLine, Error, Result, Venv};

/// Default bound on one `flwr` invocation.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two `flwr ls` polls in [`Flwr::wait_for_status`].
const STATUS_POLL: Duration = Duration::from_millis(500);

/// A run id as printed by `flwr run` and `flwr ls`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One run as listed by `flwr ls --format json`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct RunInfo {
    /// The run id.
    pub run_id: RunId,
    /// `<publisher>/<name>`.
    pub fab_id: String,
    /// The app name.
    pub fab_name: String,
    /// The app version.
    pub fab_version: String,
    /// First 8 hex digits of the FAB's SHA-256.
    pub fab_hash: String,
    /// `pending`, `starting`, `running`, or `finished:<completed|failed|stopped>`.
    pub status: String,
    /// `HH:MM:SS` since the run started running.
    pub elapsed: String,
    /// `YYYY-MM-DD HH:MM:SSZ`.
    pub created_at: String,
    /// `YYYY-MM-DD HH:MM:SSZ` or `N/A`.
    pub running_at: String,
    /// `YYYY-MM-DD HH:MM:SSZ` or `N/A`.
    pub finished_at: String,
}

/// The JSON `flwr ... --format json` prints.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Reply {
    success: bool,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    run_id: Option<RunId>,
    #[serde(default)]
    runs: Option<Vec<RunInfo>>,
}

/// Runs `flwr` subcommands against the federations of an app directory.
#[derive(Clone, Debug)]
pub struct Flwr {
    command: CommandLine,
    timeout: Duration,
}

impl Flwr {
    /// A wrapper around `command` (the `flwr` program, possibly with extra environment).
    ///
    /// `flwr run` writes the FAB into its working directory before deleting it, so give
    /// `command` a scratch [`CommandLine::current_dir`] rather than the app directory.
    pub fn new(command: CommandLine) -> Self {
        Self {
            command,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The reference `flwr` of `venv`, run in `work_dir`.
    pub fn from_venv(venv: &Venv, work_dir: impl Into<PathBuf>) -> Self {
        Self::new(venv.command(venv.flwr()).current_dir(work_dir))
    }

    /// Changes the bound on each `flwr` invocation (default 60 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `flwr run APP FEDERATION --format json`: starts a run and returns its id.
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] if `flwr` reports a failure or prints no run id.
    pub fn run(&self, app_dir: &Path, federation: &str) -> Result<RunId> {
        let command = self
            .subcommand("run", None, app_dir, federation)
            .arg("--format")
            .arg("json");
        let (reply, output) = self.json(&command)?;
        reply
            .run_id
            .ok_or_else(|| failure(&command, "printed no run-id", output))
    }

    /// `flwr ls APP FEDERATION --format json`: every run the SuperLink knows.
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] if `flwr` reports a failure or prints no run list.
    pub fn ls(&self, app_dir: &Path, federation: &str) -> Result<Vec<RunInfo>> {
        let command = self
            .subcommand("ls", None, app_dir, federation)
            .arg("--format")
            .arg("json");
        let (reply, output) = self.json(&command)?;
        reply
            .runs
            .ok_or_else(|| failure(&command, "printed no runs", output))
    }

    /// `flwr log RUN_ID APP FEDERATION --show`: the run's logs so far (stdout and stderr of the
    /// command, which include `flwr`'s own `Loading project configuration...` lines).
    ///
    /// Takes up to 5 s for a run that is not finished (the CLI's deadline).
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] if `flwr` exits non-zero or says the run id is invalid.
    pub fn log(&self, run_id: RunId, app_dir: &Path, federation: &str) -> Result<String> {
        let command = self
            .subcommand("log", Some(run_id), app_dir, federation)
            .arg("--show");
        let output = command.output(self.timeout)?;
        let text = combined(&output);
        if !output.status.success() {
            return Err(failure(
                &command,
                &format!("exited with {}", output.status),
                text,
            ));
        }
        if text.contains("Invalid run_id") {
            return Err(failure(&command, "reported an invalid run id", text));
        }
        Ok(text)
    }

    /// `flwr stop RUN_ID APP FEDERATION --format json`.
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] if the run could not be stopped (unknown, already finished, …).
    pub fn stop(&self, run_id: RunId, app_dir: &Path, federation: &str) -> Result<()> {
        let command = self
            .subcommand("stop", Some(run_id), app_dir, federation)
            .arg("--format")
            .arg("json");
        self.json(&command).map(|_| ())
    }

    /// Polls `flwr ls` until run `run_id` has `status` (e.g. `"finished:completed"`).
    ///
    /// # Errors
    ///
    /// [`ChildError::Command`] if the run reaches a different `finished` status, or an `ls` fails;
    /// [`ChildError::Timeout`] (with the last status seen) after `timeout`.
    pub fn wait_for_status(
        &self,
        run_id: RunId,
        app_dir: &Path,
        federation: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<RunInfo> {
        // A typo in the expected status fails at once instead of waiting out the timeout.
        let expected: RunStatus = status.parse().map_err(|error| ChildError::Command {
            command: format!("flwr ls (run {run_id})"),
            reason: format!("cannot wait for it: {error}"),
            output: String::new(),
        })?;
        let deadline = Instant::now() + timeout;
        // Each `ls` takes most of a second itself, so this bound is loose; the deadline rules.
        let max_polls = timeout.as_millis() / STATUS_POLL.as_millis() + 2;
        let mut last_seen = "not listed".to_owned();
        for _ in 0..max_polls {
            let runs = self.ls(app_dir, federation)?;
            if let Some(run) = runs.into_iter().find(|run| run.run_id == run_id) {
                let seen = run.status.parse::<RunStatus>();
                if seen.as_ref() == Ok(&expected) {
                    return Ok(run);
                }
                if seen.is_ok_and(RunStatus::is_finished) {
                    return Err(ChildError::Command {
                        command: format!("flwr ls (run {run_id})"),
                        reason: format!("reports status {:?} instead of {status:?}", run.status),
                        output: format!("{run:#?}"),
                    }
                    .into());
                }
                last_seen = run.status;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(STATUS_POLL);
        }
        Err(ChildError::Timeout {
            waiting_for: format!("run {run_id} to reach status {status:?}"),
            after: timeout,
            details: format!("last status seen: {last_seen}"),
        }
        .into())
    }

    fn subcommand(
        &self,
        name: &str,
        run_id: Option<RunId>,
        app_dir: &Path,
        federation: &str,
    ) -> CommandLine {
        let mut command = self.command.clone().arg(name);
        if let Some(run_id) = run_id {
            command = command.arg(run_id.to_string());
        }
        command.arg(app_dir).arg(federation)
    }

    /// Runs `command` and parses its JSON reply; `success: false` is an error.
    fn json(&self, command: &CommandLine) -> Result<(Reply, String)> {
        let output = command.output(self.timeout)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let text = combined(&output);
        let reply = parse_reply(&stdout)
            .ok_or_else(|| failure(command, "printed no JSON reply", text.clone()))?;
        if !reply.success {
            let message = reply
                .error_message
                .as_deref()
                .unwrap_or("(no error-message)");
            return Err(failure(command, &format!("failed: {message}"), text));
        }
        Ok((reply, text))
    }
}

/// The JSON object in `stdout`, skipping anything printed before it.
fn parse_reply(stdout: &str) -> Option<Reply> {
    let start = stdout.find('{')?;
    let mut objects = serde_json::Deserializer::from_str(&stdout[start..]).into_iter::<Reply>();
    objects.next()?.ok()
}

fn failure(command: &CommandLine, reason: &str, output: String) -> Error {
    ChildError::Command {
        command: command.to_string(),
        reason: reason.to_owned(),
        output,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reply_with_a_run_id_above_i64_max() {
        let stdout = r#"{
  "success": true,
  "run-id": 13278116630426058878,
  "fab-id": "test/numpyapp",
  "fab-name": "numpyapp",
  "fab-version": "1.0.0",
  "fab-hash": "a02efb51",
  "fab-filename": "test.numpyapp.1-0-0.a02efb51.fab"
}
"#;
        let reply = parse_reply(stdout).expect("parses");
        assert!(reply.success);
        assert_eq!(reply.run_id, Some(RunId(13_278_116_630_426_058_878)));
    }

    #[test]
    fn ls_reply() {
        let stdout = r#"{
  "success": true,
  "runs": [
    {
      "run-id": 13278116630426058878,
      "fab-id": "test/numpyapp",
      "fab-name": "numpyapp",
      "fab-version": "1.0.0",
      "fab-hash": "a02efb51",
      "status": "finished:completed",
      "elapsed": "00:00:24",
      "created-at": "2026-11-26 06:40:59Z",
      "running-at": "2026-11-26 06:41:00Z",
      "finished-at": "2026-11-26 06:41:24Z"
    }
  ]
}"#;
        let runs = parse_reply(stdout).expect("parses").runs.expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "finished:completed");
        assert_eq!(runs[0].fab_id, "test/numpyapp");
        assert_eq!(runs[0].running_at, "2026-11-26 06:41:00Z");
    }

    #[test]
    fn error_reply_and_leading_noise() {
        let stdout = "Loading project configuration... \n{\n  \"success\": false,\n  \
                      \"error-message\": \"Run ID 55 not found\"\n}\n";
        let reply = parse_reply(stdout).expect("parses");
        assert!(!reply.success);
        assert_eq!(reply.error_message.as_deref(), Some("Run ID 55 not found"));
        assert!(parse_reply("no json here").is_none());
    }
}
