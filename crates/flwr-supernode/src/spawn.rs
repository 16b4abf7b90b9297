//! The one helper through which the SuperNode spawns tasks.
//!
//! Every task gets a name and a tracing span, and its handle aborts the task when dropped, so a
//! component that goes away takes its background work with it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument as _;

/// A spawned task that is aborted when this handle is dropped.
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

/// Spawns `future` on the current runtime as task `name`, inside a span of that name.
pub fn spawn<F>(name: &'static str, future: F) -> TaskHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let span = tracing::info_span!("task", name);
    // The only sanctioned call: this wrapper adds the name, the span and abort-on-drop.
    #[allow(clippy::disallowed_methods)]
    let inner = tokio::spawn(future.instrument(span));
    TaskHandle { name, inner }
}
