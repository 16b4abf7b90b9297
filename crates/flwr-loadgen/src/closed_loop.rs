//! `--mode closed-loop`: C workers, each sending the next request as soon as its previous one
//! is answered, taking nodes round-robin so that the load is spread over every node and
//! connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Rpc;
use crate::node::SimNode;
use crate::recorder::Recorder;

/// Starts `concurrency` workers sending `rpc` until `end` into `tasks`.
pub(crate) fn spawn_workers(
    tasks: &mut JoinSet<()>,
    nodes: &Arc<Vec<SimNode>>,
    rpc: Rpc,
    concurrency: usize,
    end: Instant,
    call_timeout: Duration,
    recorder: &Arc<Recorder>,
) {
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
                let outcome = node.call(rpc, call_timeout).await;
                recorder.record(node.index, rpc.into(), sent.elapsed(), outcome);
            }
        });
    }
}
