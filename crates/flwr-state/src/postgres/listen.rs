//! Change events across replicas: `NOTIFY` payloads and the `LISTEN` connection behind
//! [`LinkState::watch`](crate::LinkState::watch).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use crate::link_state::{Change, ChangeSink};

/// The notification channel every writer notifies and every watcher listens on.
pub(super) const CHANNEL: &str = "flwr_changes";

/// First pause before reconnecting a broken listener; doubled per failure up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The compact `NOTIFY` payload of a change: `n:<node>`, `n:` (anonymous consumers),
/// `r:<run>`, `p`.
pub(super) fn payload(change: Change) -> String {
    match change {
        Change::NodeTasks(Some(node_id)) => format!("n:{node_id}"),
        Change::NodeTasks(None) => "n:".to_owned(),
        Change::Run(run_id) => format!("r:{run_id}"),
        Change::RunPending => "p".to_owned(),
    }
}

/// The change a payload stands for; `None` for anything this build did not write.
pub(super) fn parse_payload(text: &str) -> Option<Change> {
    if text == "p" {
        return Some(Change::RunPending);
    }
    if let Some(node) = text.strip_prefix("n:") {
        if node.is_empty() {
            return Some(Change::NodeTasks(None));
        }
        return node.parse().ok().map(|id| Change::NodeTasks(Some(id)));
    }
    text.strip_prefix("r:")
        .and_then(|run| run.parse().ok())
        .map(Change::Run)
}

/// A connection that listens on [`CHANNEL`]: the client (kept so the session stays open) and
/// the task that drives the connection and hands notifications to the sink. The task ends
/// when the connection does.
pub(super) struct Subscription {
    _client: Client,
    driver: JoinHandle<()>,
}

/// Opens a dedicated connection, starts delivering its notifications to `sink` and issues
/// `LISTEN`; once this returns, every change committed afterwards reaches the sink.
pub(super) async fn subscribe(
    config: &Config,
    sink: ChangeSink,
) -> Result<Subscription, tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // `poll_message` both drives the connection (so `LISTEN` below gets its answer) and yields
    // the asynchronous messages that `Connection`'s own future would discard.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if notification.channel() != CHANNEL {
                        continue;
                    }
                    // Malformed payloads (another writer, a newer build) are ignored.
                    if let Some(change) = parse_payload(notification.payload()) {
                        sink(change);
                    }
                }
                Some(Ok(_)) => {}
                // Both are terminal: the connection is gone.
                Some(Err(_)) | None => break,
            }
        }
    });
    if let Err(err) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(err);
    }
    Ok(Subscription {
        _client: client,
        driver,
    })
}

/// Keeps a subscription alive for the life of the store's runtime: when the connection breaks,
/// reconnects with a capped exponential back-off.
///
/// Notifications sent while no connection listened are lost, so after each reconnection the
/// sink hears [`Change::RunPending`] (the launcher looks for pending runs again). Held pulls
/// are not woken for what they may have missed: their waits are bounded in time, so a lost
/// wake-up only delays an answer until the next poll.
pub(super) async fn keep_listening(config: Config, sink: ChangeSink, first: Subscription) {
    let mut current = first;
    loop {
        // Ends when the connection does; a panicking sink ends it too, and we reconnect.
        let _ = (&mut current.driver).await;
        let mut backoff = FIRST_BACKOFF;
        current = loop {
            tokio::time::sleep(backoff).await;
            match subscribe(&config, sink.clone()).await {
                Ok(subscription) => break subscription,
                Err(_) => backoff = (backoff * 2).min(MAX_BACKOFF),
            }
        };
        sink(Change::RunPending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        for change in [
            Change::NodeTasks(Some(1)),
            Change::NodeTasks(Some(u64::MAX)),
            Change::NodeTasks(None),
            Change::Run(42),
            Change::Run(u64::MAX),
            Change::RunPending,
        ] {
            assert_eq!(parse_payload(&payload(change)), Some(change), "{change:?}");
        }
        for junk in [
            "",
            "x",
            "n:-1",
            "n:abc",
            "r:",
            "r:18446744073709551616",
            "pp",
        ] {
            assert_eq!(parse_payload(junk), None, "{junk:?}");
        }
    }
}
