//! The Flower 1.14 SuperLink: the Fleet, ServerAppIo and Exec gRPC services over a shared
//! LinkState, the launcher that runs `flwr-serverapp` for pending runs, and the configuration of
//! the `flower-superlink` binary.
//!
//! # Layout
//!
//! - [`config`]: every `flower-superlink` flag ([`Args`], clap) and the validated [`Config`]
//!   (CLI.md §1), built before anything is bound.
//! - [`service`]: one module per gRPC service — [`service::fleet`] (with the seam for node
//!   authentication), [`service::serverappio`], [`service::exec`] — plus the shared [`Stores`](service::Stores).
//! - [`fleet_auth`]: SuperNode authentication (AUTH.md §7) as a service around the Fleet server,
//!   with the allow-list reloaded when its file changes.
//! - [`error`]: the services' domain [`Error`] and its single conversion to `tonic::Status`.
//! - [`launcher`]: supervised `flwr-serverapp` children for `--isolation subprocess`.
//! - [`metrics`]: every metric `--metrics-address` exports, and their scrape-time sources.
//! - [`server`]: [`SuperLink::bind`] (stores + ports) and [`SuperLink::run`] (serve, drain),
//!   and [`serve`] which does both; tests pass a oneshot as the shutdown future, the binary
//!   passes the first SIGINT or SIGTERM ([`flwr_runtime::signal`]).
//! - [`wakeups`]: the events per node and per run that end held pulls (`PullTaskIns`,
//!   `PullTaskRes`) as soon as what they wait for exists.

pub mod config;
pub mod error;
pub mod fleet_auth;
pub mod launcher;
pub mod metrics;
pub mod server;
pub mod service;
pub mod shared_response;
pub mod wakeups;

pub use config::{Args, Config, ConfigError};
pub use error::Error;
pub use server::{serve, StartError, SuperLink};
