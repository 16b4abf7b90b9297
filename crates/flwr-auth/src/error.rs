//! The crate's error type.

use crate::curve::Curve;
use crate::header::Base64Error;

/// Everything that can go wrong when reading keys, deriving secrets or decoding headers.
///
/// Messages are for logs and operators. A SuperLink must still answer every authentication
/// failure with the same `UNAUTHENTICATED` "Access denied" (AUTH.md §7).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The private and public key are on different curves, so ECDH is impossible. The reference
    /// raises "Error computing shared key." here (AUTH.md §5.4).
    #[error("curve mismatch: private key is on {private}, public key is on {public}")]
    CurveMismatch {
        /// Curve of the local private key.
        private: Curve,
        /// Curve of the peer's public key.
        public: Curve,
    },
    /// A key could not be written in the requested format (not expected for valid keys).
    #[error("cannot encode key: {0}")]
    EncodeKey(String),
    /// The OpenSSH private key is protected by a passphrase; the reference loads keys with
    /// `password=None`, so it rejects these too.
    #[error("private key is passphrase-protected; only unencrypted keys are supported")]
    EncryptedPrivateKey,
    /// A header value is not valid base64 under the reference's rules (AUTH.md §4).
    #[error("invalid base64: {0}")]
    InvalidBase64(Base64Error),
    /// A key comment to be written contains a line break, which would split the key line.
    #[error("key comment must not contain line breaks")]
    InvalidComment,
    /// A method path to bind a hardened token to contains NUL, the separator of the MAC input
    /// ([`crate::hardened::Binding`]).
    #[error("method path contains NUL")]
    InvalidMethodPath,
    /// A requested HKDF output length exceeds 255 hash lengths (RFC 5869 §2.3).
    #[error("hkdf output length {length} exceeds 8160 bytes")]
    InvalidHkdfLength {
        /// The requested length in bytes.
        length: usize,
    },
    /// The data is not a well-formed unencrypted OpenSSH ECDSA private key.
    #[error("invalid private key: {0}")]
    InvalidPrivateKey(String),
    /// The data is not a well-formed public key (OpenSSH line or canonical PEM SPKI).
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// A decoded `auth-token` does not have the 32 bytes of an HMAC-SHA256 tag.
    #[error("auth token must be 32 bytes, got {length}")]
    InvalidTokenLength {
        /// Decoded length in bytes.
        length: usize,
    },
    /// The key is a valid SSH key of a non-elliptic-curve type (`ssh-ed25519`, `ssh-rsa`,
    /// `ssh-dss`); the reference loads these and then rejects them.
    #[error("not an elliptic-curve key: {algorithm}")]
    NotEllipticCurve {
        /// The OpenSSH key type, e.g. `ssh-ed25519`.
        algorithm: String,
    },
    /// The private key is in a PEM form (`EC PRIVATE KEY`, `PRIVATE KEY`, ...) instead of the
    /// OpenSSH container, which is the only one the reference parses.
    #[error(
        "unsupported private key format '{label}': expected '-----BEGIN OPENSSH PRIVATE KEY-----'"
    )]
    UnsupportedPrivateKeyFormat {
        /// The PEM label found, e.g. `EC PRIVATE KEY`.
        label: String,
    },
}

// Not `#[from]`: the message already includes the cause, and marking it as the source too would
// print it twice in `{:#}` chains.
impl From<Base64Error> for AuthError {
    fn from(error: Base64Error) -> Self {
        Self::InvalidBase64(error)
    }
}
