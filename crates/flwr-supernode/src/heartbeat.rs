//! The ping task that keeps a registered node online at the SuperLink (BEHAVIOR.md §2.3).
//!
//! ```text
//! loop:
//!     Ping{node, ping_interval: 30}       5 s deadline
//!     success       → sleep 25 × (0.8 + U(−0.1, 0.1)) = 17.5 … 22.5 s
//!     success=false → the SuperLink forgot the node: report it and stop
//!     error         → back off (full jitter over 1, 2, 4 … s, −5 s after a deadline)
//! ```
//!
//! Where the reference's ping thread dies on `success=false` and leaves a "zombie" node that
//! polls forever under an id the SuperLink no longer knows, this task reports
//! [`Beat::Forgotten`] so the node loop registers again.

use flwr_proto::Node;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, PingError};
use crate::timing::{ping_pause, ping_retry_wait};

/// What the heartbeat tells the node loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// `Ping` returned `success=false`: the SuperLink does not know this node (it restarted
    /// with in-memory state, or dropped the node); the task has stopped.
    Forgotten(u64),
}

/// Pings for `node` until `cancel` fires or the SuperLink forgets the node.
pub async fn run(fleet: Fleet, node: Node, events: mpsc::Sender<Beat>, cancel: CancellationToken) {
    let mut failures: u32 = 0;
    loop {
        let wait = match fleet.ping(&node).await {
            Ok(true) => {
                if failures > 0 {
                    tracing::info!("Ping succeeded again after {failures} failed attempts");
                }
                failures = 0;
                ping_pause(rand::random::<f64>())
            }
            Ok(false) => {
                tracing::warn!(
                    node_id = node.node_id,
                    "SuperLink no longer knows this node (Ping returned success=false)"
                );
                // The receiver only needs one report; if it is gone the node is shutting down.
                let _ = events.try_send(Beat::Forgotten(node.node_id));
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let timed_out = matches!(error, PingError::DeadlineExceeded);
                let wait = ping_retry_wait(failures, timed_out, rand::random::<f64>());
                tracing::debug!("{error}; next ping in {:.2} s", wait.as_secs_f64());
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}
