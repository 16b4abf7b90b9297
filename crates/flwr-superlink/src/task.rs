//! The one way this crate starts background tasks: named, traced, and aborted when the handle
//! is dropped, so no task outlives the SuperLink that started it. `clippy.toml` bans raw
//! `tokio::spawn` everywhere else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

/// A spawned task that is aborted when this handle is dropped. Awaiting it yields the task's
/// output.
#[derive(Debug)]
pub(crate) struct TaskHandle<T>(JoinHandle<T>);

impl<T> TaskHandle<T> {
    /// Whether the task has completed (or was aborted).
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Spawns `future` on the current runtime inside a `task` span named `name`.
pub(crate) fn spawn<F>(name: &'static str, future: F) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::debug_span!("task", name);
    #[allow(clippy::disallowed_methods)] // this is the one sanctioned spawn site
    let handle = tokio::spawn(future.instrument(span));
    TaskHandle(handle)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_aborts_the_task() {
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let handle = spawn("holds-sender", async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(sender);
        });
        drop(handle);
        // The aborted task drops its future, hence the sender, promptly.
        let result = tokio::time::timeout(Duration::from_secs(5), receiver).await;
        assert!(matches!(result, Ok(Err(_))), "task was not aborted");
    }

    #[tokio::test]
    async fn awaiting_yields_the_output() {
        let handle = spawn("answer", async { 42 });
        assert_eq!(handle.await.expect("task ran"), 42);
    }
}
