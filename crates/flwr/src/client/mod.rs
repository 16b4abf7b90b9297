//! The ClientApp side: the [`ClientApp`] trait, the [`NumPyClient`] convenience layer that
//! speaks the legacy record layout of [`crate::compat`], app selection ([`ClientAppLoader`],
//! [`ClientAppRegistry`]) and the ClientAppIo runner ([`run_clientapp`], [`ClientAppArgs`]).

mod numpy;
mod runner;

pub use numpy::{NumPyClient, NumPyClientApp};
pub use runner::{run_clientapp, ClientAppArgs, ClientAppOptions, RunnerError, DEFAULT_ADDRESS};

use crate::app_spec::AppSpec;
use crate::context::{Context, Run};
use crate::error::AppError;
use crate::message::Message;
use crate::record::RecordSet;
use crate::registry::Registry;

/// Code that handles the messages a ServerApp sends to a node.
///
/// `handle` is called once per message with the node's per-run [`Context`]; whatever it leaves
/// in `context.state` is sent back to the SuperNode and handed to the next message of the run.
/// The runner wraps the returned records into a reply (`Message::create_reply`), and an error
/// into an error reply with code [`CLIENT_APP_RAISED_EXCEPTION`](crate::MessageError), in which
/// case the context changes are discarded.
pub trait ClientApp {
    /// Handles one message (`message.metadata.message_type` is `"train"`, `"evaluate"`,
    /// `"query"`, ...) and returns the content of the reply.
    ///
    /// # Errors
    ///
    /// Any [`AppError`]; it becomes an error reply.
    fn handle(&mut self, message: &Message, context: &mut Context) -> Result<RecordSet, AppError>;
}

/// Chooses the [`ClientApp`] for a message, as `flwr-clientapp` loads the app named by the
/// run's FAB.
///
/// Every `ClientApp` is a loader that serves every run with itself. A failed load becomes the
/// reference's error reply with code
/// [`LOAD_CLIENT_APP_EXCEPTION`](crate::MessageError::LOAD_CLIENT_APP_EXCEPTION).
pub trait ClientAppLoader {
    /// The app for a message of `run`; `spec` is read from the run's FAB (`None` if the
    /// SuperNode sent no readable FAB).
    ///
    /// # Errors
    ///
    /// An [`AppError`] explaining why no app fits.
    fn load(&mut self, spec: Option<&AppSpec>, run: &Run) -> Result<&mut dyn ClientApp, AppError>;
}

impl<T: ClientApp> ClientAppLoader for T {
    fn load(
        &mut self,
        _spec: Option<&AppSpec>,
        _run: &Run,
    ) -> Result<&mut dyn ClientApp, AppError> {
        Ok(self)
    }
}

/// Several compiled ClientApps, selected by the FAB's
/// `[tool.flwr.app.components].clientapp` reference (e.g. `"numpyapp.client_app:app"`).
pub type ClientAppRegistry = Registry<dyn ClientApp>;

impl Registry<dyn ClientApp> {
    /// Serves FABs whose clientapp reference is `component` with `app`.
    #[must_use]
    pub fn with(mut self, component: impl Into<String>, app: impl ClientApp + 'static) -> Self {
        self.insert(component.into(), Box::new(app));
        self
    }

    /// Serves every other FAB with `app`.
    #[must_use]
    pub fn with_fallback(mut self, app: impl ClientApp + 'static) -> Self {
        self.set_fallback(Box::new(app));
        self
    }
}

impl ClientAppLoader for Registry<dyn ClientApp> {
    fn load(&mut self, spec: Option<&AppSpec>, run: &Run) -> Result<&mut dyn ClientApp, AppError> {
        let component = spec.map(|s| s.clientapp.as_str());
        match self.select(component) {
            Ok(app) => Ok(app),
            Err(known) => Err(AppError::with_type(
                "LoadClientAppError",
                format!(
                    "no ClientApp for component {component:?} of FAB {:?} (known: {known:?})",
                    run.fab_id
                ),
            )),
        }
    }
}
