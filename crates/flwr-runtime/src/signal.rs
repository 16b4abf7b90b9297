//! SIGINT and SIGTERM, the two ways an operator stops a flower-rs process.
//!
//! Handlers are installed before anything else starts ([`Signals::install`]), so a signal that
//! arrives during startup is observed instead of killing the process with the default
//! disposition.

use std::fmt;
use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// Which signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what supervisors send).
    Terminate,
}

impl Signal {
    /// The conventional name, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Installed SIGINT and SIGTERM handlers.
#[derive(Debug)]
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// If the runtime cannot register signal handlers.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the first SIGINT or SIGTERM.
    pub async fn recv(mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// Runs `on_signal` on the first SIGINT or SIGTERM, from a thread of its own with its own small
/// runtime; returns once the handlers are installed. For programs whose main work is blocking
/// (the demos), where no runtime of theirs waits for signals.
///
/// # Errors
///
/// When the thread, its runtime or the handlers cannot be set up.
pub fn on_signal_thread<F>(on_signal: F) -> io::Result<()>
where
    F: FnOnce(Signal) + Send + 'static,
{
    let (installed_tx, installed_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = installed_tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let signals = match Signals::install() {
                    Ok(signals) => signals,
                    Err(error) => {
                        let _ = installed_tx.send(Err(error));
                        return;
                    }
                };
                let _ = installed_tx.send(Ok(()));
                on_signal(signals.recv().await);
            });
        })?;
    installed_rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the signal thread stopped before installing its handlers",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_conventional_ones() {
        assert_eq!(Signal::Interrupt.to_string(), "SIGINT");
        assert_eq!(Signal::Terminate.name(), "SIGTERM");
    }
}
