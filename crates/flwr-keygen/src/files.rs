//! Writing a set of generated files safely.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why generated files could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A target file exists and `force` was not given.
    #[error("{} already exists (pass --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// The file system refused.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory being written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One file to write.
#[derive(Debug)]
pub struct OutputFile {
    /// Where to write it.
    pub path: PathBuf,
    /// Its content.
    pub content: Vec<u8>,
    /// Private files get mode 0600, others 0644.
    pub private: bool,
}

/// Mode of directories this module creates: key and certificate directories hold secrets, and
/// `create_dir_all` would follow the umask (0777 under `umask 000`).
const DIR_MODE: u32 = 0o700;

/// Writes every file, or none when one exists already and `force` is false.
///
/// Files are never written through an existing path: without `force` each file is created
/// exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`), so a file or symlink that appears at the path
/// after the check is refused, not followed; with `force` each file is written to a fresh
/// temporary file in the same directory and renamed over the target, which replaces a symlink
/// there instead of writing to where it points. Missing directories are created with mode
/// 0700; private files get 0600, others 0644.
///
/// # Errors
///
/// [`WriteError::Exists`] names the first existing file (symlinks included, dangling or not);
/// [`WriteError::Io`] the file that could not be written. Without `force`, files this call
/// already created are removed again on error.
pub fn write_all(files: &[OutputFile], force: bool) -> Result<(), WriteError> {
    if !force {
        // `symlink_metadata`, not `exists`: a dangling symlink "does not exist" for `exists`.
        if let Some(existing) = files.iter().find(|f| f.path.symlink_metadata().is_ok()) {
            return Err(WriteError::Exists(existing.path.clone()));
        }
    }
    let mut created: Vec<&Path> = Vec::with_capacity(files.len());
    for file in files {
        let result = if force {
            replace_one(file)
        } else {
            create_one(file)
        };
        if let Err(error) = result {
            // All or nothing for a fresh set; with --force the old files were the fallback and
            // are already partly replaced, so nothing can be rolled back there.
            for path in created {
                let _ = fs::remove_file(path);
            }
            return Err(error);
        }
        if !force {
            created.push(&file.path);
        }
    }
    Ok(())
}

/// Creates `file` exclusively, refusing any existing file or symlink at its path.
fn create_one(file: &OutputFile) -> Result<(), WriteError> {
    create_parent(&file.path)?;
    let out = open_new(&file.path, file.private).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            WriteError::Exists(file.path.clone())
        } else {
            WriteError::Io {
                path: file.path.clone(),
                source,
            }
        }
    })?;
    let written = fill(out, file);
    if written.is_err() {
        let _ = fs::remove_file(&file.path);
    }
    written
}

/// Writes `file` to a temporary file next to it and renames that over the target.
fn replace_one(file: &OutputFile) -> Result<(), WriteError> {
    let dir = create_parent(&file.path)?;
    let name = file
        .path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let io = |source| WriteError::Io {
        path: file.path.clone(),
        source,
    };
    let out = open_new(&temporary, file.private).map_err(io)?;
    // rename(2) replaces the directory entry itself: a symlink at the target is replaced, not
    // followed, and readers see the old file or the new one, never a partial one.
    let result = fill(out, file).and_then(|()| fs::rename(&temporary, &file.path).map_err(io));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
        return result;
    }
    // Make the rename itself durable; a failure here leaves a complete file either way.
    if let Ok(handle) = fs::File::open(&dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Creates the directory of `path` (mode 0700 for every directory created) and returns it.
fn create_parent(path: &Path) -> Result<PathBuf, WriteError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(PathBuf::from("."));
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| WriteError::Io {
            path: dir.to_owned(),
            source,
        })?;
    Ok(dir.to_owned())
}

/// Opens a new file at `path` with its final mode, failing if anything (a symlink included)
/// is already there.
fn open_new(path: &Path, private: bool) -> std::io::Result<fs::File> {
    let out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        // O_EXCL already refuses a symlink; O_NOFOLLOW states the intent and guards the same
        // on any path where O_EXCL would not apply.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode(private))
        .open(path)?;
    // The umask may have cleared bits of the public files' 0644; set the exact mode.
    out.set_permissions(fs::Permissions::from_mode(mode(private)))?;
    Ok(out)
}

fn mode(private: bool) -> u32 {
    if private {
        0o600
    } else {
        0o644
    }
}

/// Writes the content and flushes it to disk.
fn fill(mut out: fs::File, file: &OutputFile) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: file.path.clone(),
        source,
    };
    out.write_all(&file.content).map_err(io)?;
    out.sync_all().map_err(io)
}

/// `dir/name` as a path.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
