//! [`Registry`]: compiled apps named by the component reference a FAB gives
//! (`[tool.flwr.app.components]`), with an optional fallback; one type for the ClientApp and
//! the ServerApp side ([`crate::client::ClientAppRegistry`],
//! [`crate::server::ServerAppRegistry`]).

use std::fmt;

/// Apps of kind `A` (`dyn ClientApp` or `dyn ServerApp`) by component reference, e.g.
/// `"numpyapp.client_app:app"`, plus an app for every other reference.
pub struct Registry<A: ?Sized> {
    apps: Vec<(String, Box<A>)>,
    fallback: Option<Box<A>>,
}

impl<A: ?Sized> Default for Registry<A> {
    fn default() -> Self {
        Self {
            apps: Vec::new(),
            fallback: None,
        }
    }
}

impl<A: ?Sized> fmt::Debug for Registry<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("components", &self.components().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl<A: ?Sized> Registry<A> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registered component references, in registration order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|(component, _)| component.as_str())
    }

    /// Registers `app` for `component` (the builders of each side box the app).
    pub(crate) fn insert(&mut self, component: String, app: Box<A>) {
        self.apps.push((component, app));
    }

    /// Makes `app` serve every component that has no app of its own.
    pub(crate) fn set_fallback(&mut self, app: Box<A>) {
        self.fallback = Some(app);
    }

    /// The app registered for `component` (the first one, if registered twice), else the
    /// fallback.
    ///
    /// # Errors
    ///
    /// The registered components, when neither exists.
    pub(crate) fn select(&mut self, component: Option<&str>) -> Result<&mut A, Vec<String>> {
        let index = component.and_then(|wanted| self.components().position(|c| c == wanted));
        if let Some(index) = index {
            // `index` came from `position` over the same vector.
            return Ok(self.apps[index].1.as_mut());
        }
        match self.fallback.as_deref_mut() {
            Some(app) => Ok(app),
            None => Err(self.apps.iter().map(|(c, _)| c.clone()).collect()),
        }
    }
}
