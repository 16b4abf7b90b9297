//! Flower App Bundle installation (BEHAVIOR.md §10); the hash and the `pyproject.toml` metadata
//! are [`flwr_core::fab`]'s.
//!
//! A FAB is a ZIP archive whose `pyproject.toml` names the app and whose `.info/CONTENT` lists
//! `path,sha256,bits` for every other file. The SuperNode needs the metadata to fill the `Run`
//! and `Context` it hands the ClientApp, and installs the bundle where `flwr-clientapp` looks for
//! it: `<flwr home>/apps/<publisher>.<name>.<version>.<hash[..8]>/`. Installation goes through a
//! temporary directory and one `rename`, so concurrent installers never see half an app.
//!
//! A FAB comes from the SuperLink, i.e. from whoever could start a run, so nothing in it is
//! trusted. Before a single byte is written:
//!
//! - `publisher` and `name` must match `[A-Za-z0-9][A-Za-z0-9_-]*` and `version`
//!   `[A-Za-z0-9][A-Za-z0-9.+!_-]*` (at most [`MAX_FIELD_LEN`] characters each): what `flwr new`
//!   and PEP 440 produce, without dots in publisher and name, since the reference's FAB file
//!   name `<publisher>.<name>.<version>.<hash>.fab` is split on dots. The reference checks none
//!   of this and installs a publisher of `../../x` outside its apps directory;
//! - the install directory must be exactly one component below `<flwr home>/apps`;
//! - every archive entry must be a plain relative path (no `..`, no absolute path, no symbolic
//!   link), and every file but `pyproject.toml` and `.info/CONTENT` itself must be listed in
//!   `.info/CONTENT` with a matching sha256, and every listed file present. The reference only
//!   checks the listed files and installs anything else unchecked.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

use flwr_core::fab::{self, FabMetadata};

/// The longest `publisher`, `name` or `version` accepted; three of them, the hash prefix and the
/// dots stay well inside a 255-byte file name.
pub const MAX_FIELD_LEN: usize = 64;

/// The listing of the packaged files inside a FAB.
const CONTENT: &str = fab::CONTENT_PATH;

/// Why a FAB could not be installed. Every message names the FAB (`fab_id`, version and hash
/// prefix) and, where there is one, the offending entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// `.info/CONTENT` is malformed, a listed file is missing, or one does not match its hash.
    #[error("FAB file hashes could not be verified: {0}")]
    Content(String),
    /// `publisher`, `name` or `version` is not allowed (it would also name the install
    /// directory).
    #[error("FAB {fab}: {field} {value:?} is not allowed; expected {expected}")]
    InvalidMetadata {
        /// The FAB.
        fab: String,
        /// `publisher`, `name` or `version`.
        field: &'static str,
        /// The refused value.
        value: String,
        /// The accepted pattern.
        expected: &'static str,
    },
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
    #[error("FAB {fab} has no {file}")]
    MissingFile {
        /// The FAB.
        fab: String,
        /// The missing file.
        file: &'static str,
    },
    /// An archive file is not listed in `.info/CONTENT`.
    #[error("FAB {fab}: entry {entry:?} is not listed in .info/CONTENT")]
    Unlisted {
        /// The FAB.
        fab: String,
        /// The entry name.
        entry: String,
    },
    /// An archive entry (or a `.info/CONTENT` line) would land outside the install directory,
    /// or is a symbolic link.
    #[error("FAB {fab}: entry {entry:?} refused: {reason}")]
    UnsafeEntry {
        /// The FAB.
        fab: String,
        /// The entry name.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The bytes are not a readable ZIP archive.
    #[error("FAB is not a valid ZIP archive: {0}")]
    Zip(#[from] zip::result::ZipError),
}

impl InstallError {
    /// Whether the FAB itself is at fault (rather than the local file system): such a FAB must
    /// not be run at all.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
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

/// Installs the FAB under `<home>/apps/` unless that version is already there; returns the app
/// directory. The whole archive is checked (see the module docs) before anything is written.
/// Blocking: call it from a blocking task.
///
/// # Errors
///
/// When the archive is malformed or unsafe, a file does not match `.info/CONTENT`, or writing
/// fails.
pub fn install(content: &[u8], home: &Path) -> Result<PathBuf, InstallError> {
    let metadata = FabMetadata::from_fab(content)?;
    let hash = fab::hash(content);
    let label = format!(
        "{:?} version {:?} ({})",
        metadata.fab_id(),
        metadata.version,
        hash.get(..8).unwrap_or(&hash)
    );
    validate_metadata(&metadata, &label)?;
    let files = verified_files(content, &label)?;

    let apps = home.join("apps");
    let name = install_dir_name(&metadata, &hash);
    // The validated fields make this a single plain component; checked anyway because a path
    // outside `apps` is the one outcome that must never happen.
    if !is_single_component(&name) {
        return Err(InstallError::UnsafeEntry {
            fab: label,
            entry: name,
            reason: "the install directory would not be directly below <flwr home>/apps",
        });
    }
    let target = apps.join(&name);
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
    for (relative, bytes) in &files {
        let path = staging.path().join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::write(&path, bytes).map_err(io(&path))?;
    }
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

/// Checks `publisher`, `name` and `version` against the patterns in the module docs.
fn validate_metadata(metadata: &FabMetadata, label: &str) -> Result<(), InstallError> {
    const IDENTIFIER: &str = "1 to 64 of A-Z a-z 0-9 _ -, starting with a letter or digit";
    const VERSION: &str = "1 to 64 of A-Z a-z 0-9 . + ! _ -, starting with a letter or digit";
    let identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let version = |c: char| identifier(c) || matches!(c, '.' | '+' | '!');
    let fields = [
        ("publisher", &metadata.publisher, false),
        ("name", &metadata.name, false),
        ("version", &metadata.version, true),
    ];
    for (field, value, is_version) in fields {
        let (allowed, expected): (&dyn Fn(char) -> bool, _) = if is_version {
            (&version, VERSION)
        } else {
            (&identifier, IDENTIFIER)
        };
        let valid = value.len() <= MAX_FIELD_LEN
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.chars().all(allowed);
        if !valid {
            return Err(InstallError::InvalidMetadata {
                fab: label.to_owned(),
                field,
                value: value.to_owned(),
                expected,
            });
        }
    }
    Ok(())
}

/// Whether `name` is one plain path component (not empty, `.`, `..`, or containing `/`).
fn is_single_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
}

/// Why `name` (an archive entry or a `.info/CONTENT` path) may not be extracted, if it may not.
fn unsafe_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty name");
    }
    if name.contains('\0') {
        return Some("NUL byte in name");
    }
    if name.starts_with('/') {
        return Some("absolute path");
    }
    // Backslashes are separators for some unzip tools; refusing them keeps every reader's view
    // of the path the same.
    if name.contains('\\') {
        return Some("backslash in name");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Some("`.`, `..` or empty path component");
    }
    None
}

/// Reads the archive into `(relative path, bytes)` pairs, every file checked against
/// `.info/CONTENT` (see the module docs). `.info/CONTENT` itself is not returned.
fn verified_files(content: &[u8], label: &str) -> Result<Vec<(String, Vec<u8>)>, InstallError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(content))?;
    let listing = {
        let mut entry = match archive.by_name(CONTENT) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(InstallError::MissingFile {
                    fab: label.to_owned(),
                    file: CONTENT,
                })
            }
            Err(error) => return Err(error.into()),
        };
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| InstallError::Content(format!("FAB {label}: {CONTENT}: {e}")))?;
        text
    };
    let listed = parse_listing(&listing, label)?;

    let mut seen = HashSet::new();
    let mut files = Vec::new();
    let mut unlisted = None;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name().to_owned();
        let refuse = |reason| InstallError::UnsafeEntry {
            fab: label.to_owned(),
            entry: name.clone(),
            reason,
        };
        if let Some(reason) = unsafe_reason(&name) {
            return Err(refuse(reason));
        }
        if entry.is_symlink() {
            return Err(refuse("symbolic link"));
        }
        if entry.enclosed_name().is_none() {
            return Err(refuse("escapes the install directory"));
        }
        if entry.is_dir() {
            // Directories are created for the files inside them.
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(refuse("appears twice in the archive"));
        }
        if name == CONTENT {
            continue;
        }
        let expected = match listed.get(name.as_str()) {
            Some(expected) => Some(*expected),
            // `flwr build` lists everything but `pyproject.toml`, which the metadata check read.
            None if name == "pyproject.toml" => None,
            None => {
                // Reported after the listed files are checked, so a tampered file is named as
                // such even when an unlisted one comes first.
                unlisted.get_or_insert(name);
                continue;
            }
        };
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| InstallError::Content(format!("FAB {label}: {name}: {e}")))?;
        if let Some(expected) = expected {
            if fab::hash(&bytes) != expected {
                return Err(InstallError::Content(format!(
                    "FAB {label}: {name:?} does not match its hash in {CONTENT}"
                )));
            }
        }
        files.push((name, bytes));
    }
    if let Some(missing) = listed.keys().find(|path| !seen.contains(**path)) {
        return Err(InstallError::Content(format!(
            "FAB {label}: {missing:?} is listed in {CONTENT} but missing from the archive"
        )));
    }
    if let Some(entry) = unlisted {
        return Err(InstallError::Unlisted {
            fab: label.to_owned(),
            entry,
        });
    }
    Ok(files)
}

/// `path,sha256,bits` lines of `.info/CONTENT` as path → hash.
fn parse_listing<'a>(
    listing: &'a str,
    label: &str,
) -> Result<HashMap<&'a str, &'a str>, InstallError> {
    let listing = listing.trim();
    if listing.is_empty() {
        return Err(InstallError::Content(format!(
            "FAB {label}: {CONTENT} is empty"
        )));
    }
    let mut listed = HashMap::new();
    for line in listing.split('\n') {
        let fields: Vec<&str> = line.split(',').collect();
        let [relative, expected, _bits] = fields[..] else {
            return Err(InstallError::Content(format!(
                "FAB {label}: malformed {CONTENT} line {line:?}"
            )));
        };
        if let Some(reason) = unsafe_reason(relative) {
            return Err(InstallError::UnsafeEntry {
                fab: label.to_owned(),
                entry: relative.to_owned(),
                reason,
            });
        }
        listed.insert(relative, expected);
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use flwr_core::FabBuilder;

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

    /// A FAB laid out like `flwr build` makes it (`files` starts with `pyproject.toml`); with
    /// `content_override`, the same entries with a forged `.info/CONTENT`.
    fn build(files: &[(&str, &str)], content_override: Option<&str>) -> Vec<u8> {
        if let Some(listing) = content_override {
            let mut entries = files.to_vec();
            entries.push((fab::CONTENT_PATH, listing));
            return raw(&entries, None);
        }
        let [("pyproject.toml", pyproject), rest @ ..] = files else {
            panic!("pyproject.toml comes first");
        };
        rest.iter()
            .fold(FabBuilder::new(*pyproject), |builder, (name, text)| {
                builder.file(*name, *text)
            })
            .build()
            .unwrap()
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

    fn with_publisher(publisher: &str) -> String {
        PYPROJECT.replace(
            "publisher = \"flwrlabs\"",
            &format!("publisher = {publisher:?}"),
        )
    }

    #[test]
    fn a_publisher_with_a_path_is_refused_and_nothing_escapes() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let escape = root.path().join("escaped");
        let publisher = format!("../../{}", escape.display());
        let pyproject = with_publisher(&publisher);
        let fab = build(&[("pyproject.toml", &pyproject), ("app/x.py", "")], None);
        let error = install(&fab, &home).unwrap_err();
        assert!(
            matches!(
                &error,
                InstallError::InvalidMetadata {
                    field: "publisher",
                    ..
                }
            ),
            "{error}"
        );
        let text = error.to_string();
        assert!(
            text.contains("quickstart") && text.contains(&publisher),
            "{text}"
        );
        assert!(!root.path().join("escaped.quickstart.1.0.0").exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing written"
        );
        for bad in ["", ".", "..", "a/b", "a.b", "-x", "x y"] {
            let fab = build(
                &[("pyproject.toml", &with_publisher(bad)), ("a.py", "")],
                None,
            );
            assert!(
                matches!(
                    install(&fab, &home),
                    Err(InstallError::InvalidMetadata { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let version = PYPROJECT.replace("1.0.0", "1.0/../../x");
        let fab = build(&[("pyproject.toml", &version), ("a.py", "")], None);
        assert!(matches!(
            install(&fab, &home),
            Err(InstallError::InvalidMetadata {
                field: "version",
                ..
            })
        ));
        // What `flwr new` and PEP 440 produce is accepted.
        let fine = PYPROJECT
            .replace("1.0.0", "1.0.0rc1+local.2")
            .replace("flwrlabs", "flwr_Labs-2");
        let fab = build(&[("pyproject.toml", &fine), ("a.py", "")], None);
        install(&fab, &home).unwrap();
    }

    #[test]
    fn unlisted_files_are_refused_by_name() {
        let home = tempfile::tempdir().unwrap();
        let listing = format!("app/x.py,{},0\n", fab::hash(b""));
        let fab = build(
            &[
                ("pyproject.toml", PYPROJECT),
                ("app/x.py", ""),
                ("app/extra.py", "boom"),
            ],
            Some(&listing),
        );
        let error = install(&fab, home.path()).unwrap_err();
        assert!(matches!(&error, InstallError::Unlisted { entry, .. } if entry == "app/extra.py"));
        assert!(error.to_string().contains("flwrlabs/quickstart"), "{error}");
        assert!(!home.path().join("apps").exists(), "nothing written");
    }

    /// An archive written entry by entry, CONTENT included as given: hostile archives
    /// [`FabBuilder`] cannot make.
    fn raw(entries: &[(&str, &str)], symlink: Option<(&str, &str)>) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, text) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        if let Some((name, target)) = symlink {
            zip.add_symlink(name, target, options).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn traversal_absolute_and_symlink_entries_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let x = format!("{},0", fab::hash(b""));
        for name in ["../evil.py", "app/../../evil.py", "/tmp/evil.py"] {
            let listing = format!("{name},{x}\n");
            let fab = raw(
                &[
                    ("pyproject.toml", PYPROJECT),
                    (name, ""),
                    (".info/CONTENT", &listing),
                ],
                None,
            );
            let error = install(&fab, &home).unwrap_err();
            assert!(
                matches!(&error, InstallError::UnsafeEntry { entry, .. } if entry == name),
                "{name}: {error}"
            );
        }
        let listing = format!("app/x.py,{x}\nlink,{x}\n");
        let fab = raw(
            &[
                ("pyproject.toml", PYPROJECT),
                ("app/x.py", ""),
                (".info/CONTENT", &listing),
            ],
            Some(("link", "/etc/passwd")),
        );
        let error = install(&fab, &home).unwrap_err();
        assert!(
            matches!(&error, InstallError::UnsafeEntry { entry, reason: "symbolic link", .. } if entry == "link"),
            "{error}"
        );
        assert!(!home.exists(), "nothing written");
    }
}
