//! Run logs: what `flwr log` shows. The reference `flwr-serverapp` mirrors its stdout/stderr
//! and uploads it with `PushLogs` at least every 0.2 s while a run is active (BEHAVIOR.md §4.5).
//!
//! [`LogTee`] is the Rust equivalent: hand [`LogTee::writer`] to the logging framework (for
//! `tracing_subscriber`: `.with_writer(move || tee.writer())`); everything written goes to
//! stderr and into a bounded buffer that [`run_serverapp`](crate::server::run_serverapp)
//! uploads for the active run.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

/// Chunks kept before the oldest are dropped (a stalled upload must not grow memory).
const CAPACITY: usize = 10_000;

/// A cloneable sink that copies log output to stderr and keeps it for upload.
#[derive(Clone, Debug, Default)]
pub struct LogTee {
    // A std mutex: held only to push or drain a queue, never across an await.
    inner: Arc<Mutex<Tee>>,
}

#[derive(Debug, Default)]
struct Tee {
    capturing: bool,
    chunks: VecDeque<String>,
}

impl LogTee {
    /// A tee that does not capture until a run starts.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer for one log event.
    pub fn writer(&self) -> LogTeeWriter {
        LogTeeWriter { tee: self.clone() }
    }

    /// Starts (or stops) keeping output for upload; stopping drops what was not taken.
    pub(crate) fn set_capturing(&self, capturing: bool) {
        let mut tee = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        tee.capturing = capturing;
        if !capturing {
            tee.chunks.clear();
        }
    }

    /// Takes everything kept so far.
    pub(crate) fn take(&self) -> Vec<String> {
        let mut tee = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        tee.chunks.drain(..).collect()
    }

    fn keep(&self, chunk: &[u8]) {
        let mut tee = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !tee.capturing {
            return;
        }
        if tee.chunks.len() >= CAPACITY {
            tee.chunks.pop_front();
        }
        tee.chunks
            .push_back(String::from_utf8_lossy(chunk).into_owned());
    }
}

/// Writes to stderr and to its [`LogTee`].
#[derive(Debug)]
pub struct LogTeeWriter {
    tee: LogTee,
}

impl Write for LogTeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tee.keep(buf);
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_output_only_while_capturing() {
        let tee = LogTee::new();
        write!(tee.writer(), "before").expect("writes");
        tee.set_capturing(true);
        write!(tee.writer(), "during").expect("writes");
        assert_eq!(tee.take(), vec!["during".to_owned()]);
        assert!(tee.take().is_empty());
        write!(tee.writer(), "dropped").expect("writes");
        tee.set_capturing(false);
        assert!(tee.take().is_empty());
    }

    #[test]
    fn buffer_is_bounded() {
        let tee = LogTee::new();
        tee.set_capturing(true);
        for i in 0..CAPACITY + 5 {
            tee.keep(format!("{i}").as_bytes());
        }
        let chunks = tee.take();
        assert_eq!(chunks.len(), CAPACITY);
        assert_eq!(chunks[0], "5");
    }
}
