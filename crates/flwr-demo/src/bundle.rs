//! Packaging an app directory into a Flower App Bundle the way `flwr build` does
//! (BEHAVIOR.md §10); this module picks the files, [`FabBuilder`] writes the archive:
//!
//! > A ZIP archive. `flwr build` writes, in order: `pyproject.toml` (the project's file
//! > re-serialised as TOML with `[tool.flwr.federations]` removed), then every file below the
//! > app directory whose suffix is `.py`, `.toml` or `.md` (excluding files named
//! > `pyproject.toml`, anything matched by the app's `.gitignore`, and `__pycache__/`), then
//! > `.info/CONTENT`. All entries are stored uncompressed and carry the fixed timestamp
//! > 2024-10-01 00:00:00.
//!
//! One simplification: a `.gitignore` is not interpreted; hidden files and directories are
//! skipped instead (the example bundles have neither).

use std::fs;
use std::path::{Path, PathBuf};

use flwr::AppSpec;
use flwr_core::fab::{self, FabBuilder};

use crate::error::{io_error, DemoError};

/// Suffixes `flwr build` packages.
const SUFFIXES: [&str; 3] = ["py", "toml", "md"];

/// A packaged app.
#[derive(Clone, Debug)]
pub struct Fab {
    /// The ZIP bytes.
    pub content: Vec<u8>,
    /// Lowercase sha256 hex of [`Fab::content`].
    pub hash: String,
    /// What the bundle's `pyproject.toml` says (identity, components, run config defaults).
    pub spec: AppSpec,
}

/// Packages `app_dir`.
///
/// # Errors
///
/// [`DemoError::Bundle`] when `pyproject.toml` is missing or invalid (the checks `StartRun`
/// would fail on), [`DemoError::Io`] when a file cannot be read.
pub fn build(app_dir: &Path) -> Result<Fab, DemoError> {
    let bundle_error = |reason: String| DemoError::Bundle {
        dir: app_dir.to_owned(),
        reason,
    };
    let pyproject_path = app_dir.join("pyproject.toml");
    let text = fs::read_to_string(&pyproject_path)
        .map_err(io_error(format!("reading {}", pyproject_path.display())))?;
    let pyproject = without_federations(&text).map_err(|e| bundle_error(e.to_string()))?;
    let spec = AppSpec::from_pyproject(&pyproject).map_err(|e| bundle_error(e.to_string()))?;

    let mut files = Vec::new();
    collect(app_dir, app_dir, &mut files)?;
    // Python sorts the `Path`s, which compares them component by component.
    files.sort_by(|a, b| a.components().cmp(b.components()));

    let mut builder = FabBuilder::new(pyproject);
    for relative in &files {
        let path = app_dir.join(relative);
        let bytes = fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
        builder.push(archive_name(relative), bytes);
    }
    if files.is_empty() {
        // An empty CONTENT crashes the reference's installer (BEHAVIOR.md §10).
        return Err(bundle_error(
            "no .py, .toml or .md file besides pyproject.toml".to_owned(),
        ));
    }
    let content = builder
        .build()
        .map_err(|e| bundle_error(format!("writing the ZIP: {e}")))?;
    Ok(Fab {
        hash: fab::hash(&content),
        content,
        spec,
    })
}

/// `pyproject.toml` re-serialised without `[tool.flwr.federations]`.
fn without_federations(text: &str) -> Result<String, toml::de::Error> {
    let mut doc: toml::Table = text.parse()?;
    if let Some(flwr) = doc
        .get_mut("tool")
        .and_then(toml::Value::as_table_mut)
        .and_then(|tool| tool.get_mut("flwr"))
        .and_then(toml::Value::as_table_mut)
    {
        flwr.remove("federations");
    }
    // A table of plain TOML values always serialises.
    Ok(toml::to_string(&doc).unwrap_or_default())
}

/// Relative paths of the files to package below `dir`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DemoError> {
    let entries = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "__pycache__" {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(io_error(format!("inspecting {}", path.display())))?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else if kind.is_file()
            && name != "pyproject.toml"
            && path
                .extension()
                .is_some_and(|ext| SUFFIXES.iter().any(|s| ext == *s))
        {
            if let Ok(relative) = path.strip_prefix(root) {
                files.push(relative.to_owned());
            }
        }
    }
    Ok(())
}

/// `a/b.py` with `/` separators, as in the archive and in `.info/CONTENT`.
fn archive_name(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Read as _};

    use super::*;

    fn bundle() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../flwr-examples/app/logreg")
    }

    #[test]
    fn packages_the_logreg_bundle_like_flwr_build() {
        let fab = build(&bundle()).expect("builds");
        assert_eq!(fab.hash.len(), 64);
        assert_eq!(fab.spec.fab_id, "flwr-rs/logreg");
        assert_eq!(fab.spec.serverapp, "logreg.server_app:app");
        assert!(fab.spec.config.contains_key("num-server-rounds"));

        let mut archive = zip::ZipArchive::new(Cursor::new(&fab.content)).expect("zip");
        let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names.first().map(String::as_str), Some("pyproject.toml"));
        assert_eq!(names.last().map(String::as_str), Some(".info/CONTENT"));
        assert!(
            names.contains(&"logreg/server_app.py".to_owned()),
            "{names:?}"
        );
        for index in 0..archive.len() {
            let entry = archive.by_index(index).expect("entry");
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
            let stamp = entry.last_modified().expect("timestamp");
            assert_eq!((stamp.year(), stamp.month(), stamp.day()), (2024, 10, 1));
        }

        let mut pyproject = String::new();
        archive
            .by_name("pyproject.toml")
            .expect("pyproject")
            .read_to_string(&mut pyproject)
            .expect("text");
        assert!(!pyproject.contains("federations"), "{pyproject}");

        let mut content = String::new();
        archive
            .by_name(".info/CONTENT")
            .expect("CONTENT")
            .read_to_string(&mut content)
            .expect("text");
        for line in content.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            let [path, hash, bits] = fields[..] else {
                panic!("bad line {line:?}");
            };
            let bytes = fs::read(bundle().join(path)).expect("listed file exists");
            assert_eq!(hash, fab::hash(&bytes));
            assert_eq!(bits, (bytes.len() * 8).to_string());
        }
        assert_eq!(content.lines().count(), names.len() - 2);

        // Deterministic: the same directory gives the same hash.
        assert_eq!(build(&bundle()).expect("builds").hash, fab.hash);
    }

    #[test]
    fn refuses_a_directory_without_pyproject() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(build(dir.path()), Err(DemoError::Io { .. })));
        fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\n",
        )
        .expect("write");
        assert!(matches!(build(dir.path()), Err(DemoError::Bundle { .. })));
    }
}
