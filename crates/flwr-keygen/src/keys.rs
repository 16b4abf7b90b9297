//! SuperNode authentication keys in the layout of Flower's authentication guide.

use std::path::Path;

use flwr_auth::{AuthError, Curve, PrivateKey};

use crate::files::{join, OutputFile};

/// The files for one SuperLink key pair and `supernodes` SuperNode key pairs, all ECDSA P-384
/// (what the guide's `ssh-keygen -t ecdsa -b 384` makes), plus the CSV allow-list that lists
/// every SuperNode public key, one per line.
///
/// # Errors
///
/// Only if a key cannot be serialized, which does not happen for freshly generated keys.
pub fn key_files(dir: &Path, supernodes: usize) -> Result<Vec<OutputFile>, AuthError> {
    let mut rng = rand::rngs::OsRng;
    let mut files = Vec::with_capacity(2 * supernodes + 3);
    let mut csv = String::new();
    let mut pair = |name: &str, files: &mut Vec<OutputFile>| -> Result<String, AuthError> {
        let private = PrivateKey::generate(Curve::P384, &mut rng);
        let public = private.public_key().to_openssh(name)?;
        files.push(OutputFile {
            path: join(dir, name),
            content: private.to_openssh(name)?.as_bytes().to_vec(),
            private: true,
        });
        files.push(OutputFile {
            path: join(dir, &format!("{name}.pub")),
            content: format!("{}\n", public.trim_end()).into_bytes(),
            private: false,
        });
        Ok(public)
    };
    pair("server_credentials", &mut files)?;
    for n in 1..=supernodes {
        let public = pair(&format!("client_credentials_{n}"), &mut files)?;
        // Only the key type and base64 body, as the guide's list has them.
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(body)) = (parts.next(), parts.next()) else {
            continue;
        };
        csv.push_str(&format!("{kind} {body}\n"));
    }
    files.push(OutputFile {
        path: join(dir, "client_public_keys.csv"),
        content: csv.into_bytes(),
        private: false,
    });
    Ok(files)
}
