//! Flower app SDK for Rust: write ClientApps and ServerApps that plug into a Flower 1.14
//! deployment (Python or Rust SuperLink and SuperNodes) in place of Python's `flwr-clientapp`
//! and `flwr-serverapp`, and interoperate with Python apps on the other side.
//!
//! # Layout
//!
//! - Data model: [`Message`] (metadata + [`RecordSet`] content or [`MessageError`]),
//!   [`RecordSet`] of [`ParametersRecord`] (ordered keys → [`Array`]), [`MetricsRecord`] and
//!   [`ConfigsRecord`] with typed values mirroring the protobuf oneofs, [`Context`], [`Run`],
//!   [`Fab`]. Conversions to `flwr_proto` are `From`, from it `TryFrom` with
//!   [`ConversionError`] (malformed input never panics).
//! - [`npy`]: [`Array`] payloads are NumPy `.npy` bytes, written exactly like `numpy.save`
//!   ([`Array::from_f32`], [`Array::to_f64`], ...).
//! - [`compat`]: the legacy `fitins.*`/`fitres.*`/`evaluateins.*`/`evaluateres.*` record layout
//!   that Python strategies and `NumPyClient`s use.
//! - [`client`]: the [`ClientApp`](client::ClientApp) trait, [`NumPyClient`](client::NumPyClient)
//!   and its adapter, and the ClientAppIo runner ([`client::run_clientapp`]).
//! - [`server`]: the [`ServerApp`](server::ServerApp) trait, the [`Grid`](server::Grid) over
//!   ServerAppIo, [`FedAvg`](server::FedAvg), and the ServerAppIo runner
//!   ([`server::run_serverapp`]).
//! - [`app_spec`]: what a Rust app reads from its run's FAB ([`AppSpec`]).
//! - [`registry`]: compiled apps by component reference, for either side
//!   ([`registry::Registry`]).
//! - [`transport`]: channels and the reference's retry rule.
//!
//! # Running a Rust app
//!
//! A Rust app is a binary. It takes the place of `flwr-clientapp` / `flwr-serverapp` and accepts
//! their flags ([`client::ClientAppArgs`], [`server::ServerAppArgs`]):
//!
//! ```text
//! my-clientapp --clientappio-api-address 127.0.0.1:9094 [--token T] [--insecure]
//! my-serverapp --serverappio-api-address 127.0.0.1:9091 [--run-once] [--insecure]
//! ```
//!
//! There are two ways to have a SuperNode or SuperLink use it (CLI.md §3, BEHAVIOR.md §1):
//!
//! - **Process isolation** (`flower-supernode --isolation process`,
//!   `flower-superlink --isolation process`): the operator starts the Rust binary next to the
//!   SuperNode/SuperLink, pointed at its ClientAppIo/ServerAppIo address. Without `--token`
//!   the ClientApp keeps polling `GetToken` and serves message after message; the ServerApp
//!   keeps polling for pending runs unless `--run-once` is given.
//! - **Subprocess isolation** (the default): the SuperNode runs
//!   `flwr-clientapp --clientappio-api-address ADDR --token T --insecure` and the SuperLink
//!   runs `flwr-serverapp --run-once --serverappio-api-address ADDR --insecure`, both looked up
//!   on `PATH`. Install (or symlink) the Rust binary under that name in a directory that comes
//!   first on the `PATH` of the SuperNode/SuperLink process.
//!
//! # How a run names the Rust app
//!
//! A run is started with `flwr run` of an app directory, whose `pyproject.toml` must (for the
//! `flwr` CLI's validation) name a ServerApp and a ClientApp as `module:attribute`
//! references of existing Python modules:
//!
//! ```toml
//! [tool.flwr.app.components]
//! serverapp = "logreg.server_app:app"
//! clientapp = "logreg.client_app:app"
//! ```
//!
//! A Python app process imports these. A Rust binary instead treats the reference string as
//! the **name** of one of its compiled apps: [`client::ClientAppRegistry`] and
//! [`server::ServerAppRegistry`] map component references to apps (the Python modules may be
//! stubs such as `app = None`). A single app (any type implementing
//! [`ClientApp`](client::ClientApp) or [`ServerApp`](server::ServerApp)) serves every run
//! regardless of the reference. When no app matches, the ClientApp runner replies with the
//! reference's `LOAD_CLIENT_APP_EXCEPTION` error and the ServerApp runner fails the run, as the
//! Python processes do when an import fails. The rest of the FAB is not installed; the
//! `[tool.flwr.app.config]` table still provides the run config ([`AppSpec::run_config`]).
//!
//! # Where the runners deliberately differ from the Python processes
//!
//! On the wire they behave as `flwr-clientapp`/`flwr-serverapp` 1.14 (same calls, order,
//! request shapes and polling periods). Around it:
//!
//! - `--insecure` is accepted but not required (plaintext is the only mode either way).
//! - A gRPC failure ends the process with status 1 (the reference logs it and exits 0); the
//!   SuperNode reports a missing reply either way.
//! - A FAB whose `pyproject.toml` cannot be read yields a load-error reply instead of a crash.
//! - No 1 s pause after a *successful* `GetToken`.
//! - [`Grid::send_and_receive`](server::Grid::send_and_receive) does not wait for ids the
//!   SuperLink refused (empty strings), which the reference would pull and fail on.
//! - [`FedAvg`](server::FedAvg) averages numeric client metrics weighted by `num_examples` by
//!   default (the reference drops them unless given an aggregation function), and refuses to
//!   aggregate zero examples instead of producing NaN.
//!
//! # Example
//!
//! ```no_run
//! use flwr::client::{run_clientapp, NumPyClient, NumPyClientApp};
//! use flwr::{AppError, Array, Config, Context};
//!
//! struct Client;
//!
//! impl NumPyClient for Client {
//!     fn fit(&mut self, parameters: Vec<Array>, _config: &Config)
//!         -> Result<(Vec<Array>, u64, Config), AppError> {
//!         Ok((parameters, 1, Config::new()))
//!     }
//!     fn evaluate(&mut self, _parameters: Vec<Array>, _config: &Config)
//!         -> Result<(f64, u64, Config), AppError> {
//!         Ok((0.0, 1, Config::new()))
//!     }
//! }
//!
//! # async fn run() -> Result<(), flwr::client::RunnerError> {
//! let mut app = NumPyClientApp::new(|_context: &Context| Ok(Client));
//! run_clientapp(&mut app, "127.0.0.1:9094", None).await
//! # }
//! ```

pub mod app_spec;
pub mod client;
pub mod compat;
mod context;
mod error;
mod message;
pub mod npy;
mod record;
pub mod registry;
pub mod server;
pub mod transport;

pub use app_spec::AppSpec;
pub use context::{Context, Fab, Run, RunStatus};
pub use error::{AppError, CompatError, ConversionError};
pub use message::{message_type, now, Message, MessageError, Metadata, Payload, DEFAULT_TTL};
pub use npy::NpyError;
pub use record::{
    config_from_proto, config_to_proto, Array, Config, ConfigsRecord, ConfigsRecordValue,
    MetricsRecord, MetricsRecordValue, ParametersRecord, RecordSet, Scalar,
};
