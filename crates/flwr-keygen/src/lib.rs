//! Operator commands of flower-rs that are not servers: credentials for a federation.
//!
//! # Layout
//!
//! - [`keys`]: SuperNode authentication keys, the files `generate_auth_keys.sh` of Flower's
//!   authentication guide writes (`server_credentials{,.pub}`, `client_credentials_N{,.pub}`,
//!   `client_public_keys.csv`), as OpenSSH ECDSA P-384 keys;
//! - [`certs`]: a CA and a server certificate for the SuperLink's TLS
//!   (`ca.crt`, `server.pem`, `server.key`), replacing the guide's `openssl` script;
//! - [`files`]: writing a set of files all-or-nothing, never overwriting without `force` and
//!   never through a symlink, with private files at mode 0600 and new directories at 0700.
//!
//! The binaries `flower-keygen` and `flower-certgen` are thin wrappers around these.

pub mod certs;
pub mod files;
pub mod keys;
