//! The log output of the binaries: human-readable text or one JSON object per line
//! (`--log-format`), on stderr, filtered by `RUST_LOG` (default `info`).
//!
//! Both formats carry the same events with the same fields; the JSON form puts the fields
//! beside `timestamp`, `level` and `message` at the top level of each object. What is logged
//! is decided where events are emitted, so keys and tokens stay out of both.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
}

/// The log subscriber could not be installed (one is already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct InitError(String);

/// Installs the process's log subscriber writing `format` to stderr.
///
/// # Errors
///
/// A subscriber is already installed.
pub fn init(format: LogFormat) -> Result<(), InitError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
    installed.map_err(|error| InitError(error.to_string()))
}
