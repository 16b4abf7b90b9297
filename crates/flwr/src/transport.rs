//! Channels to the AppIo APIs and the reference's retry rule for their calls.
//!
//! `flwr-serverapp` and `flwr-clientapp` open plaintext channels with 512 MiB message limits
//! and no keep-alive (PROTOCOL.md §2.2), and wrap every stub call in a retry invoker that
//! retries only `UNAVAILABLE`, waiting 1, 2, 4, 8, 16, 20, 20, ... seconds with full jitter
//! (BEHAVIOR.md §2.8), without a limit. [`RetryPolicy`] does the same and can be bounded.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tonic::transport::{Channel, Endpoint};

/// The flags `flwr-serverapp` and `flwr-clientapp` share about their channel, flattened into
/// [`ServerAppArgs`](crate::server::ServerAppArgs) and
/// [`ClientAppArgs`](crate::client::ClientAppArgs).
#[derive(Clone, Debug, clap::Args)]
pub struct ChannelArgs {
    /// Use a plaintext channel. Accepted for compatibility: plaintext is the only mode, as in
    /// the reference (which refuses to start without this flag).
    #[arg(long)]
    pub insecure: bool,
    /// Accepted for compatibility and ignored: a Rust app installs nothing.
    #[arg(long)]
    pub flwr_dir: Option<std::path::PathBuf>,
    /// Largest message in bytes; the SuperLink or SuperNode that starts the app with
    /// `--grpc-max-message-length` passes its limit in the environment. (Not a Flower 1.14
    /// flag.)
    #[arg(
        long,
        hide = true,
        env = flwr_proto::MESSAGE_SIZE_ENV,
        default_value_t = flwr_proto::MAX_MESSAGE_SIZE as u64,
        value_parser = clap::value_parser!(u64).range(
            flwr_proto::MIN_MESSAGE_SIZE as u64..=flwr_proto::MAX_MESSAGE_SIZE_CEILING as u64
        )
    )]
    pub grpc_max_message_length: u64,
}

impl ChannelArgs {
    /// `--grpc-max-message-length` in bytes (the parser bounds it by the ceiling).
    pub fn max_message_size(&self) -> usize {
        usize::try_from(self.grpc_max_message_length)
            .unwrap_or(flwr_proto::MAX_MESSAGE_SIZE_CEILING)
    }
}

/// The address could not be turned into a gRPC endpoint.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {address:?}: {source}")]
pub struct AddressError {
    /// The address given.
    pub address: String,
    /// Why tonic refused it.
    #[source]
    pub source: tonic::transport::Error,
}

/// A lazily connecting plaintext channel to `host:port` (an IPv6 host in brackets).
///
/// # Errors
///
/// [`AddressError`] if the address does not form a URI.
pub fn channel(address: &str) -> Result<Channel, AddressError> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| AddressError {
        address: address.to_owned(),
        source,
    })?;
    Ok(endpoint.connect_lazy())
}

/// When to retry a failed call.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first attempt; `None` (the
    /// reference's behaviour) retries forever.
    pub max_elapsed: Option<Duration>,
    /// First back-off step; doubled per attempt.
    pub base: Duration,
    /// Largest back-off step.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_elapsed: None,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Runs `call` until it succeeds, fails with a code other than `UNAVAILABLE`, or the
    /// policy gives up (then the last `UNAVAILABLE` status is returned).
    ///
    /// # Errors
    ///
    /// The final status of `call`.
    pub async fn run<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let mut step = self.base;
        loop {
            let status = match call().await {
                Ok(value) => return Ok(value),
                Err(status) if status.code() == tonic::Code::Unavailable => status,
                Err(status) => return Err(status),
            };
            // Full jitter: sleep a uniform fraction of the current step.
            let mut wait = step.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
            if let Some(max) = self.max_elapsed {
                let left = max.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(status);
                }
                wait = wait.min(left);
            }
            tracing::debug!(
                "{what}: {} ({}); retrying in {wait:.1?}",
                status.code(),
                status.message()
            );
            tokio::time::sleep(wait).await;
            step = (step * 2).min(self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_only_unavailable() {
        let policy = RetryPolicy {
            max_elapsed: None,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let result = policy
            .run("test", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        Err(tonic::Status::unavailable("down"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(result.expect("succeeds"), 3);

        let calls = AtomicU32::new(0);
        let error = policy
            .run("test", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(tonic::Status::permission_denied("stopped")) }
            })
            .await
            .expect_err("no retry");
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bounded_policy_gives_up() {
        let policy = RetryPolicy {
            max_elapsed: Some(Duration::from_millis(30)),
            base: Duration::from_millis(5),
            cap: Duration::from_millis(5),
        };
        let error = policy
            .run("test", || async {
                Err::<(), _>(tonic::Status::unavailable("down"))
            })
            .await
            .expect_err("gives up");
        assert_eq!(error.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn addresses_become_http_uris() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        assert!(channel("127.0.0.1:9094").is_ok());
        assert!(channel("[::1]:9094").is_ok());
        assert!(channel("bad address with spaces").is_err());
    }
}
