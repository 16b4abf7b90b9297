//! Example Flower apps written with the [`flwr`] SDK.
//!
//! # Layout
//!
//! - [`data`]: the red wine quality data set shipped by `linfa-datasets`, as a binary task,
//!   partitioned by `partition-id`/`num-partitions` with a held-out evaluation split.
//! - [`logreg`]: federated logistic regression (ClientApp, ServerApp with FedAvg, and the
//!   centralised baseline [`logreg::train_centrally`]).
//! - [`numpy_app`]: a port of the `flwr new --framework NumPy` template, to pair Rust apps with
//!   the Python template's.
//! - Binaries `flwr-rs-clientapp` and `flwr-rs-serverapp`: drop-ins for `flwr-clientapp` and
//!   `flwr-serverapp` serving both apps, chosen by the FAB's component reference
//!   ([`client_registry`], [`server_registry`]) or forced with `--app-name logreg|numpy`.
//! - `app/logreg/`: the app bundle to `flwr run` (its Python modules are stubs that only name
//!   the components).
//!
//! ```text
//! flower-superlink --insecure --isolation process
//! flower-supernode --insecure --isolation process --clientappio-api-address 127.0.0.1:9094 \
//!     --node-config 'partition-id=0 num-partitions=2'
//! flwr-rs-clientapp --clientappio-api-address 127.0.0.1:9094
//! flwr-rs-serverapp --serverappio-api-address 127.0.0.1:9091
//! flwr run crates/flwr-examples/app/logreg
//! ```

pub mod data;
pub mod logreg;
pub mod numpy_app;

use flwr::client::{ClientAppRegistry, NumPyClientApp};
use flwr::server::ServerAppRegistry;
use flwr::Context;

/// Which example app a binary serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppChoice {
    /// Federated logistic regression.
    Logreg,
    /// The NumPy template port.
    Numpy,
}

/// ClientApps by component reference; with `forced`, that app serves every run.
pub fn client_registry(forced: Option<AppChoice>) -> ClientAppRegistry {
    let logreg =
        || NumPyClientApp::new(|context: &Context| logreg::LogRegClient::from_context(context));
    let numpy = || NumPyClientApp::new(|_: &Context| Ok(numpy_app::NumpyClient));
    match forced {
        Some(AppChoice::Logreg) => ClientAppRegistry::new().with_fallback(logreg()),
        Some(AppChoice::Numpy) => ClientAppRegistry::new().with_fallback(numpy()),
        None => ClientAppRegistry::new()
            .with(logreg::CLIENT_COMPONENT, logreg())
            .with(numpy_app::CLIENT_COMPONENT, numpy()),
    }
}

/// ServerApps by component reference; with `forced`, that app serves every run.
pub fn server_registry(forced: Option<AppChoice>) -> ServerAppRegistry {
    match forced {
        Some(AppChoice::Logreg) => ServerAppRegistry::new().with_fallback(logreg::LogRegServerApp),
        Some(AppChoice::Numpy) => ServerAppRegistry::new().with_fallback(numpy_app::NumpyServerApp),
        None => ServerAppRegistry::new()
            .with(logreg::SERVER_COMPONENT, logreg::LogRegServerApp)
            .with(numpy_app::SERVER_COMPONENT, numpy_app::NumpyServerApp),
    }
}
