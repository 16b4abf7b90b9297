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
//! - [`port`]: free loopback ports ([`free_port`], [`free_ports`]), from
//!   [`flwr_runtime::ports`].
//! - [`process`]: [`CommandLine`] and [`Proc`], a child in its own process group whose output
//!   goes to a log file and which is terminated (SIGTERM, then SIGKILL) and reaped on drop, from
//!   [`flwr_runtime::child`].
//! - [`postgres`]: a throwaway PostgreSQL cluster ([`TempPostgres`]), from
//!   [`flwr_runtime::scratch_postgres`].
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

use std::path::PathBuf;

pub mod app;
pub mod cli;
pub mod cluster;
pub mod pki;
pub mod venv;

/// Free TCP ports on 127.0.0.1 (the runtime's, so tests and demos share one rule).
pub mod port {
    pub use flwr_runtime::ports::*;
}

/// Throwaway PostgreSQL clusters (the runtime's, which the high-availability demo also uses).
pub mod postgres {
    pub use flwr_runtime::scratch_postgres::*;
}

/// Child processes: command lines, long-running [`Proc`]s and bounded one-shot runs (the
/// runtime's, which the demos also use).
pub mod process {
    pub use flwr_runtime::child::{combined, CommandLine, Proc};
}

pub use app::{Federation, FederationTls, NumpyApp};
pub use cli::{Flwr, RunId, RunInfo};
pub use flwr_runtime::ChildError;
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
    /// Starting, watching or stopping a process failed, or a bounded wait ran out (the message
    /// carries the command line and the last lines of its log or output).
    #[error(transparent)]
    Child(#[from] ChildError),
    /// A pyproject.toml could not be rewritten as asked.
    #[error("{path}: {reason}")]
    Pyproject {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        reason: String,
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

/// Wraps an [`std::io::Error`] with what the harness was doing.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let wrap = flwr_runtime::child::io_error(context);
    move |source| Error::Child(wrap(source))
}
