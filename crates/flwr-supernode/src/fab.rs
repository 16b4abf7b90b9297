//! Flower App Bundles: hash checks, `pyproject.toml` metadata and installation (BEHAVIOR.md §10).
//!
//! A FAB is a ZIP archive whose `pyproject.toml` names the app and whose `.info/CONTENT` lists
//! `path,sha256,bits` for every other file. The SuperNode needs the metadata to fill the `Run`
//! and `Context` it hands the ClientApp, and installs the bundle where `flwr-clientapp` looks for
//! it: `<flwr home>/apps/<publisher>.<name>.<version>.<hash[..8]>/`. Installation goes through a
//! temporary directory and one `rename`, so concurrent installers never see half an app.

use std::collections::HashMap;
use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use flwr_proto::Scalar;
use sha2::{Digest, Sha256};

use crate::node_config;

/// Why a FAB was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabError {
    /// The content does not hash to the expected value.
    #[error("FAB content hashes to {actual}, expected {expected}")]
    HashMismatch {
        /// The hash the SuperLink announced.
        expected: String,
        /// sha256 of the received bytes.
        actual: String,
    },
    /// The bytes are not a readable ZIP archive.
    #[error("FAB is not a valid ZIP archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// A required file is missing from the archive.
    #[error("FAB has no {0}")]
    MissingFile(&'static str),
    /// `pyproject.toml` is not valid TOML or lacks a required field.
    #[error("FAB pyproject.toml is invalid: {0}")]
    Pyproject(String),
    /// `.info/CONTENT` is malformed or a listed file does not match its hash.
    #[error("FAB file hashes could not be verified: {0}")]
    Content(String),
    /// An archive entry would land outside the install directory.
    #[error("FAB entry {0:?} escapes the install directory")]
    UnsafePath(String),
    /// Writing the installation failed.
    #[error("cannot install FAB into {path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
}

/// What the SuperNode reads from a FAB's `pyproject.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct FabMetadata {
    /// `[tool.flwr.app].publisher`.
    pub publisher: String,
    /// `[project].name`.
    pub name: String,
    /// `[project].version`.
    pub version: String,
    /// `[tool.flwr.app.config]`, flattened with `.` between nested keys.
    pub default_config: HashMap<String, Scalar>,
}

impl FabMetadata {
    /// `<publisher>/<name>`, the `fab_id` of a `Run`.
    pub fn fab_id(&self) -> String {
        format!("{}/{}", self.publisher, self.name)
    }

    /// The run config apps see (§11.2): the defaults, with every override whose key already
    /// exists replacing the default; unknown override keys are dropped.
    pub fn run_config(&self, overrides: &HashMap<String, Scalar>) -> HashMap<String, Scalar> {
        let mut fused = self.default_config.clone();
        for (key, value) in overrides {
            if let Some(slot) = fused.get_mut(key) {
                *slot = value.clone();
            }
        }
        fused
    }

    /// The directory name under `<flwr home>/apps/` for the FAB with hash `hash`.
    pub fn install_dir_name(&self, hash: &str) -> String {
        let short = hash.get(..8).unwrap_or(hash);
        format!("{}.{}.{}.{short}", self.publisher, self.name, self.version)
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

/// Reads the app metadata from the FAB's `pyproject.toml`.
///
/// # Errors
///
/// When the archive or the file cannot be read, or a required field is missing or mistyped.
pub fn metadata(content: &[u8]) -> Result<FabMetadata, FabError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(content))?;
    let mut text = String::new();
    archive
        .by_name("pyproject.toml")
        .map_err(|_| FabError::MissingFile("pyproject.toml"))?
        .read_to_string(&mut text)
        .map_err(|e| FabError::Pyproject(e.to_string()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| FabError::Pyproject(node_config::one_line(e.message())))?;
    let string_at = |path: &[&str]| -> Result<String, FabError> {
        lookup(&doc, path)
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| FabError::Pyproject(format!("missing string {}", path.join("."))))
    };
    let default_config = match lookup(&doc, &["tool", "flwr", "app", "config"]) {
        None => HashMap::new(),
        Some(toml::Value::Table(table)) => {
            node_config::flatten_table(table).map_err(|e| FabError::Pyproject(e.to_string()))?
        }
        Some(_) => {
            return Err(FabError::Pyproject(
                "tool.flwr.app.config is not a table".into(),
            ))
        }
    };
    Ok(FabMetadata {
        publisher: string_at(&["tool", "flwr", "app", "publisher"])?,
        name: string_at(&["project", "name"])?,
        version: string_at(&["project", "version"])?,
        default_config,
    })
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(*first)?;
    for key in rest {
        value = value.as_table()?.get(*key)?;
    }
    Some(value)
}

/// The Flower home the reference uses: `--flwr-dir` if given, else `$FLWR_HOME`, else
/// `$XDG_DATA_HOME/.flwr`, else `$HOME/.flwr`.
pub fn flwr_home(flwr_dir: Option<&Path>) -> PathBuf {
    if let Some(dir) = flwr_dir {
        return dir.to_path_buf();
    }
    if let Some(home) = std::env::var_os("FLWR_HOME") {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .or_else(|| std::env::var_os("HOME"))
        .unwrap_or_default();
    PathBuf::from(base).join(".flwr")
}

/// Installs the FAB under `<home>/apps/` unless that version is already there; returns the app
/// directory. Blocking: call it from a blocking task.
///
/// # Errors
///
/// When the archive is malformed, a file does not match `.info/CONTENT`, or writing fails.
pub fn install(content: &[u8], home: &Path) -> Result<PathBuf, FabError> {
    let metadata = metadata(content)?;
    let apps = home.join("apps");
    let target = apps.join(metadata.install_dir_name(&hash(content)));
    if target.exists() {
        return Ok(target);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FabError::Io { path, source }
    };
    fs::create_dir_all(&apps).map_err(io(&apps))?;
    let staging = tempfile::Builder::new()
        .prefix(".installing-")
        .tempdir_in(&apps)
        .map_err(io(&apps))?;
    extract(content, staging.path())?;
    verify_content(staging.path())?;
    let info = staging.path().join(".info");
    fs::remove_dir_all(&info).map_err(io(&info))?;
    let staged = staging.keep();
    if let Err(source) = fs::rename(&staged, &target) {
        // Another installer won the race: its copy is identical, keep it.
        let _ = fs::remove_dir_all(&staged);
        if !target.exists() {
            return Err(FabError::Io {
                path: target,
                source,
            });
        }
    }
    Ok(target)
}

fn extract(content: &[u8], dir: &Path) -> Result<(), FabError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(content))?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let relative = entry
            .enclosed_name()
            .ok_or_else(|| FabError::UnsafePath(entry.name().to_owned()))?;
        let path = dir.join(relative);
        if entry.is_dir() {
            fs::create_dir_all(&path).map_err(|source| FabError::Io {
                path: path.clone(),
                source,
            })?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| FabError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| FabError::Content(format!("{}: {e}", entry.name())))?;
        fs::write(&path, &bytes).map_err(|source| FabError::Io { path, source })?;
    }
    Ok(())
}

/// Checks every `path,sha256,bits` line of `.info/CONTENT` against the extracted files.
fn verify_content(dir: &Path) -> Result<(), FabError> {
    let listing = fs::read_to_string(dir.join(".info").join("CONTENT"))
        .map_err(|_| FabError::MissingFile(".info/CONTENT"))?;
    let listing = listing.trim();
    if listing.is_empty() {
        return Err(FabError::Content(".info/CONTENT is empty".into()));
    }
    for line in listing.split('\n') {
        let fields: Vec<&str> = line.split(',').collect();
        let [relative, expected, _bits] = fields[..] else {
            return Err(FabError::Content(format!("malformed line {line:?}")));
        };
        let path = dir.join(relative);
        if !path.starts_with(dir) || relative.split('/').any(|part| part == "..") {
            return Err(FabError::UnsafePath(relative.to_owned()));
        }
        let bytes =
            fs::read(&path).map_err(|_| FabError::Content(format!("{relative} is missing")))?;
        if hash(&bytes) != expected {
            return Err(FabError::Content(format!("{relative} does not match")));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write as _;

    use flwr_proto::scalar;

    use super::*;

    pub(crate) const PYPROJECT: &str = r#"
[project]
name = "quickstart"
version = "1.0.0"

[tool.flwr.app]
publisher = "flwrlabs"

[tool.flwr.app.components]
serverapp = "app.server_app:app"
clientapp = "app.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
local-epochs = 1
nested.lr = 0.1
"#;

    /// A FAB laid out like `flwr build` makes it.
    pub(crate) fn build(files: &[(&str, &str)], content_override: Option<&str>) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut listing = String::new();
        for (name, text) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
            if *name != "pyproject.toml" {
                listing.push_str(&format!(
                    "{name},{},{}\n",
                    hash(text.as_bytes()),
                    text.len() * 8
                ));
            }
        }
        zip.start_file(".info/CONTENT", options).unwrap();
        zip.write_all(content_override.unwrap_or(&listing).as_bytes())
            .unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn sint(v: i64) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::Sint64(v)),
        }
    }

    #[test]
    fn reads_metadata_and_fuses_config() {
        let fab = build(&[("pyproject.toml", PYPROJECT), ("app/x.py", "")], None);
        let meta = metadata(&fab).unwrap();
        assert_eq!(meta.fab_id(), "flwrlabs/quickstart");
        assert_eq!(meta.version, "1.0.0");
        assert_eq!(meta.default_config.len(), 3);
        assert!(meta.default_config.contains_key("nested.lr"));
        let overrides = HashMap::from([
            ("num-server-rounds".to_owned(), sint(5)),
            ("unknown-key".to_owned(), sint(5)),
        ]);
        let fused = meta.run_config(&overrides);
        assert_eq!(fused.get("num-server-rounds"), Some(&sint(5)));
        assert_eq!(fused.get("local-epochs"), Some(&sint(1)));
        assert!(!fused.contains_key("unknown-key"));
        let h = hash(&fab);
        assert_eq!(
            meta.install_dir_name(&h),
            format!("flwrlabs.quickstart.1.0.0.{}", &h[..8])
        );
    }

    #[test]
    fn hash_is_checked() {
        assert!(verify_hash(b"abc", &hash(b"abc")).is_ok());
        assert!(matches!(
            verify_hash(b"abc", &hash(b"abd")),
            Err(FabError::HashMismatch { .. })
        ));
    }

    #[test]
    fn installs_once_and_verifies() {
        let home = tempfile::tempdir().unwrap();
        let files = [
            ("pyproject.toml", PYPROJECT),
            ("app/__init__.py", ""),
            ("app/client_app.py", "app = 1\n"),
        ];
        let fab = build(&files, None);
        let dir = install(&fab, home.path()).unwrap();
        assert_eq!(
            dir.parent().unwrap(),
            home.path().join("apps"),
            "installed under <home>/apps"
        );
        assert!(dir.join("pyproject.toml").is_file());
        assert_eq!(
            fs::read_to_string(dir.join("app/client_app.py")).unwrap(),
            "app = 1\n"
        );
        assert!(!dir.join(".info").exists());
        // Second install is a no-op.
        assert_eq!(install(&fab, home.path()).unwrap(), dir);
        // Only the app directory is left, no staging leftovers.
        assert_eq!(fs::read_dir(home.path().join("apps")).unwrap().count(), 1);

        let tampered = build(&files, Some("app/client_app.py,00,8\n"));
        assert!(matches!(
            install(&tampered, home.path()),
            Err(FabError::Content(_))
        ));
        let empty = build(&files, Some(""));
        assert!(matches!(
            install(&empty, home.path()),
            Err(FabError::Content(_))
        ));
        assert!(matches!(
            install(b"not a zip", home.path()),
            Err(FabError::Zip(_))
        ));
    }
}
