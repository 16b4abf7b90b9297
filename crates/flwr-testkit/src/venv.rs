//! The Python virtualenv holding the reference `flwr==1.14.0`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{CommandLine, Error, Result};

/// Executables a usable virtualenv must have under `bin/`.
const REQUIRED: [&str; 6] = [
    "python",
    "flower-superlink",
    "flower-supernode",
    "flwr",
    "flwr-serverapp",
    "flwr-clientapp",
];

/// The root of the Cargo workspace (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// A virtualenv with the reference Flower installed.
#[derive(Clone, Debug)]
pub struct Venv {
    root: PathBuf,
}

impl Venv {
    /// Environment variable naming the virtualenv directory.
    pub const ENV_VAR: &'static str = "FLWR_VENV";

    /// Finds the virtualenv: `$FLWR_VENV` if set and non-empty, else `<workspace root>/.venv`.
    ///
    /// # Errors
    ///
    /// [`Error::VenvMissing`] if it does not exist or lacks one of the Flower executables.
    pub fn locate() -> Result<Self> {
        match env::var_os(Self::ENV_VAR) {
            Some(path) if !path.is_empty() => Self::at(PathBuf::from(path)),
            _ => Self::at(workspace_root().join(".venv")),
        }
    }

    /// Uses the virtualenv at `root`.
    ///
    /// # Errors
    ///
    /// As [`Venv::locate`].
    pub fn at(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::VenvMissing {
                path: root,
                reason: "no such directory".to_owned(),
            });
        }
        let venv = Self { root };
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|name| !venv.bin(name).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(Error::VenvMissing {
                reason: format!("bin/ lacks {}", missing.join(", ")),
                path: venv.root,
            });
        }
        Ok(venv)
    }

    /// The virtualenv directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its `bin/` directory.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// `bin/<name>`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }

    /// The Python interpreter.
    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// The reference SuperLink, `flower-superlink`.
    pub fn superlink(&self) -> PathBuf {
        self.bin("flower-superlink")
    }

    /// The reference SuperNode, `flower-supernode`.
    pub fn supernode(&self) -> PathBuf {
        self.bin("flower-supernode")
    }

    /// The user CLI, `flwr`.
    pub fn flwr(&self) -> PathBuf {
        self.bin("flwr")
    }

    /// `flwr-serverapp`, which a SuperLink spawns for each run.
    pub fn serverapp(&self) -> PathBuf {
        self.bin("flwr-serverapp")
    }

    /// `flwr-clientapp`, which a SuperNode spawns for each message.
    pub fn clientapp(&self) -> PathBuf {
        self.bin("flwr-clientapp")
    }

    /// A command line for `program` (any binary, ours or the reference's) with the virtualenv
    /// activated: `bin/` first on `PATH`, `VIRTUAL_ENV` set and Python output unbuffered.
    ///
    /// SuperLinks and SuperNodes find `flwr-serverapp` / `flwr-clientapp` by name on `PATH`,
    /// so this is the right way to start ours too. Give each process its own `FLWR_HOME`
    /// (`.env("FLWR_HOME", dir)`) to keep installed FABs and SuperLink storage out of `~/.flwr`.
    pub fn command(&self, program: impl Into<PathBuf>) -> CommandLine {
        CommandLine::new(program)
            .env("PATH", self.path_env())
            .env("VIRTUAL_ENV", &self.root)
            // Log lines must reach the log file as they happen, not when a buffer fills.
            .env("PYTHONUNBUFFERED", "1")
    }

    /// `PATH` with `bin/` in front of the inherited value.
    fn path_env(&self) -> OsString {
        let mut dirs = vec![self.bin_dir()];
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        // Joining fails only if a directory contains ':'; then `bin/` alone still works for
        // finding the Flower executables.
        env::join_paths(dirs).unwrap_or_else(|_| self.bin_dir().into_os_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("crates/flwr-testkit").is_dir());
    }

    #[test]
    fn missing_venv_says_how_to_create_it() {
        let error = Venv::at("/nonexistent/flwr-venv").expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("run scripts/test"), "{message}");
        assert!(message.contains("/nonexistent/flwr-venv"), "{message}");
    }

    #[test]
    fn incomplete_venv_names_what_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("bin")).expect("bin");
        std::fs::write(dir.path().join("bin/python"), "").expect("python");
        let message = Venv::at(dir.path()).expect_err("incomplete").to_string();
        assert!(message.contains("flower-superlink"), "{message}");
        assert!(!message.contains("python,"), "{message}");
    }
}
