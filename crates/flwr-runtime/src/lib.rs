//! Process plumbing shared by the flower-rs servers.
//!
//! * [`listener`]: the accept loop behind every gRPC port: it never ends because `accept()`
//!   failed (descriptor exhaustion is logged and retried), caps concurrent connections,
//!   bounds TLS handshakes and silent peers, and hands tonic ready connections.
//! * [`limits`]: raising the open-file limit at start, so the connection cap is what bounds
//!   connections rather than `EMFILE`.
//! * [`process`]: children (ServerApps, ClientApps) that get SIGKILL when their parent dies.
//! * [`metrics`]: the Prometheus registry, the gRPC request counter and the `/metrics` server.
//! * [`health`]: `grpc.health.v1.Health`, NOT_SERVING while starting and once stopping.
//! * [`logging`]: `--log-format text|json`.
//! * [`RateLimited`]: one log line per interval for events a peer can trigger at will.

pub mod health;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod process;
mod rate_limit;

pub use rate_limit::RateLimited;
