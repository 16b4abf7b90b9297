//! SIGINT and SIGTERM, the two ways an operator stops the SuperLink.

use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// Resolves when the process receives SIGINT or SIGTERM.
///
/// The handlers are installed when this is called (not when first polled), so call it before
/// starting anything that should be stopped by a signal.
///
/// # Errors
///
/// The signal handlers could not be installed.
pub fn shutdown_signal() -> io::Result<impl std::future::Future<Output = &'static str>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}
