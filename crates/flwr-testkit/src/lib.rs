//! End-to-end test harness for flower-rs: runs SuperLinks, SuperNodes and the `flwr` CLI as real
//! processes on loopback ports and watches what they print.
//!
//! The harness knows nothing about *whose* binaries it starts. A SuperLink or a SuperNode is just
//! a [`CommandLine`] (program path and arguments); the Python reference from the virtualenv
//! ([`Venv`]) and our own binaries are started the same way, so one test can mix them.
//!
//! # Layout
//!
//! - [`venv`]: locate the reference virtualenv (`$FLWR_VENV`, else `<workspace>/.venv`) and build
//!   command lines whose `PATH` finds `flwr-serverapp` / `flwr-clientapp`.
//! - [`port`]: free loopback ports ([`free_port`], [`free_ports`]).
//! - [`process`]: [`CommandLine`] and [`Proc`], a child in its own process group whose output
//!   goes to a log file and which is terminated (SIGTERM, then SIGKILL) and reaped on drop.
//! - [`pki`]: a CA and a server certificate made with the `openssl` command the way Flower's
//!   guides do ([`Pki`]).
//! - [`app`]: the NumPy app of `flwr new` with a federation pointing at a SuperLink
//!   ([`NumpyApp`], [`Federation`]).
//! - [`cli`]: the `flwr run/ls/log/stop` client ([`Flwr`], [`RunId`], [`RunInfo`]).
//! - [`cluster`]: a whole federation where each process is the reference or ours
//!   ([`cluster::Cluster`], [`cluster::Side`]), the flow every interoperability test shares.
//!
//! Every wait is bounded by a deadline *and* an iteration count, and every error carries enough
//! context (command line, last log lines) to debug a failing test from its output alone.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use flwr_testkit::{free_ports, Proc, Venv};
//!
//! # fn main() -> flwr_testkit::Result<()> {
//! let venv = Venv::locate()?;
//! let [fleet, serverappio, exec] = free_ports::<3>()?;
//! let command = venv
//!     .command(venv.superlink())
//!     .arg("--insecure")
//!     .arg("--fleet-api-address")
//!     .arg(format!("127.0.0.1:{fleet}"))
//!     .arg("--serverappio-api-address")
//!     .arg(format!("127.0.0.1:{serverappio}"))
//!     .arg("--exec-api-address")
//!     .arg(format!("127.0.0.1:{exec}"));
//! let mut superlink = Proc::spawn("superlink", &command, std::path::Path::new("/tmp"))?;
//! superlink.wait_for_log("Starting Fleet API", Duration::from_secs(30))?;
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod app;
pub mod cli;
pub mod cluster;
pub mod pki;
pub mod port;
pub mod postgres;
pub mod process;
pub mod venv;

pub use app::{Federation, FederationTls, NumpyApp};
pub use cli::{Flwr, RunId, RunInfo};
pub use pki::Pki;
pub use port::{free_port, free_ports, free_ports_vec};
pub use postgres::TempPostgres;
pub use process::{CommandLine, Proc};
pub use venv::{workspace_root, Venv};

/// Result of every fallible harness operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while driving processes.
///
/// Messages are multi-line on purpose: a failing test prints the error, and the tail of the
/// relevant log or command output is usually the only clue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A pyproject.toml could not be rewritten as asked.
    #[error("{path}: {reason}")]
    Pyproject {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        reason: String,
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
        source: nix::errno::Errno,
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
    /// The reference virtualenv is missing or incomplete.
    #[error(
        "the reference virtualenv at {} is not usable: {reason}; run scripts/test to create it \
         (or point FLWR_VENV at a virtualenv with flwr==1.14.0)",
        path.display()
    )]
    VenvMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

/// Wraps an [`io::Error`] with what the harness was doing.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The last `lines` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
