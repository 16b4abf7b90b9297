//! [`DemoError`]: everything that can stop the demo.

use std::path::PathBuf;
use std::time::Duration;

use flwr_auth::AuthError;
use flwr_keygen::certs::CertError;
use flwr_keygen::files::WriteError;

/// Why the demo stopped. The first line of each message is meant to be shown on its own;
/// process errors from [`flwr_runtime::child`] continue with the tail of the process's log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A binary the demo starts is not in the bin directory.
    #[error(
        "{} not found; scripts/demo builds it (or run `cargo build --release --bins` and pass \
         --bin-dir target/release)",
        .0.display()
    )]
    BinaryMissing(PathBuf),
    /// The app bundle cannot be packaged or lacks a run config key the demo sets.
    #[error("app bundle {}: {reason}", dir.display())]
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// [`crate::Cancel::cancel`] was called (the binary does on SIGINT/SIGTERM).
    #[error("interrupted")]
    Cancelled,
    /// The federated and central models could not be compared.
    #[error("central training: {0}")]
    Central(String),
    /// The TLS certificates could not be made.
    #[error("generating certificates: {0}")]
    Certificates(#[from] CertError),
    /// A [`crate::DemoConfig`] value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file or directory could not be created, read or written.
    #[error("{context}: {source}")]
    Io {
        /// What the demo was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The SuperNode keys could not be made.
    #[error("generating keys: {0}")]
    Keys(#[from] AuthError),
    /// Starting, watching or signalling a process failed (the message carries its log tail).
    #[error(transparent)]
    Process(#[from] flwr_runtime::ChildError),
    /// A SuperLink or SuperNode exited while the federation was running.
    #[error("{name} exited unexpectedly ({status}); see {}", log.display())]
    ProcessDied {
        /// Which process.
        name: String,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A SuperLink or SuperNode did not exit with status 0 after SIGTERM.
    #[error("{name} did not stop cleanly after SIGTERM ({status}); see {}", log.display())]
    ProcessStop {
        /// Which process.
        name: String,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The rogue SuperNode, whose key is not on the allow-list, was let in.
    #[error("the rogue SuperNode was not refused: {0}")]
    RogueAccepted(String),
    /// An Exec API call failed.
    #[error("Exec API: {message} ({code:?})")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The run ended but did not complete.
    #[error("run {run_id} ended {status}: {details}")]
    RunFailed {
        /// The run.
        run_id: u64,
        /// `status:sub_status`.
        status: String,
        /// The SuperLink's details (the ServerApp's error).
        details: String,
    },
    /// `StartRun` returned no run id (the SuperLink logs why).
    #[error("the SuperLink did not start the run (StartRun returned no run id)")]
    StartRefused,
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What was awaited.
        waiting_for: String,
        /// The bound.
        after: Duration,
    },
    /// The Exec API channel could not be set up.
    #[error("connecting to the Exec API: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The credentials could not be written.
    #[error("writing credentials: {0}")]
    Write(#[from] WriteError),
}

impl From<tonic::Status> for DemoError {
    // Only code and message: a `Status` is large and its metadata is of no use here.
    fn from(status: tonic::Status) -> Self {
        Self::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Wraps an [`std::io::Error`] with what the demo was doing.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let context = context.into();
    move |source| DemoError::Io { context, source }
}
