//! TLS certificates and node-authentication keys for the demo federation, made with
//! [`flwr_keygen`] (the library behind `flower-certgen` and `flower-keygen`).
//!
//! Keys are made for `listed + 1` SuperNodes, but the allow-list names only the first
//! `listed`: the last key pair is the rogue's.

use std::path::{Path, PathBuf};

use flwr_keygen::files::{write_all, OutputFile};

use crate::error::DemoError;

/// Host names the SuperLink's certificate is valid for.
pub const HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];
/// Validity of the demo certificates, in days (they are thrown away with the work dir).
const VALIDITY_DAYS: i64 = 1;
/// File name of the allow-list that `flwr_keygen::keys::key_files` writes.
const ALLOW_LIST: &str = "client_public_keys.csv";

/// One SuperNode's key files.
#[derive(Clone, Debug)]
pub struct NodeKeys {
    /// OpenSSH private key (`--auth-supernode-private-key`).
    pub private: PathBuf,
    /// OpenSSH public key (`--auth-supernode-public-key`).
    pub public: PathBuf,
}

/// Every credential file of the federation.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The CA certificate (`--ssl-ca-certfile`, `--root-certificates`, Exec API trust).
    pub ca_cert: PathBuf,
    /// The SuperLink's certificate (`--ssl-certfile`).
    pub server_cert: PathBuf,
    /// The SuperLink's TLS key (`--ssl-keyfile`).
    pub server_key: PathBuf,
    /// The CSV allow-list (`--auth-list-public-keys`), naming only [`Credentials::supernodes`].
    pub allow_list: PathBuf,
    /// The SuperLink's private key (`--auth-superlink-private-key`).
    pub superlink_private: PathBuf,
    /// The SuperLink's public key (`--auth-superlink-public-key`).
    pub superlink_public: PathBuf,
    /// The listed SuperNodes' keys, in partition order.
    pub supernodes: Vec<NodeKeys>,
    /// The unlisted key pair.
    pub rogue: NodeKeys,
}

/// Writes certificates to `dir/certs` and keys to `dir/keys` (overwriting earlier ones).
///
/// # Errors
///
/// When generation or writing fails.
pub fn generate(dir: &Path, listed: usize) -> Result<Credentials, DemoError> {
    let certs_dir = dir.join("certs");
    let keys_dir = dir.join("keys");
    let hosts: Vec<String> = HOSTS.iter().map(|&h| h.to_owned()).collect();
    let certs = flwr_keygen::certs::certificate_files(&certs_dir, &hosts, VALIDITY_DAYS)?;
    write_all(&certs, true)?;

    let mut keys = flwr_keygen::keys::key_files(&keys_dir, listed + 1)?;
    if let Some(csv) = keys.iter_mut().find(|f| f.path.ends_with(ALLOW_LIST)) {
        restrict_allow_list(csv, listed);
    }
    write_all(&keys, true)?;

    let pair = |n: usize| NodeKeys {
        private: keys_dir.join(format!("client_credentials_{n}")),
        public: keys_dir.join(format!("client_credentials_{n}.pub")),
    };
    Ok(Credentials {
        ca_cert: certs_dir.join("ca.crt"),
        server_cert: certs_dir.join("server.pem"),
        server_key: certs_dir.join("server.key"),
        allow_list: keys_dir.join(ALLOW_LIST),
        superlink_private: keys_dir.join("server_credentials"),
        superlink_public: keys_dir.join("server_credentials.pub"),
        supernodes: (1..=listed).map(pair).collect(),
        rogue: pair(listed + 1),
    })
}

/// Keeps the first `listed` lines of the allow-list (one public key per line, in key order).
fn restrict_allow_list(csv: &mut OutputFile, listed: usize) {
    let text = String::from_utf8_lossy(&csv.content);
    let kept: String = text
        .lines()
        .take(listed)
        .map(|line| format!("{line}\n"))
        .collect();
    csv.content = kept.into_bytes();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rogue_key_is_not_listed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let credentials = generate(dir.path(), 2).expect("generates");
        let csv = std::fs::read_to_string(&credentials.allow_list).expect("csv");
        assert_eq!(csv.lines().count(), 2, "{csv}");
        let body = |path: &Path| {
            let text = std::fs::read_to_string(path).expect("public key");
            text.split_whitespace().nth(1).expect("body").to_owned()
        };
        for node in &credentials.supernodes {
            assert!(csv.contains(&body(&node.public)));
            assert!(node.private.is_file());
        }
        assert!(!csv.contains(&body(&credentials.rogue.public)));
        for file in [
            &credentials.ca_cert,
            &credentials.server_cert,
            &credentials.server_key,
            &credentials.superlink_private,
            &credentials.superlink_public,
        ] {
            assert!(file.is_file(), "{}", file.display());
        }
        // Regenerating into the same directory (a kept --work-dir) works.
        generate(dir.path(), 2).expect("regenerates");
    }
}
