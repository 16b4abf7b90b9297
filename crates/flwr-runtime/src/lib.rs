//! Process plumbing shared by the flower-rs servers, the demos, the test kit and the app SDK.
//!
//! * [`listener`]: the accept loop behind every gRPC port: it never ends because `accept()`
//!   failed (descriptor exhaustion is logged and retried), caps concurrent connections,
//!   bounds TLS handshakes and silent peers, and hands tonic ready connections.
//! * [`limits`]: raising the open-file limit at start, so the connection cap is what bounds
//!   connections rather than `EMFILE`.
//! * [`process`]: children (ServerApps, ClientApps) that get SIGKILL when their parent dies,
//!   and the one way to stop a child's process group (SIGTERM, grace, SIGKILL, reap).
//! * [`child`]: supervised children with a log file each ([`CommandLine`], [`Proc`]), stopped
//!   and reaped on drop, and bounded one-shot runs; the demos' servers and the test kit's.
//! * [`channel`]: a SuperNode's (or load generator's) TLS to the SuperLink ([`channel::Tls`]).
//! * [`cli`]: reading a binary's flags: help and version exit 0, a bad command line is one
//!   `error: ...` line and exit 64.
//! * [`ports`]: free loopback ports for children that are given explicit addresses.
//! * [`scratch_postgres`]: a throwaway PostgreSQL cluster ([`TempPostgres`]).
//! * [`task`]: the one spawn helper: named, traced, aborted when its handle drops.
//! * [`signal`]: SIGINT and SIGTERM.
//! * [`clock`]: `time.time()` ([`clock::unix_now`]).
//! * [`home`]: the Flower home directory ([`home::flwr_home`]).
//! * [`metrics`]: the Prometheus registry, the gRPC request counter and the `/metrics` server.
//! * [`health`]: `grpc.health.v1.Health`, NOT_SERVING while starting and once stopping.
//! * [`logging`]: `--log-format text|json`.
//! * [`RateLimited`]: one log line per interval for events a peer can trigger at will.

pub mod channel;
pub mod child;
pub mod cli;
pub mod clock;
pub mod health;
pub mod home;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod ports;
pub mod process;
mod rate_limit;
pub mod scratch_postgres;
pub mod signal;
pub mod task;

pub use child::{ChildError, CommandLine, Proc};
pub use ports::{free_port, free_ports, free_ports_vec};
pub use rate_limit::RateLimited;
pub use scratch_postgres::TempPostgres;
