//! The Flower 1.14 SuperNode, byte-compatible with Python `flwr==1.14.0` on every wire it speaks.
//!
//! A SuperNode registers with a SuperLink's Fleet API, polls it for instructions (`TaskIns`),
//! runs the Python `flwr-clientapp` for each one through its own ClientAppIo API (by default one
//! long-lived process per run, [`warm`]), and pushes the reply (`TaskRes`) back. The `flower-supernode` binary is a thin shell around [`run`].
//!
//! # Layout
//!
//! - [`config`]: the `flower-supernode` flags (clap) and their validation into a [`Config`];
//! - [`node_config`]: `--node-config` from a file or `key=value` pairs (typing and flattening
//!   are `flwr_core::config`'s);
//! - [`timing`]: retry back-off, heartbeat and idle-poll timing as pure functions;
//! - [`message`]: `TaskIns` → `Message` → `TaskRes` mapping, reply validation, error replies;
//! - [`install`]: FAB installation under the Flower home (hash, layout and metadata are
//!   `flwr_core::fab`'s);
//! - [`signer`]: the seam where node authentication attaches `public-key`/`auth-token`;
//! - [`fleet`]: the Fleet API client (TLS, message limits, signing, retries);
//! - [`heartbeat`]: the ping task;
//! - `cache`: the bounded maps of runs, FABs and contexts;
//! - [`clientappio`]: the ClientAppIo gRPC service and its token state machine;
//! - [`launcher`]: starting, timing out and reaping `flwr-clientapp`;
//! - [`warm`]: the long-lived ClientApp process and its supervisor (`--clientapp-lifetime warm`);
//! - [`metrics`]: what `--metrics-address` exports;
//! - [`node`]: the connection loop tying it all together ([`run`]);
//!
//! Tasks are spawned only through [`flwr_runtime::task::spawn`]; the binary stops on the first
//! SIGINT or SIGTERM ([`flwr_runtime::signal`]).

mod cache;
pub mod clientappio;
pub mod config;
pub mod fleet;
pub mod heartbeat;
pub mod install;
pub mod launcher;
pub mod message;
pub mod metrics;
pub mod node;
pub mod node_config;
pub mod signer;
pub mod timing;
pub mod warm;

pub use config::{Args, ClientAppLifetime, Config, ConfigError, Isolation, Tls};
pub use node::{run, run_operated, run_with_signer, NodeError, Operations};
// The module's former name, kept so existing `flwr_supernode::backoff::RetryPolicy` paths work.
pub use timing as backoff;
