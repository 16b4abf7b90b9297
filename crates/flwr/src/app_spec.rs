//! What a Rust app reads from the Flower App Bundle (FAB) of its run: the app's identity, the
//! component references that *name* the app, and the `run_config` defaults (BEHAVIOR.md §10,
//! §11.2).
//!
//! A FAB is a ZIP whose `pyproject.toml` says, among other things:
//!
//! ```toml
//! [project]
//! name = "numpyapp"
//! version = "1.0.0"
//! [tool.flwr.app]
//! publisher = "test"
//! [tool.flwr.app.components]
//! serverapp = "numpyapp.server_app:app"
//! clientapp = "numpyapp.client_app:app"
//! [tool.flwr.app.config]
//! num-server-rounds = 3
//! ```
//!
//! Python's `flwr-serverapp`/`flwr-clientapp` import the component references. A Rust app
//! binary cannot import anything; it uses the reference as a *name* to pick one of its compiled
//! apps (see [`AppSpec::component`] and the crate docs).
//!
//! Reading and validating the FAB is [`flwr_core::fab`]'s, the same code the SuperLink's
//! `StartRun` runs, so a FAB this SDK refuses is one the reference's app processes refuse too.

/// Why a FAB could not be read (shared with the SuperLink and SuperNode).
pub use flwr_core::FabError;
use flwr_core::FabMetadata;

use crate::record::{Config, Scalar};

/// Which component of an app a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// `[tool.flwr.app.components].clientapp`.
    ClientApp,
    /// `[tool.flwr.app.components].serverapp`.
    ServerApp,
}

/// The parts of a FAB's `pyproject.toml` that a Rust app needs.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    /// `<[tool.flwr.app].publisher>/<[project].name>`.
    pub fab_id: String,
    /// `[project].version`.
    pub fab_version: String,
    /// `[tool.flwr.app.components].serverapp`, e.g. `"numpyapp.server_app:app"`.
    pub serverapp: String,
    /// `[tool.flwr.app.components].clientapp`.
    pub clientapp: String,
    /// `[tool.flwr.app.config]` flattened with `.`-joined keys: the `run_config` defaults.
    pub config: Config,
}

impl AppSpec {
    /// Reads and validates `pyproject.toml` from FAB bytes.
    ///
    /// # Errors
    ///
    /// [`FabError`] if the ZIP, the TOML or a required field is bad.
    pub fn from_fab(content: &[u8]) -> Result<Self, FabError> {
        FabMetadata::from_fab(content).map(Self::from)
    }

    /// Reads and validates `pyproject.toml` text.
    ///
    /// # Errors
    ///
    /// As [`AppSpec::from_fab`].
    pub fn from_pyproject(text: &str) -> Result<Self, FabError> {
        FabMetadata::from_pyproject(text).map(Self::from)
    }

    /// The component reference of `component`.
    pub fn component(&self, component: Component) -> &str {
        match component {
            Component::ClientApp => &self.clientapp,
            Component::ServerApp => &self.serverapp,
        }
    }

    /// The run config an app sees: the defaults with every override whose key is a default
    /// replaced (unknown override keys are dropped, types are not checked; BEHAVIOR.md §11.2).
    pub fn run_config(&self, overrides: &Config) -> Config {
        let mut config = self.config.clone();
        for (key, value) in overrides {
            if let Some(slot) = config.get_mut(key) {
                *slot = value.clone();
            }
        }
        config
    }
}

impl From<FabMetadata> for AppSpec {
    fn from(metadata: FabMetadata) -> Self {
        let config = metadata
            .default_config
            .iter()
            // Flattening always sets the oneof, so no value is dropped here.
            .filter_map(|(key, value)| Some((key.clone(), Scalar::try_from(value.clone()).ok()?)))
            .collect();
        Self {
            fab_id: metadata.fab_id(),
            fab_version: metadata.version,
            serverapp: metadata.serverapp,
            clientapp: metadata.clientapp,
            config,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};

    use flwr_core::FabBuilder;

    use super::*;

    const PYPROJECT: &str = r#"
[project]
name = "numpyapp"
version = "1.0.0"

[tool.flwr.app]
publisher = "test"

[tool.flwr.app.components]
serverapp = "numpyapp.server_app:app"
clientapp = "numpyapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
lr = 0.1
nested.key = "x"
nested.deeper.flag = true
"#;

    /// A ZIP holding only `README.md`: not a FAB, so not one [`FabBuilder`] makes.
    fn without_pyproject() -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        writer.start_file("README.md", options).expect("entry");
        writer.write_all(b"x").expect("write");
        writer.finish().expect("finish").into_inner()
    }

    #[test]
    fn reads_identity_components_and_flattened_config() {
        let spec =
            AppSpec::from_fab(&FabBuilder::new(PYPROJECT).build().expect("FAB")).expect("reads");
        assert_eq!(spec.fab_id, "test/numpyapp");
        assert_eq!(spec.fab_version, "1.0.0");
        assert_eq!(
            spec.component(Component::ServerApp),
            "numpyapp.server_app:app"
        );
        assert_eq!(spec.config["num-server-rounds"], Scalar::Sint64(3));
        assert_eq!(spec.config["nested.key"], Scalar::from("x"));
        assert_eq!(spec.config["nested.deeper.flag"], Scalar::Bool(true));
    }

    #[test]
    fn overrides_replace_known_keys_only() {
        let spec = AppSpec::from_pyproject(PYPROJECT).expect("reads");
        let overrides = Config::from([
            ("num-server-rounds".into(), Scalar::Sint64(5)),
            ("unknown-key".into(), Scalar::Sint64(5)),
        ]);
        let config = spec.run_config(&overrides);
        assert_eq!(config["num-server-rounds"], Scalar::Sint64(5));
        assert!(!config.contains_key("unknown-key"));
    }

    #[test]
    fn bad_fabs_are_errors() {
        assert!(AppSpec::from_fab(b"not a zip").is_err());
        assert!(matches!(
            AppSpec::from_fab(&without_pyproject()),
            Err(FabError::MissingPyproject)
        ));
        let unnamed = PYPROJECT.replace("name = \"numpyapp\"", "name = 1");
        assert!(matches!(
            AppSpec::from_fab(&FabBuilder::new(unnamed).build().expect("FAB")),
            Err(FabError::Validation(_))
        ));
        let listy = PYPROJECT.replace("lr = 0.1", "lr = [0.1]");
        assert!(matches!(
            AppSpec::from_pyproject(&listy),
            Err(FabError::UnsupportedConfigValue(_))
        ));
    }
}
