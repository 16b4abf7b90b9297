//! `--mode closed-loop`: C workers, each sending the next request as soon as its previous one
//! is answered, taking nodes round-robin so that the load is spread over every node and
//! connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

use crate::config::Rpc;
use crate::node::SimNode;
use crate::recorder::{Outcome, Recorder};

/// Pause before a retry, so that a load balancer can notice a dead backend.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Whether a failure means the call was lost with its connection (worth another try).
fn lost(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed(
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled,
            _
        )
    )
}

/// What the closed loop sends, how many at once, until when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loop {
    pub(crate) rpc: Rpc,
    pub(crate) concurrency: usize,
    pub(crate) end: Instant,
    pub(crate) call_timeout: Duration,
    /// Retries of a call lost with its connection.
    pub(crate) retries: u32,
}

/// Starts `concurrency` workers sending `rpc` until `end` into `tasks`.
pub(crate) fn spawn_workers(
    tasks: &mut JoinSet<()>,
    nodes: &Arc<Vec<SimNode>>,
    settings: Loop,
    recorder: &Arc<Recorder>,
) {
    let Loop {
        rpc,
        concurrency,
        end,
        call_timeout,
        retries,
    } = settings;
    if nodes.is_empty() {
        return;
    }
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..concurrency {
        let (nodes, next, recorder) = (Arc::clone(nodes), Arc::clone(&next), Arc::clone(recorder));
        tasks.spawn(async move {
            while Instant::now() < end {
                let node = &nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
                let sent = Instant::now();
                let mut outcome = node.call(rpc, call_timeout).await;
                let mut attempts = 0;
                while attempts < retries && lost(&outcome) && Instant::now() < end {
                    attempts += 1;
                    recorder.retried(node.index);
                    tokio::time::sleep(RETRY_PAUSE).await;
                    outcome = node.call(rpc, call_timeout).await;
                }
                recorder.record(node.index, rpc.into(), sent.elapsed(), outcome);
            }
        });
    }
}
