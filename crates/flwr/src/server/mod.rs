//! The ServerApp side: the [`ServerApp`] trait, the [`Grid`] over ServerAppIo, the [`FedAvg`]
//! strategy, app selection ([`ServerAppLoader`], [`ServerAppRegistry`]) and the
//! `flwr-serverapp` runner ([`run_serverapp`], [`ServerAppArgs`]).

pub mod fedavg;
mod grid;
mod logs;
mod runner;

use std::future::Future;
use std::pin::Pin;

pub use fedavg::{
    FedAvg, FedAvgOutcome, History, MetricsAggregation, RoundTiming, WeightedSum,
    COMPUTE_SECONDS_METRIC,
};
pub use grid::{Grid, GridError, ServerAppInputs, DEFAULT_ADDRESS};
pub use logs::{LogTee, LogTeeWriter};
pub use runner::{run_serverapp, RunnerError, ServerAppArgs, ServerAppOptions};

use crate::app_spec::AppSpec;
use crate::context::{Context, Run};
use crate::error::AppError;
use crate::registry::Registry;

/// A boxed future borrowing its inputs, the return type of [`ServerApp::run`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Code that drives a run: sends messages to nodes through the [`Grid`] and aggregates the
/// replies.
///
/// `context.run_config` holds the app's `[tool.flwr.app.config]` with the run's overrides;
/// whatever the app leaves in `context.state` is stored by the SuperLink
/// (`PushServerAppOutputs`).
pub trait ServerApp {
    /// Runs the app to completion. Implement with `Box::pin(async move { ... })`.
    ///
    /// # Errors
    ///
    /// An [`AppError`] marks the run `finished:failed` with its message as details, unless it
    /// reports a stopped run ([`AppError::is_run_stopped`]).
    fn run<'a>(
        &'a mut self,
        grid: &'a mut Grid,
        context: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), AppError>>;
}

/// Chooses the [`ServerApp`] for a run, as `flwr-serverapp` loads the app named by the FAB.
/// Every `ServerApp` is a loader that serves every run with itself.
pub trait ServerAppLoader {
    /// The app for `run`, whose FAB says `spec`.
    ///
    /// # Errors
    ///
    /// An [`AppError`] explaining why no app fits; the run then fails.
    fn load(&mut self, spec: &AppSpec, run: &Run) -> Result<&mut dyn ServerApp, AppError>;
}

impl<T: ServerApp> ServerAppLoader for T {
    fn load(&mut self, _spec: &AppSpec, _run: &Run) -> Result<&mut dyn ServerApp, AppError> {
        Ok(self)
    }
}

/// Several compiled ServerApps, selected by the FAB's
/// `[tool.flwr.app.components].serverapp` reference (e.g. `"numpyapp.server_app:app"`).
pub type ServerAppRegistry = Registry<dyn ServerApp>;

impl Registry<dyn ServerApp> {
    /// Serves FABs whose serverapp reference is `component` with `app`.
    #[must_use]
    pub fn with(mut self, component: impl Into<String>, app: impl ServerApp + 'static) -> Self {
        self.insert(component.into(), Box::new(app));
        self
    }

    /// Serves every other FAB with `app`.
    #[must_use]
    pub fn with_fallback(mut self, app: impl ServerApp + 'static) -> Self {
        self.set_fallback(Box::new(app));
        self
    }
}

impl ServerAppLoader for Registry<dyn ServerApp> {
    fn load(&mut self, spec: &AppSpec, run: &Run) -> Result<&mut dyn ServerApp, AppError> {
        match self.select(Some(&spec.serverapp)) {
            Ok(app) => Ok(app),
            Err(known) => Err(AppError::with_type(
                "LoadServerAppError",
                format!(
                    "no ServerApp for component {:?} of FAB {:?} (known: {known:?})",
                    spec.serverapp, run.fab_id
                ),
            )),
        }
    }
}
