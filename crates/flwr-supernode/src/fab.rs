//! Flower App Bundle installation (BEHAVIOR.md §10); the hash and the `pyproject.toml` metadata
//! are [`flwr_core::fab`]'s.
//!
//! A FAB is a ZIP archive whose `pyproject.toml` names the app and whose `.info/CONTENT` lists
//! `path,sha256,bits` for every other file. The SuperNode needs the metadata to fill the `Run`
//! and `Context` it hands the ClientApp, and installs the bundle where `flwr-clientapp` looks for
//! it: `<flwr home>/apps/<publisher>.<name>.<version>.<hash[..8]>/`. Installation goes through a
//! temporary directory and one `rename`, so concurrent installers never see half an app.

use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use flwr_core::fab::{self, FabMetadata};

/// Why a FAB could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// `.info/CONTENT` is malformed or a listed file does not match its hash.
    #[error("FAB file hashes could not be verified: {0}")]
    Content(String),
    /// Writing the installation failed.
    #[error("cannot install FAB into {path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The FAB's `pyproject.toml` is unusable.
    #[error(transparent)]
    Metadata(#[from] fab::FabError),
    /// A required file is missing from the archive.
    #[error("FAB has no {0}")]
    MissingFile(&'static str),
    /// An archive entry would land outside the install directory.
    #[error("FAB entry {0:?} escapes the install directory")]
    UnsafePath(String),
    /// The bytes are not a readable ZIP archive.
    #[error("FAB is not a valid ZIP archive: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// The directory name under `<flwr home>/apps/` for the FAB with hash `hash`:
/// `<publisher>.<name>.<version>.<hash[..8]>`.
pub fn install_dir_name(metadata: &FabMetadata, hash: &str) -> String {
    let short = hash.get(..8).unwrap_or(hash);
    format!(
        "{}.{}.{}.{short}",
        metadata.publisher, metadata.name, metadata.version
    )
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
pub fn install(content: &[u8], home: &Path) -> Result<PathBuf, InstallError> {
    let metadata = FabMetadata::from_fab(content)?;
    let apps = home.join("apps");
    let target = apps.join(install_dir_name(&metadata, &fab::hash(content)));
    if target.exists() {
        return Ok(target);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
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
            return Err(InstallError::Io {
                path: target,
                source,
            });
        }
    }
    Ok(target)
}

fn extract(content: &[u8], dir: &Path) -> Result<(), InstallError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(content))?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let relative = entry
            .enclosed_name()
            .ok_or_else(|| InstallError::UnsafePath(entry.name().to_owned()))?;
        let path = dir.join(relative);
        if entry.is_dir() {
            fs::create_dir_all(&path).map_err(|source| InstallError::Io {
                path: path.clone(),
                source,
            })?;
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| InstallError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| InstallError::Content(format!("{}: {e}", entry.name())))?;
        fs::write(&path, &bytes).map_err(|source| InstallError::Io { path, source })?;
    }
    Ok(())
}

/// Checks every `path,sha256,bits` line of `.info/CONTENT` against the extracted files.
fn verify_content(dir: &Path) -> Result<(), InstallError> {
    let listing = fs::read_to_string(dir.join(".info").join("CONTENT"))
        .map_err(|_| InstallError::MissingFile(".info/CONTENT"))?;
    let listing = listing.trim();
    if listing.is_empty() {
        return Err(InstallError::Content(".info/CONTENT is empty".into()));
    }
    for line in listing.split('\n') {
        let fields: Vec<&str> = line.split(',').collect();
        let [relative, expected, _bits] = fields[..] else {
            return Err(InstallError::Content(format!("malformed line {line:?}")));
        };
        let path = dir.join(relative);
        if !path.starts_with(dir) || relative.split('/').any(|part| part == "..") {
            return Err(InstallError::UnsafePath(relative.to_owned()));
        }
        let bytes =
            fs::read(&path).map_err(|_| InstallError::Content(format!("{relative} is missing")))?;
        if fab::hash(&bytes) != expected {
            return Err(InstallError::Content(format!("{relative} does not match")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const PYPROJECT: &str = r#"
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
    fn build(files: &[(&str, &str)], content_override: Option<&str>) -> Vec<u8> {
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
                    fab::hash(text.as_bytes()),
                    text.len() * 8
                ));
            }
        }
        zip.start_file(".info/CONTENT", options).unwrap();
        zip.write_all(content_override.unwrap_or(&listing).as_bytes())
            .unwrap();
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn install_dir_is_named_after_the_app_and_hash() {
        let fab = build(&[("pyproject.toml", PYPROJECT), ("app/x.py", "")], None);
        let meta = FabMetadata::from_fab(&fab).unwrap();
        let h = fab::hash(&fab);
        assert_eq!(
            install_dir_name(&meta, &h),
            format!("flwrlabs.quickstart.1.0.0.{}", &h[..8])
        );
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
            Err(InstallError::Content(_))
        ));
        let empty = build(&files, Some(""));
        assert!(matches!(
            install(&empty, home.path()),
            Err(InstallError::Content(_))
        ));
        assert!(matches!(
            install(b"not a zip", home.path()),
            Err(InstallError::Metadata(fab::FabError::NotZip(_)))
        ));
    }
}
