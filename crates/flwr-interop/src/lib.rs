//! Shared set-up of the cross-implementation tests in `tests/`: node-auth key material made by
//! our generator or by `ssh-keygen`, laid out as Flower's authentication guide does.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use flwr_testkit::cluster::{NodeKeys, SuperLinkKeys};

/// Who makes the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMaker {
    /// `flower-keygen` (our generator, as a library call).
    Ours,
    /// `ssh-keygen -t ecdsa -b 384`, as the guide's `generate_auth_keys.sh`.
    SshKeygen,
}

/// Key files for a SuperLink and `listed + unlisted` SuperNodes, where only the first
/// `listed` SuperNode keys are in the SuperLink's allow-list.
#[derive(Debug)]
pub struct AuthFiles {
    /// The SuperLink's files.
    pub superlink: SuperLinkKeys,
    /// Every SuperNode's files; the listed ones first.
    pub supernodes: Vec<NodeKeys>,
}

impl AuthFiles {
    /// Flags that enable node auth on a SuperLink.
    pub fn superlink_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--auth-list-public-keys".into(),
            path(&self.superlink.allow_list),
            "--auth-superlink-private-key".into(),
            path(&self.superlink.private),
            "--auth-superlink-public-key".into(),
            path(&self.superlink.public),
        ]
    }
}

/// Makes the key files under `dir/keys`.
///
/// # Errors
///
/// When a generator fails.
pub fn make_keys(
    dir: &Path,
    maker: KeyMaker,
    listed: usize,
    unlisted: usize,
) -> anyhow::Result<AuthFiles> {
    let keys = dir.join("keys");
    let total = listed + unlisted;
    match maker {
        KeyMaker::Ours => {
            let files = flwr_keygen::keys::key_files(&keys, total)?;
            flwr_keygen::files::write_all(&files, false)?;
        }
        KeyMaker::SshKeygen => {
            std::fs::create_dir_all(&keys)?;
            let names = std::iter::once("server_credentials".to_owned())
                .chain((1..=total).map(|n| format!("client_credentials_{n}")));
            for name in names {
                let status = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", ""])
                    .arg("-f")
                    .arg(keys.join(&name))
                    .status()
                    .context("running ssh-keygen")?;
                if !status.success() {
                    bail!("ssh-keygen failed for {name}");
                }
            }
        }
    }
    // The guide's list: the listed public keys in one row, comma separated.
    let mut row = Vec::new();
    for n in 1..=listed {
        let text = std::fs::read_to_string(keys.join(format!("client_credentials_{n}.pub")))?;
        row.push(
            text.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let allow_list = keys.join("allowed.csv");
    std::fs::write(&allow_list, format!("{}\n", row.join(",")))?;

    let file = |name: String| keys.join(name);
    Ok(AuthFiles {
        superlink: SuperLinkKeys {
            allow_list,
            private: file("server_credentials".into()),
            public: file("server_credentials.pub".into()),
        },
        supernodes: (1..=total)
            .map(|n| NodeKeys {
                private: file(format!("client_credentials_{n}")),
                public: file(format!("client_credentials_{n}.pub")),
            })
            .collect(),
    })
}

/// A scratch directory kept on failure so the process logs can be read.
pub fn scratch(name: &str) -> tempfile_like::Scratch {
    tempfile_like::Scratch::new(name)
}

/// Minimal scratch-directory handling without a tempfile dependency in the library.
pub mod tempfile_like {
    use super::PathBuf;

    /// A directory under the system temp dir, removed on drop unless the thread panicked.
    #[derive(Debug)]
    pub struct Scratch {
        path: PathBuf,
    }

    impl Scratch {
        /// Creates `<tmp>/flwr-interop-<name>-<pid>-<nanos>`.
        pub fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = std::env::temp_dir().join(format!(
                "flwr-interop-{name}-{}-{nanos}",
                std::process::id()
            ));
            let _ = std::fs::create_dir_all(&path);
            Self { path }
        }

        /// The directory.
        pub fn path(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("logs kept in {}", self.path.display());
            } else {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}

/// Kills, when dropped, every process whose `FLWR_HOME` is `home`.
///
/// A SuperLink that is killed (not stopped) cannot stop the ServerApp it launched in its own
/// process group; a test that crashes a SuperLink on purpose uses this to clean up after it.
#[derive(Debug)]
pub struct OrphanReaper {
    home: PathBuf,
}

impl OrphanReaper {
    /// Watches for processes started with `FLWR_HOME=home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    /// Kills them now; returns how many there were.
    pub fn reap(&self) -> usize {
        let wanted = format!("FLWR_HOME={}", self.home.display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut killed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
                killed += 1;
            }
        }
        killed
    }
}

impl Drop for OrphanReaper {
    fn drop(&mut self) {
        self.reap();
    }
}
