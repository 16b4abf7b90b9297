//! The one way the servers and the SDK start background tasks: named, traced, and aborted when
//! the handle is dropped, so no task outlives the component that started it. The crates'
//! `clippy.toml` files ban raw `tokio::spawn` everywhere else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument as _;

/// A spawned task that is aborted when this handle is dropped. Awaiting it yields the task's
/// output.
#[derive(Debug)]
pub struct TaskHandle<T> {
    name: &'static str,
    inner: JoinHandle<T>,
}

impl<T> TaskHandle<T> {
    /// The name given at spawn time.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Requests cancellation; awaiting the handle afterwards yields a cancelled [`JoinError`].
    pub fn abort(&self) {
        self.inner.abort();
    }

    /// Whether the task has completed (or was aborted).
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

impl<T> Future for TaskHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl<T> Drop for TaskHandle<T> {
    fn drop(&mut self) {
        self.inner.abort();
    }
}

/// Spawns `future` on the current runtime as task `name`, inside a `task` span of that name.
///
/// The span is at debug level: at the default `info` filter log lines look like the
/// reference's, and `RUST_LOG=debug` shows which task logged what.
pub fn spawn<F>(name: &'static str, future: F) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::debug_span!("task", name);
    // The only sanctioned call: this wrapper adds the name, the span and abort-on-drop.
    #[allow(clippy::disallowed_methods)]
    let inner = tokio::spawn(future.instrument(span));
    TaskHandle { name, inner }
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
        assert_eq!(handle.name(), "holds-sender");
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

    #[tokio::test]
    async fn an_aborted_task_reports_cancellation() {
        let handle = spawn("sleeper", tokio::time::sleep(Duration::from_secs(3600)));
        handle.abort();
        let error = handle.await.expect_err("aborted");
        assert!(error.is_cancelled());
    }
}
