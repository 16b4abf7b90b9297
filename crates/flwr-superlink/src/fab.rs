//! Flower App Bundles: the metadata the SuperLink reads from them (their hash and storage are
//! `flwr_state::Ffs`'s).
//!
//! BEHAVIOR.md §10: a FAB is a ZIP archive whose `pyproject.toml` gives
//! `fab_id = "<[tool.flwr.app].publisher>/<[project].name>"` and
//! `fab_version = [project].version`; a `pyproject.toml` that does not validate aborts `StartRun`.

use std::io::{Cursor, Read};

/// What `StartRun` needs to know about a FAB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FabMetadata {
    /// `"<publisher>/<name>"`.
    pub fab_id: String,
    /// `[project].version`.
    pub fab_version: String,
}

/// Why a FAB was refused. Messages become `RunStatus.details` of the failed run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabError {
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
    #[error(
        "The value for key {0} needs to be of type `int`, `float`, `bool, `str`, or  a `dict` \
         of those."
    )]
    UnsupportedConfigValue(String),
    /// Required fields are missing or malformed; one entry per problem, in the reference's
    /// order and wording.
    #[error("{}", render_list(.0))]
    Validation(Vec<String>),
}

/// Reads and validates `pyproject.toml` from FAB bytes (the reference's `get_fab_metadata`).
///
/// # Errors
///
/// See [`FabError`]; nothing here panics on hostile input.
pub fn parse_metadata(content: &[u8]) -> Result<FabMetadata, FabError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(content)).map_err(FabError::NotZip)?;
    let mut file = match archive.by_name("pyproject.toml") {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Err(FabError::MissingPyproject),
        Err(error) => return Err(FabError::NotZip(error)),
    };
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| FabError::InvalidToml(e.to_string()))?;
    let document: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FabError::InvalidToml(e.message().to_owned()))?;
    metadata_from_pyproject(&document)
}

/// Validates a parsed `pyproject.toml` like `flwr.cli.config_utils.validate(check_module=False)`
/// and extracts the FAB id and version.
fn metadata_from_pyproject(document: &toml::Table) -> Result<FabMetadata, FabError> {
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
    match app {
        None => errors.push("Missing [tool.flwr.app] section".to_owned()),
        Some(app) => {
            if !app.contains_key("publisher") {
                errors.push("Property \"publisher\" missing in [tool.flwr.app]".to_owned());
            }
            if let Some(config) = app.get("config").and_then(toml::Value::as_table) {
                check_config_values(config)?;
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
    for key in ["serverapp", "clientapp"] {
        let reference = components.and_then(|c| c.get(key));
        check_object_reference(key, reference)?;
    }
    let publisher = string_field(app, "publisher", "[tool.flwr.app]")?;
    let name = string_field(project, "name", "[project]")?;
    let fab_version = string_field(project, "version", "[project]")?;
    Ok(FabMetadata {
        fab_id: format!("{publisher}/{name}"),
        fab_version,
    })
}

/// `module:attribute` with both parts non-empty (`flwr.common.object_ref.validate` without the
/// module lookup).
fn check_object_reference(key: &str, value: Option<&toml::Value>) -> Result<(), FabError> {
    const HELP: &str = "\n\nThe object reference should have the form `<module>:<attribute>`.";
    let text = match value {
        Some(toml::Value::String(text)) => text.as_str(),
        _ => {
            return Err(FabError::Validation(vec![format!(
                "Property \"{key}\" in [tool.flwr.app.components] must be a string"
            )]))
        }
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
    Ok(())
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

/// `[tool.flwr.app.config]` values must be int, float, bool, str or nested tables of those.
fn check_config_values(config: &toml::Table) -> Result<(), FabError> {
    for (key, value) in config {
        match value {
            toml::Value::Table(nested) => check_config_values(nested)?,
            toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Boolean(_)
            | toml::Value::String(_) => {}
            toml::Value::Array(_) | toml::Value::Datetime(_) => {
                return Err(FabError::UnsupportedConfigValue(key.clone()))
            }
        }
    }
    Ok(())
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
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    pub(crate) const PYPROJECT: &str = r#"
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
"#;

    /// A FAB with the given entries, stored uncompressed like `flwr build` does.
    pub(crate) fn zip_of(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, text) in entries {
            writer.start_file(*name, options).expect("start entry");
            writer.write_all(text.as_bytes()).expect("write entry");
        }
        writer.finish().expect("finish zip").into_inner()
    }

    #[test]
    fn reads_id_and_version() {
        let fab = zip_of(&[("pyproject.toml", PYPROJECT), ("miniapp/task.py", "")]);
        let metadata = parse_metadata(&fab).expect("valid FAB");
        assert_eq!(metadata.fab_id, "tester/miniapp");
        assert_eq!(metadata.fab_version, "1.0.0");
    }

    #[test]
    fn refuses_non_zip_bytes() {
        let error = parse_metadata(b"definitely not a zip").expect_err("not a zip");
        assert!(matches!(error, FabError::NotZip(_)), "{error}");
    }

    #[test]
    fn refuses_a_zip_without_pyproject() {
        let fab = zip_of(&[("other.toml", PYPROJECT)]);
        let error = parse_metadata(&fab).expect_err("no pyproject");
        assert!(matches!(error, FabError::MissingPyproject), "{error}");
    }

    #[test]
    fn refuses_invalid_toml() {
        let fab = zip_of(&[("pyproject.toml", "[project\nname=")]);
        assert!(matches!(
            parse_metadata(&fab),
            Err(FabError::InvalidToml(_))
        ));
    }

    #[test]
    fn lists_every_missing_field_like_the_reference() {
        let fab = zip_of(&[("pyproject.toml", "[project]\n[tool.flwr.app]\n")]);
        let error = parse_metadata(&fab).expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "['Property \"name\" missing in [project]', \
             'Property \"version\" missing in [project]', \
             'Property \"publisher\" missing in [tool.flwr.app]', \
             'Missing [tool.flwr.app.components] section']"
        );
        let fab = zip_of(&[("pyproject.toml", "x = 1\n")]);
        let error = parse_metadata(&fab).expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "['Missing [project] section', 'Missing [tool.flwr.app] section']"
        );
    }

    #[test]
    fn refuses_bad_component_references_and_config_values() {
        let bad_ref = PYPROJECT.replace("miniapp.client_app:app", "miniapp.client_app");
        let fab = zip_of(&[("pyproject.toml", &bad_ref)]);
        let error = parse_metadata(&fab).expect_err("invalid");
        assert!(error
            .to_string()
            .contains("Missing attribute in miniapp.client_app"));

        let bad_value = PYPROJECT.replace("lr = 0.1", "lr = [0.1]");
        let fab = zip_of(&[("pyproject.toml", &bad_value)]);
        let error = parse_metadata(&fab).expect_err("invalid");
        assert!(matches!(error, FabError::UnsupportedConfigValue(ref key) if key == "lr"));
    }
}
