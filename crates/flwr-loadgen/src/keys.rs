//! Node and SuperLink keys in `flower-keygen`'s layout, generated or read for many nodes at
//! once.
//!
//! The layout is the one of Flower's authentication guide, as `flwr_keygen::keys::key_files`
//! writes it: `DIR/server_credentials{,.pub}`, `DIR/client_credentials_N{,.pub}` (N from 1)
//! and `DIR/client_public_keys.csv`, ECDSA P-384 in OpenSSH format. `key_files` makes one key
//! after another; tens of thousands of P-384 keys take minutes that way, so
//! [`generate`] makes the same files on every core and writes them with
//! `flwr_keygen::files::write_all`, and [`load`] reads and checks them in parallel too (every
//! OpenSSH private key costs a scalar multiplication to check).

use std::fmt;
use std::path::{Path, PathBuf};

use flwr_auth::{AuthError, Curve, PrivateKey, PublicKey, SharedSecret};
use flwr_keygen::files::{OutputFile, WriteError};

use crate::parallel;

/// One simulated node's key pair.
pub struct NodeKey {
    /// The private key, for the shared secret.
    pub private: PrivateKey,
    /// The public key, sent in the `public-key` header.
    pub public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Private keys never go to logs.
        f.debug_struct("NodeKey")
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// The keys of one test: every node's pair and, when known, the SuperLink's public key.
#[derive(Debug)]
pub struct KeySet {
    /// `server_credentials.pub`, if the directory has it. The SuperLink also sends its key in
    /// the CreateNode response; this one lets the secrets be derived before registration.
    pub superlink: Option<PublicKey>,
    /// Node `i` is `client_credentials_{i + 1}`.
    pub nodes: Vec<NodeKey>,
}

/// Why keys could not be generated or read. The message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Generating or serializing a key failed.
    #[error("generating keys: {0}")]
    Generate(#[source] AuthError),
    /// A key file does not parse.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: AuthError,
    },
    /// A key file cannot be read.
    #[error("{}: {source}{hint}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
        /// What the missing file suggests, or empty.
        hint: &'static str,
    },
    /// Writing the generated files failed (or one exists already).
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Generates `nodes` node key pairs and a SuperLink key pair into `dir` (created if missing),
/// with the CSV allow-list of all node keys, and returns them.
///
/// # Errors
///
/// [`KeyError::Write`] when a file exists already (nothing is written then) or cannot be
/// written.
pub fn generate(dir: &Path, nodes: usize) -> Result<KeySet, KeyError> {
    let server = pair_files(dir, "server_credentials")?;
    let clients = parallel::map(nodes, |index| {
        pair_files(dir, &format!("client_credentials_{}", index + 1))
    })?;
    let mut csv = String::with_capacity(nodes * 200);
    let mut files = Vec::with_capacity(2 * nodes + 3);
    let mut keys = Vec::with_capacity(nodes);
    let server_public = server.key.public.clone();
    files.extend(server.files);
    for client in clients {
        // Only the key type and base64 body, as flower-keygen and the guide's list have them.
        let mut parts = client.public_line.split_whitespace();
        if let (Some(kind), Some(body)) = (parts.next(), parts.next()) {
            csv.push_str(&format!("{kind} {body}\n"));
        }
        files.extend(client.files);
        keys.push(client.key);
    }
    files.push(OutputFile {
        path: dir.join("client_public_keys.csv"),
        content: csv.into_bytes(),
        private: false,
    });
    write(&files)?;
    Ok(KeySet {
        superlink: Some(server_public),
        nodes: keys,
    })
}

/// Reads the first `nodes` node key pairs from the `flower-keygen` directory `dir`, and
/// `server_credentials.pub` if present.
///
/// # Errors
///
/// [`KeyError::Read`] / [`KeyError::Parse`] naming the first file that is missing or broken.
pub fn load(dir: &Path, nodes: usize) -> Result<KeySet, KeyError> {
    if !dir.is_dir() {
        return Err(KeyError::Read {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            hint: " (expected a flower-keygen keys directory)",
        });
    }
    let server_path = dir.join("server_credentials.pub");
    let superlink = if server_path.exists() {
        Some(parse_public(&server_path)?)
    } else {
        None
    };
    let nodes = parallel::map(nodes, |index| {
        let name = format!("client_credentials_{}", index + 1);
        let private_path = dir.join(&name);
        let private =
            PrivateKey::from_openssh(read(&private_path)?).map_err(|source| KeyError::Parse {
                path: private_path,
                source,
            })?;
        // The reference sends the `.pub` file's key (`--auth-supernode-public-key`), which is
        // also what the allow-list holds.
        let public = parse_public(&dir.join(format!("{name}.pub")))?;
        Ok::<_, KeyError>(NodeKey { private, public })
    })?;
    Ok(KeySet { superlink, nodes })
}

/// The secret of every node with `superlink`, derived on every core (ECDH is ~0.6 ms each).
///
/// # Errors
///
/// When a node key is on another curve than the SuperLink's.
pub fn derive_secrets(
    nodes: &[NodeKey],
    superlink: &PublicKey,
) -> Result<Vec<SharedSecret>, AuthError> {
    parallel::map(nodes.len(), |index| {
        SharedSecret::derive(&nodes[index].private, superlink)
    })
}

/// One generated key pair and its two files.
struct GeneratedPair {
    key: NodeKey,
    public_line: String,
    files: Vec<OutputFile>,
}

/// A fresh P-384 pair named `name`, serialized as `flwr_keygen::keys::key_files` does.
fn pair_files(dir: &Path, name: &str) -> Result<GeneratedPair, KeyError> {
    let private = PrivateKey::generate(Curve::P384, &mut rand::rngs::OsRng);
    let public = private.public_key();
    let public_line = public.to_openssh(name).map_err(KeyError::Generate)?;
    let private_text = private.to_openssh(name).map_err(KeyError::Generate)?;
    let files = vec![
        OutputFile {
            path: dir.join(name),
            content: private_text.as_bytes().to_vec(),
            private: true,
        },
        OutputFile {
            path: dir.join(format!("{name}.pub")),
            content: format!("{}\n", public_line.trim_end()).into_bytes(),
            private: false,
        },
    ];
    Ok(GeneratedPair {
        key: NodeKey { private, public },
        public_line,
        files,
    })
}

/// Writes all files, or none if one exists. `write_all` syncs every file; on every core at
/// once that takes seconds instead of minutes for 100 000 files.
fn write(files: &[OutputFile]) -> Result<(), KeyError> {
    if let Some(existing) = files.iter().find(|file| file.path.exists()) {
        return Err(WriteError::Exists(existing.path.clone()).into());
    }
    let chunk = files.len().div_ceil(parallel::threads()).max(1);
    let chunks: Vec<&[OutputFile]> = files.chunks(chunk).collect();
    // Existence was checked for all files above, so each chunk may overwrite (force).
    parallel::map(chunks.len(), |index| {
        flwr_keygen::files::write_all(chunks[index], true)
    })?;
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| {
        let hint = if source.kind() == std::io::ErrorKind::NotFound
            && path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("client_credentials_"))
        {
            " (the keys directory holds fewer node key pairs than --nodes)"
        } else {
            ""
        };
        KeyError::Read {
            path: path.to_owned(),
            source,
            hint,
        }
    })
}

fn parse_public(path: &Path) -> Result<PublicKey, KeyError> {
    PublicKey::from_openssh(read(path)?).map_err(|source| KeyError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use flwr_auth::AllowList;

    use super::*;

    #[test]
    fn generated_keys_have_flower_keygens_layout_and_load_back() {
        let ours = tempfile::tempdir().unwrap();
        let reference = tempfile::tempdir().unwrap();
        let generated = generate(ours.path(), 3).unwrap();
        let files = flwr_keygen::keys::key_files(reference.path(), 3).unwrap();
        flwr_keygen::files::write_all(&files, false).unwrap();

        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(ours.path()), names(reference.path()));

        let csv = std::fs::read_to_string(ours.path().join("client_public_keys.csv")).unwrap();
        let allowed = AllowList::parse(&csv).unwrap();
        assert_eq!(allowed.len(), 3);
        let loaded = load(ours.path(), 3).unwrap();
        for (made, read) in generated.nodes.iter().zip(&loaded.nodes) {
            assert_eq!(made.public, read.public);
            assert!(allowed.contains(&read.public.to_spki_pem()));
            assert!(read.private.matches(&read.public));
        }
        assert_eq!(generated.superlink, loaded.superlink);
        // flower-keygen's keys load the same way.
        assert_eq!(load(reference.path(), 3).unwrap().nodes.len(), 3);
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 1).unwrap();
        let error = generate(dir.path(), 2).unwrap_err().to_string();
        assert!(error.contains("already exists"), "{error}");
    }

    #[test]
    fn load_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 2).unwrap();
        let error = load(dir.path(), 3).unwrap_err().to_string();
        assert!(error.contains("client_credentials_3"), "{error}");
        assert!(error.contains("fewer node key pairs"), "{error}");
    }

    #[test]
    fn secrets_match_the_superlink_side() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generate(dir.path(), 2).unwrap();
        let server =
            PrivateKey::from_openssh(std::fs::read(dir.path().join("server_credentials")).unwrap())
                .unwrap();
        let secrets = derive_secrets(&keys.nodes, keys.superlink.as_ref().unwrap()).unwrap();
        for (node, secret) in keys.nodes.iter().zip(&secrets) {
            let theirs = SharedSecret::derive(&server, &node.public).unwrap();
            assert_eq!(secret.hmac_key(), theirs.hmac_key());
        }
    }
}
