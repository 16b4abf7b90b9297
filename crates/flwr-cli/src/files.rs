//! Writing a set of generated files safely.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
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

/// Writes every file, or none when one exists already and `force` is false.
///
/// # Errors
///
/// [`WriteError::Exists`] names the first existing file; [`WriteError::Io`] the file that
/// could not be written.
pub fn write_all(files: &[OutputFile], force: bool) -> Result<(), WriteError> {
    if !force {
        if let Some(existing) = files.iter().find(|f| f.path.exists()) {
            return Err(WriteError::Exists(existing.path.clone()));
        }
    }
    for file in files {
        write_one(file)?;
    }
    Ok(())
}

fn write_one(file: &OutputFile) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: file.path.clone(),
        source,
    };
    if let Some(dir) = file.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| WriteError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mode = if file.private { 0o600 } else { 0o644 };
    // Created with the final mode so a private key is never readable by others, not even
    // briefly; an existing file (with --force) is truncated and its mode corrected.
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&file.path)
        .map_err(io)?;
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    out.write_all(&file.content).map_err(io)?;
    out.sync_all().map_err(io)
}

/// `dir/name` as a path.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
