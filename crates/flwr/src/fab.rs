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

use std::io::{Cursor, Read};

use crate::record::{Config, Scalar};

/// A FAB could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabError {
    /// A `[tool.flwr.app.config]` value is not an int, float, bool, str or table.
    #[error("pyproject.toml: `{0}` in [tool.flwr.app.config] is not an int, float, bool or str")]
    ConfigValue(String),
    /// An entry could not be read.
    #[error("reading pyproject.toml from the FAB: {0}")]
    Io(#[from] std::io::Error),
    /// A required `pyproject.toml` field is missing or has the wrong type.
    #[error("pyproject.toml: missing or invalid `{0}`")]
    MissingField(&'static str),
    /// The FAB has no `pyproject.toml`.
    #[error("the FAB has no pyproject.toml")]
    MissingPyproject,
    /// `pyproject.toml` is not valid TOML.
    #[error("pyproject.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// The ZIP archive is malformed.
    #[error("reading the FAB archive: {0}")]
    Zip(#[from] zip::result::ZipError),
}

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
    /// Reads `pyproject.toml` from FAB bytes.
    ///
    /// # Errors
    ///
    /// [`FabError`] if the ZIP, the TOML or a required field is bad.
    pub fn from_fab(content: &[u8]) -> Result<Self, FabError> {
        let mut archive = zip::ZipArchive::new(Cursor::new(content))?;
        let mut entry = match archive.by_name("pyproject.toml") {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => return Err(FabError::MissingPyproject),
            Err(other) => return Err(other.into()),
        };
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        Self::from_pyproject(&text)
    }

    /// Reads the fields from `pyproject.toml` text.
    ///
    /// # Errors
    ///
    /// As [`AppSpec::from_fab`].
    pub fn from_pyproject(text: &str) -> Result<Self, FabError> {
        let doc: toml::Table = text.parse()?;
        let string = |path: &'static str| -> Result<String, FabError> {
            lookup(&doc, path)
                .and_then(toml::Value::as_str)
                .map(str::to_owned)
                .ok_or(FabError::MissingField(path))
        };
        let name = string("project.name")?;
        let publisher = string("tool.flwr.app.publisher")?;
        let mut config = Config::new();
        if let Some(table) = lookup(&doc, "tool.flwr.app.config") {
            let table = table
                .as_table()
                .ok_or(FabError::MissingField("tool.flwr.app.config"))?;
            flatten(table, "", &mut config)?;
        }
        Ok(Self {
            fab_id: format!("{publisher}/{name}"),
            fab_version: string("project.version")?,
            serverapp: string("tool.flwr.app.components.serverapp")?,
            clientapp: string("tool.flwr.app.components.clientapp")?,
            config,
        })
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

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let first = table.get(parts.next()?)?;
    parts.try_fold(first, |value, key| value.as_table()?.get(key))
}

fn flatten(table: &toml::Table, prefix: &str, out: &mut Config) -> Result<(), FabError> {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let scalar = match value {
            toml::Value::Table(inner) => {
                flatten(inner, &key, out)?;
                continue;
            }
            toml::Value::Boolean(v) => Scalar::Bool(*v),
            toml::Value::Float(v) => Scalar::Double(*v),
            toml::Value::Integer(v) => Scalar::Sint64(*v),
            toml::Value::String(v) => Scalar::String(v.clone()),
            _ => return Err(FabError::ConfigValue(key)),
        };
        out.insert(key, scalar);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) const PYPROJECT: &str = r#"
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

    fn fab(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, text) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("entry");
            writer.write_all(text.as_bytes()).expect("write");
        }
        writer.finish().expect("finish").into_inner()
    }

    #[test]
    fn reads_identity_components_and_flattened_config() {
        let spec = AppSpec::from_fab(&fab(&[("pyproject.toml", PYPROJECT)])).expect("reads");
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
            AppSpec::from_fab(&fab(&[("README.md", "x")])),
            Err(FabError::MissingPyproject)
        ));
        assert!(matches!(
            AppSpec::from_fab(&fab(&[("pyproject.toml", "[project]\nname = 1\n")])),
            Err(FabError::MissingField("project.name"))
        ));
        let listy = PYPROJECT.replace("lr = 0.1", "lr = [0.1]");
        assert!(matches!(
            AppSpec::from_pyproject(&listy),
            Err(FabError::ConfigValue(key)) if key == "lr"
        ));
    }
}
