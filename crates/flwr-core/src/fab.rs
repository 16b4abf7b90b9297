//! Flower App Bundles (BEHAVIOR.md §10): the FAB hash ([`hash`]), building a FAB the way
//! `flwr build` writes it ([`FabBuilder`]) and the metadata in `pyproject.toml` ([`FabMetadata`]).
//!
//! A FAB is a ZIP archive whose `pyproject.toml` gives
//! `fab_id = "<[tool.flwr.app].publisher>/<[project].name>"`, `fab_version = [project].version`,
//! the `module:attribute` references of the ServerApp and ClientApp, and the `run_config`
//! defaults in `[tool.flwr.app.config]`. [`FabMetadata::from_fab`] validates it like the
//! reference's `get_fab_config` (`validate(check_module=False)`), which the SuperLink's
//! `StartRun` and both app processes run; a FAB that does not validate aborts `StartRun`, and
//! the messages are the reference's because they become `RunStatus.details`.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write as _};

use flwr_proto::Scalar;
use sha2::{Digest, Sha256};

use crate::config::{self, UnsupportedValue};

/// Why a FAB was refused. Messages become `RunStatus.details` of the failed run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabError {
    /// `[tool.flwr.app.config]` is not a table (the reference fails on it with an
    /// `AttributeError`).
    #[error("[tool.flwr.app.config] must be a table")]
    ConfigNotTable,
    /// The content does not hash to the expected value.
    #[error("FAB content hashes to {actual}, expected {expected}")]
    HashMismatch {
        /// The hash the SuperLink announced.
        expected: String,
        /// sha256 of the received bytes.
        actual: String,
    },
    /// `pyproject.toml` is not valid TOML (or not UTF-8).
    #[error("Invalid TOML content in pyproject.toml: {0}")]
    InvalidToml(String),
    /// The archive has no top-level `pyproject.toml`.
    #[error("There is no item named 'pyproject.toml' in the archive")]
    MissingPyproject,
    /// The bytes are not a readable ZIP archive.
    #[error("File is not a zip file: {0}")]
    NotZip(#[source] zip::result::ZipError),
    /// A `[tool.flwr.app.config]` value is not an int, float, bool, str or table.
    #[error(transparent)]
    UnsupportedConfigValue(#[from] UnsupportedValue),
    /// Required fields are missing or malformed; one entry per problem, in the reference's
    /// order and wording.
    #[error("{}", render_list(.0))]
    Validation(Vec<String>),
    /// [`FabBuilder::build`] could not write the archive (two files with the same name).
    #[error("cannot write the FAB archive: {0}")]
    WriteArchive(#[source] zip::result::ZipError),
}

/// Where a FAB lists its packaged files: one `path,sha256,bits` line per file.
pub const CONTENT_PATH: &str = ".info/CONTENT";

/// A FAB laid out the way the reference's `flwr build` writes it: `pyproject.toml`, then the
/// files in the order given, then [`CONTENT_PATH`] listing them ([`content_line`]); every entry
/// stored uncompressed with the fixed timestamp 2024-10-01 00:00:00 (`FAB_DATE`). The same
/// files in the same order always give the same bytes, hence the same [`hash`].
///
/// Choosing and ordering the files (`flwr build` takes the sorted `.py`, `.toml` and `.md` files
/// of the app directory) and removing `[tool.flwr.federations]` from `pyproject.toml` are the
/// caller's.
#[derive(Clone, Debug, Default)]
pub struct FabBuilder {
    pyproject: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
}

impl FabBuilder {
    /// A FAB whose `pyproject.toml` is `pyproject`, with no other file yet.
    pub fn new(pyproject: impl Into<Vec<u8>>) -> Self {
        Self {
            pyproject: pyproject.into(),
            files: Vec::new(),
        }
    }

    /// Adds a file at archive path `name` (`/`-separated, relative).
    #[must_use]
    pub fn file(mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        self.push(name, bytes);
        self
    }

    /// Adds a file at archive path `name`, in place.
    pub fn push(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.files.push((name.into(), bytes.into()));
    }

    /// The [`CONTENT_PATH`] text: one [`content_line`] per file, in order.
    pub fn content(&self) -> String {
        self.files
            .iter()
            .map(|(name, bytes)| content_line(name, bytes))
            .collect()
    }

    /// The ZIP bytes.
    ///
    /// # Errors
    ///
    /// [`FabError::WriteArchive`] when a name repeats (`pyproject.toml` or [`CONTENT_PATH`]
    /// among the files included).
    pub fn build(&self) -> Result<Vec<u8>, FabError> {
        // A valid constant date: the fallback is never taken.
        let stamp = zip::DateTime::from_date_and_time(2024, 10, 1, 0, 0, 0).unwrap_or_default();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(stamp);
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let mut add = |name: &str, bytes: &[u8]| -> Result<(), zip::result::ZipError> {
            writer.start_file(name, options)?;
            writer.write_all(bytes)?;
            Ok(())
        };
        add("pyproject.toml", &self.pyproject).map_err(FabError::WriteArchive)?;
        for (name, bytes) in &self.files {
            add(name, bytes).map_err(FabError::WriteArchive)?;
        }
        add(CONTENT_PATH, self.content().as_bytes()).map_err(FabError::WriteArchive)?;
        let cursor = writer.finish().map_err(FabError::WriteArchive)?;
        Ok(cursor.into_inner())
    }
}

/// The [`CONTENT_PATH`] line for the file `name` holding `bytes`: `name,<sha256 hex>,<bits>\n`,
/// as `flwr build` writes it.
pub fn content_line(name: &str, bytes: &[u8]) -> String {
    format!("{name},{},{}\n", hash(bytes), bytes.len() * 8)
}

/// What the runtime reads from a FAB's `pyproject.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct FabMetadata {
    /// `[tool.flwr.app].publisher`.
    pub publisher: String,
    /// `[project].name`.
    pub name: String,
    /// `[project].version`, the run's `fab_version`.
    pub version: String,
    /// `[tool.flwr.app.components].serverapp`, e.g. `"numpyapp.server_app:app"`.
    pub serverapp: String,
    /// `[tool.flwr.app.components].clientapp`.
    pub clientapp: String,
    /// `[tool.flwr.app.config]` flattened with `.`-joined keys: the `run_config` defaults.
    pub default_config: HashMap<String, Scalar>,
}

impl FabMetadata {
    /// Reads and validates `pyproject.toml` from FAB bytes (the reference's `get_fab_config`).
    ///
    /// # Errors
    ///
    /// See [`FabError`]; nothing here panics on hostile input.
    pub fn from_fab(content: &[u8]) -> Result<Self, FabError> {
        let mut archive = zip::ZipArchive::new(Cursor::new(content)).map_err(FabError::NotZip)?;
        let mut file = match archive.by_name("pyproject.toml") {
            Ok(file) => file,
            Err(zip::result::ZipError::FileNotFound) => return Err(FabError::MissingPyproject),
            Err(error) => return Err(FabError::NotZip(error)),
        };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| FabError::InvalidToml(e.to_string()))?;
        Self::from_pyproject(&text)
    }

    /// Reads and validates `pyproject.toml` text.
    ///
    /// # Errors
    ///
    /// As [`FabMetadata::from_fab`].
    pub fn from_pyproject(text: &str) -> Result<Self, FabError> {
        let document: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| FabError::InvalidToml(config::one_line(e.message())))?;
        Self::from_document(&document)
    }

    /// `<publisher>/<name>`, the `fab_id` of a run.
    pub fn fab_id(&self) -> String {
        format!("{}/{}", self.publisher, self.name)
    }

    /// The run config apps see: [`config::fuse`] of the defaults and the run's overrides.
    pub fn run_config(&self, overrides: &HashMap<String, Scalar>) -> HashMap<String, Scalar> {
        config::fuse(&self.default_config, overrides)
    }

    /// Validates a parsed `pyproject.toml` like `flwr.cli.config_utils.validate` with
    /// `check_module=False`, then extracts the fields.
    fn from_document(document: &toml::Table) -> Result<Self, FabError> {
        let mut errors = Vec::new();
        let project = document.get("project").and_then(toml::Value::as_table);
        match project {
            None => errors.push("Missing [project] section".to_owned()),
            Some(project) => {
                for key in ["name", "version"] {
                    if !project.contains_key(key) {
                        errors.push(format!("Property \"{key}\" missing in [project]"));
                    }
                }
            }
        }
        let app = document
            .get("tool")
            .and_then(|tool| tool.get("flwr"))
            .and_then(|flwr| flwr.get("app"))
            .and_then(toml::Value::as_table);
        let mut default_config = HashMap::new();
        match app {
            None => errors.push("Missing [tool.flwr.app] section".to_owned()),
            Some(app) => {
                if !app.contains_key("publisher") {
                    errors.push("Property \"publisher\" missing in [tool.flwr.app]".to_owned());
                }
                // `_validate_run_config` raises at once, before the remaining checks.
                match app.get("config") {
                    None => {}
                    Some(toml::Value::Table(table)) => default_config = config::flatten(table)?,
                    Some(_) => return Err(FabError::ConfigNotTable),
                }
                match app.get("components").and_then(toml::Value::as_table) {
                    None => errors.push("Missing [tool.flwr.app.components] section".to_owned()),
                    Some(components) => {
                        for key in ["serverapp", "clientapp"] {
                            if !components.contains_key(key) {
                                errors.push(format!(
                                    "Property \"{key}\" missing in [tool.flwr.app.components]"
                                ));
                            }
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(FabError::Validation(errors));
        }
        // Both tables exist: the checks above would have failed otherwise.
        let (Some(project), Some(app)) = (project, app) else {
            return Err(FabError::Validation(vec![
                "Missing [project] section".to_owned()
            ]));
        };
        let components = app.get("components").and_then(toml::Value::as_table);
        let serverapp = object_reference("serverapp", components)?;
        let clientapp = object_reference("clientapp", components)?;
        Ok(Self {
            publisher: string_field(app, "publisher", "[tool.flwr.app]")?,
            name: string_field(project, "name", "[project]")?,
            version: string_field(project, "version", "[project]")?,
            serverapp,
            clientapp,
            default_config,
        })
    }
}

/// Lowercase sha256 hex of `content`, the FAB hash.
pub fn hash(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Checks that `content` hashes to `expected`.
///
/// # Errors
///
/// [`FabError::HashMismatch`] otherwise.
pub fn verify_hash(content: &[u8], expected: &str) -> Result<(), FabError> {
    let actual = hash(content);
    if actual != expected {
        return Err(FabError::HashMismatch {
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// `module:attribute` with both parts non-empty (`flwr.common.object_ref.validate` without the
/// module lookup).
fn object_reference(key: &str, components: Option<&toml::Table>) -> Result<String, FabError> {
    const HELP: &str = "\n\nThe object reference should have the form `<module>:<attribute>`.";
    let Some(toml::Value::String(text)) = components.and_then(|c| c.get(key)) else {
        return Err(FabError::Validation(vec![format!(
            "Property \"{key}\" in [tool.flwr.app.components] must be a string"
        )]));
    };
    let (module, attribute) = text.split_once(':').unwrap_or((text, ""));
    if module.is_empty() {
        return Err(FabError::Validation(vec![format!(
            "Missing module in {text}{HELP}"
        )]));
    }
    if attribute.is_empty() {
        return Err(FabError::Validation(vec![format!(
            "Missing attribute in {text}{HELP}"
        )]));
    }
    Ok(text.clone())
}

/// A field that must be a string for the run record (the reference would fail later, when the
/// value reaches a protobuf `string`).
fn string_field(table: &toml::Table, key: &str, section: &str) -> Result<String, FabError> {
    match table.get(key) {
        Some(toml::Value::String(value)) => Ok(value.clone()),
        _ => Err(FabError::Validation(vec![format!(
            "Property \"{key}\" in {section} must be a string"
        )])),
    }
}

/// Python's `str(list_of_str)`, which is what the reference puts into `details`.
fn render_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("'{}'", item.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flwr_proto::scalar;

    use super::*;

    const PYPROJECT: &str = r#"
[project]
name = "miniapp"
version = "1.0.0"

[tool.flwr.app]
publisher = "tester"

[tool.flwr.app.components]
serverapp = "miniapp.server_app:app"
clientapp = "miniapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
lr = 0.1
nested.key = "x"
nested.deeper.flag = true
"#;

    /// An archive of exactly these entries: one [`FabBuilder`] cannot make (no
    /// `pyproject.toml`).
    fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, text) in entries {
            writer.start_file(*name, options).expect("start entry");
            writer.write_all(text.as_bytes()).expect("write entry");
        }
        writer.finish().expect("finish zip").into_inner()
    }

    fn parse(pyproject: &str) -> Result<FabMetadata, FabError> {
        FabMetadata::from_fab(&FabBuilder::new(pyproject).build().expect("builds"))
    }

    fn sint(v: i64) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::Sint64(v)),
        }
    }

    #[test]
    fn reads_identity_components_and_flattened_config() {
        let fab = FabBuilder::new(PYPROJECT)
            .file("miniapp/task.py", "")
            .build()
            .expect("builds");
        let metadata = FabMetadata::from_fab(&fab).expect("valid FAB");
        assert_eq!(metadata.fab_id(), "tester/miniapp");
        assert_eq!(metadata.version, "1.0.0");
        assert_eq!(metadata.serverapp, "miniapp.server_app:app");
        assert_eq!(metadata.clientapp, "miniapp.client_app:app");
        assert_eq!(metadata.default_config.len(), 4);
        assert_eq!(metadata.default_config["num-server-rounds"], sint(3));
        assert!(metadata.default_config.contains_key("nested.deeper.flag"));
        assert_eq!(
            FabMetadata::from_pyproject(PYPROJECT).expect("valid"),
            metadata
        );
    }

    #[test]
    fn overrides_replace_known_keys_only() {
        let metadata = FabMetadata::from_pyproject(PYPROJECT).expect("valid");
        let overrides = HashMap::from([
            ("num-server-rounds".to_owned(), sint(5)),
            ("unknown-key".to_owned(), sint(5)),
        ]);
        let fused = metadata.run_config(&overrides);
        assert_eq!(fused["num-server-rounds"], sint(5));
        assert!(fused.contains_key("lr"));
        assert!(!fused.contains_key("unknown-key"));
    }

    #[test]
    fn hash_is_checked() {
        assert_eq!(
            hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(verify_hash(b"abc", &hash(b"abc")).is_ok());
        assert!(matches!(
            verify_hash(b"abc", &hash(b"abd")),
            Err(FabError::HashMismatch { .. })
        ));
    }

    #[test]
    fn refuses_non_zip_bytes() {
        let error = FabMetadata::from_fab(b"definitely not a zip").expect_err("not a zip");
        assert!(matches!(error, FabError::NotZip(_)), "{error}");
    }

    #[test]
    fn refuses_a_zip_without_pyproject() {
        let fab = zip_of(&[("other.toml", PYPROJECT)]);
        let error = FabMetadata::from_fab(&fab).expect_err("no pyproject");
        assert!(matches!(error, FabError::MissingPyproject), "{error}");
    }

    #[test]
    fn refuses_invalid_toml() {
        assert!(matches!(
            parse("[project\nname="),
            Err(FabError::InvalidToml(_))
        ));
    }

    #[test]
    fn lists_every_missing_field_like_the_reference() {
        let error = parse("[project]\n[tool.flwr.app]\n").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "['Property \"name\" missing in [project]', \
             'Property \"version\" missing in [project]', \
             'Property \"publisher\" missing in [tool.flwr.app]', \
             'Missing [tool.flwr.app.components] section']"
        );
        let error = parse("x = 1\n").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "['Missing [project] section', 'Missing [tool.flwr.app] section']"
        );
    }

    #[test]
    fn refuses_mistyped_fields() {
        let error = parse(&PYPROJECT.replace("name = \"miniapp\"", "name = 1")).expect_err("int");
        assert_eq!(
            error.to_string(),
            "['Property \"name\" in [project] must be a string']"
        );
        let not_table = PYPROJECT.replace("[tool.flwr.app.config]\n", "[tool.flwr.app.x]\n");
        let not_table = not_table.replace("publisher = ", "config = 1\npublisher = ");
        assert!(matches!(parse(&not_table), Err(FabError::ConfigNotTable)));
    }

    #[test]
    fn refuses_bad_component_references_and_config_values() {
        let bad_ref = PYPROJECT.replace("miniapp.client_app:app", "miniapp.client_app");
        let error = parse(&bad_ref).expect_err("invalid");
        assert!(error
            .to_string()
            .contains("Missing attribute in miniapp.client_app"));

        let bad_value = PYPROJECT.replace("lr = 0.1", "lr = [0.1]");
        let error = parse(&bad_value).expect_err("invalid");
        assert!(matches!(error, FabError::UnsupportedConfigValue(ref e) if e.key == "lr"));
        assert!(error
            .to_string()
            .starts_with("The value for key lr needs to be of type"));
    }

    #[test]
    fn builds_like_flwr_build() {
        let builder = FabBuilder::new(PYPROJECT)
            .file("miniapp/task.py", "x = 1\n")
            .file("README.md", "");
        let fab = builder.build().expect("builds");
        let mut archive = zip::ZipArchive::new(Cursor::new(&fab)).expect("zip");
        let names: Vec<&str> = archive.file_names().collect();
        assert_eq!(
            names,
            [
                "pyproject.toml",
                "miniapp/task.py",
                "README.md",
                CONTENT_PATH
            ]
        );
        for index in 0..archive.len() {
            let entry = archive.by_index(index).expect("entry");
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
            let stamp = entry.last_modified().expect("timestamp");
            let when = (stamp.year(), stamp.month(), stamp.day(), stamp.hour());
            assert_eq!(when, (2024, 10, 1, 0));
        }
        let mut content = String::new();
        archive
            .by_name(CONTENT_PATH)
            .expect("CONTENT")
            .read_to_string(&mut content)
            .expect("text");
        assert_eq!(
            content,
            format!(
                "miniapp/task.py,{},48\nREADME.md,{},0\n",
                hash(b"x = 1\n"),
                hash(b"")
            )
        );
        assert_eq!(content, builder.content());
        assert_eq!(FabMetadata::from_fab(&fab).expect("valid").name, "miniapp");
        // Deterministic: the same files give the same bytes, hence the same hash.
        assert_eq!(builder.build().expect("builds"), fab);
    }

    /// The FAB hash of given files is part of the wire (`fab_hash`, install directory names):
    /// the builder's bytes must not drift. (Python's `zipfile` writes the same entries and
    /// length but other header fields, so the reference's hash of the same files differs.)
    #[test]
    fn bytes_stay_the_same() {
        let fab = FabBuilder::new("[project]\nname = \"miniapp\"\n")
            .file("miniapp/task.py", "x = 1\n")
            .file("README.md", "")
            .build()
            .expect("builds");
        assert_eq!(
            (hash(&fab).as_str(), fab.len()),
            (
                "05f4377b68fa8c78d90c0ed80018c8d766ffb5e64c068994d46c18dd607091b3",
                622
            )
        );
    }

    #[test]
    fn refuses_to_build_a_repeated_name() {
        let builder = FabBuilder::new(PYPROJECT).file("pyproject.toml", "");
        assert!(matches!(builder.build(), Err(FabError::WriteArchive(_))));
    }
}
