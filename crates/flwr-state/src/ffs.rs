//! [`Ffs`]: the SuperLink's FAB storage (BEHAVIOR.md §8.4), content-addressed by SHA-256.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The SHA-256 of a FAB as lowercase hex: its `fab_hash`/`hash_str` ([`flwr_core::fab::hash`],
/// the one definition).
pub use flwr_core::fab::hash as fab_hash;

use crate::FabStore;

/// Why an [`Ffs`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FfsError {
    /// The requested hash is not 64 lowercase hex characters. The reference used it as a file
    /// name unchecked (path traversal, AUTH.md §10); the gRPC layer should answer as for a
    /// missing FAB (`Found no FAB with hash: <hash>`).
    #[error("invalid FAB hash")]
    InvalidHash(String),
    /// Reading or writing the storage directory failed.
    #[error("FAB storage i/o error")]
    Io(#[from] io::Error),
    /// The store that keeps the FABs (PostgreSQL) failed.
    #[error("FAB storage: {0}")]
    Store(#[from] crate::StateError),
}

/// FAB storage: each FAB is a file `<sha256 hex>` with a sibling `<sha256 hex>.META`
/// holding `{}`, the same in memory, or rows of a shared store that every replica reads.
#[derive(Debug)]
pub struct Ffs {
    backend: Backend,
}

/// Where the bytes live.
#[derive(Debug)]
enum Backend {
    Directory(PathBuf),
    /// Short critical sections only (a map insert or clone).
    Memory(Mutex<HashMap<String, Vec<u8>>>),
    /// In the LinkState's database, so that every SuperLink replica serves every FAB.
    Shared(Arc<dyn FabStore>),
}

impl Ffs {
    /// Storage in `dir` (`--storage-dir`); the directory is created on the first `put`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            backend: Backend::Directory(dir.into()),
        }
    }

    /// Storage in process memory, for tests and simulations.
    pub fn in_memory() -> Self {
        Self {
            backend: Backend::Memory(Mutex::new(HashMap::new())),
        }
    }

    /// Storage in a shared store (PostgreSQL): every replica sees every FAB.
    pub fn shared(store: Arc<dyn FabStore>) -> Self {
        Self {
            backend: Backend::Shared(store),
        }
    }

    /// Stores `content` and returns its SHA-256 as lowercase hex. Storing the same content
    /// again is harmless.
    ///
    /// # Errors
    ///
    /// [`FfsError::Io`] if the directory or files cannot be written.
    pub fn put(&self, content: &[u8]) -> Result<String, FfsError> {
        let hash = fab_hash(content);
        match &self.backend {
            Backend::Directory(dir) => {
                std::fs::create_dir_all(dir)?;
                write_replacing(&dir.join(&hash), content)?;
                write_replacing(&dir.join(format!("{hash}.META")), b"{}")?;
            }
            Backend::Shared(store) => store.put_fab(&hash, content)?,
            Backend::Memory(map) => {
                let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
                map.insert(hash.clone(), content.to_vec());
            }
        }
        Ok(hash)
    }

    /// The FAB with this hash, or `None` if none is stored.
    ///
    /// # Errors
    ///
    /// [`FfsError::InvalidHash`] unless `hash` is exactly 64 lowercase hex characters;
    /// [`FfsError::Io`] for read failures other than "not found".
    pub fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, FfsError> {
        if !is_fab_hash(hash) {
            return Err(FfsError::InvalidHash(hash.to_owned()));
        }
        match &self.backend {
            Backend::Directory(dir) => read_if_exists(&dir.join(hash)),
            Backend::Shared(store) => Ok(store.fab(hash)?),
            Backend::Memory(map) => {
                let map = map.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(map.get(hash).cloned())
            }
        }
    }
}

/// Writes `path` through a temporary sibling and a rename: every run of a FAB shares its one
/// file, and a crash mid-write must not leave it truncated for all of them.
fn write_replacing(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = std::fs::write(&temporary, content)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Reads a file, mapping "not found" to `None`.
fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, FfsError> {
    match std::fs::read(path) {
        Ok(content) => Ok(Some(content)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Whether `hash` is exactly 64 lowercase hex characters.
pub fn is_fab_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ffs: &Ffs) {
        let hash = ffs.put(b"fab bytes").unwrap();
        assert_eq!(hash, fab_hash(b"fab bytes"));
        assert!(is_fab_hash(&hash));
        assert_eq!(ffs.get(&hash).unwrap().as_deref(), Some(&b"fab bytes"[..]));
        assert_eq!(ffs.get(&fab_hash(b"other")).unwrap(), None);
        for bad in [
            "../etc/passwd",
            "",
            &hash.to_uppercase(),
            &hash[..63],
            "/etc/passwd",
        ] {
            assert!(
                matches!(ffs.get(bad), Err(FfsError::InvalidHash(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn directory_storage() {
        let dir = tempfile::tempdir().unwrap();
        let ffs = Ffs::new(dir.path().join("ffs"));
        check(&ffs);
        let hash = fab_hash(b"fab bytes");
        let meta = std::fs::read(dir.path().join("ffs").join(format!("{hash}.META"))).unwrap();
        assert_eq!(meta, b"{}");
    }

    #[test]
    fn memory_storage() {
        check(&Ffs::in_memory());
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            fab_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
