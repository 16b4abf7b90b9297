//! The shared secret of a SuperNode/SuperLink pair and the `auth-token` it produces (AUTH.md §5).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::AuthError;
use crate::header;
use crate::keys::{PrivateKey, PublicKey};

/// Length of the HMAC key: base64url with padding of 32 bytes.
const SECRET_TEXT_LEN: usize = 44;
/// Length of an HMAC-SHA256 tag.
pub(crate) const TOKEN_LEN: usize = 32;

/// The HMAC key shared by one SuperNode key and one SuperLink key.
///
/// Derive it once per peer key and keep it: [`SharedSecret::derive`] costs an ECDH scalar
/// multiplication, while [`Clone`] copies 44 bytes and [`SharedSecret::sign`] /
/// [`SharedSecret::verify`] cost a few SHA-256 blocks. The reference SuperLink repeats the ECDH
/// on every request (AUTH.md §5.3), which lets anyone who knows a listed public key burn its CPU.
///
/// The key is zeroized on drop and `Debug` does not show it. Each call builds its HMAC state
/// from the key (two extra SHA-256 blocks) instead of caching a precomputed state, because
/// `hmac` 0.12 cannot zeroize that state and it is as sensitive as the key.
#[derive(Clone)]
pub struct SharedSecret {
    /// The 44 ASCII bytes of `base64url_with_padding(okm)`.
    key: Zeroizing<[u8; SECRET_TEXT_LEN]>,
}

impl SharedSecret {
    /// Derives the secret of `private` (ours) and `public` (the peer's) like the reference's
    /// `generate_shared_key` (AUTH.md §5.1).
    ///
    /// # Errors
    ///
    /// [`AuthError::CurveMismatch`] if the keys are on different curves (the reference fails
    /// with "Error computing shared key." then).
    pub fn derive(private: &PrivateKey, public: &PublicKey) -> Result<Self, AuthError> {
        // z = ECDH(private, public): x-coordinate, big-endian, fixed length (32/48/66 bytes).
        let z = primitives::ecdh_x_coordinate(private, public)?;
        // okm = HKDF-SHA256(IKM = z, salt = none, info = empty, L = 32). RFC 5869 §2.2: an
        // absent salt is HashLen zero bytes.
        let mut okm = Zeroizing::new([0u8; 32]);
        primitives::hkdf_sha256(&z, None, &[], okm.as_mut())?;
        Ok(Self::from_hkdf_output(&okm))
    }

    /// Builds the secret from the 32-byte HKDF output `okm`.
    ///
    /// QUIRK (kept for interop): the reference returns `base64url_with_padding(okm)`, a
    /// Fernet-style 44-character text, and uses **those 44 ASCII bytes** as the HMAC key, not
    /// the 32 raw bytes. A token made with the raw bytes is rejected (vector
    /// `hmac_key_is_raw_hkdf_bytes_instead_of_base64url_text`).
    pub fn from_hkdf_output(okm: &[u8; 32]) -> Self {
        let text = Zeroizing::new(URL_SAFE.encode(okm));
        let mut key = Zeroizing::new([0u8; SECRET_TEXT_LEN]);
        // 32 bytes always encode to exactly 44 characters, so `zip` copies all of them.
        for (dst, src) in key.iter_mut().zip(text.as_bytes()) {
            *dst = *src;
        }
        Self { key }
    }

    /// The HMAC key bytes: the 44-character base64url text of the HKDF output. Secret.
    pub fn hmac_key(&self) -> &[u8] {
        self.key.as_slice()
    }

    /// Computes the `auth-token` for `message`, the canonical (deterministic) protobuf encoding
    /// of the request (AUTH.md §5.2, §6): `HMAC-SHA256(key = secret text, msg = message)`.
    pub fn sign(&self, message: &[u8]) -> Token {
        Token(primitives::hmac_sha256(self.hmac_key(), message))
    }

    /// Checks a received MAC over `message` in constant time. `mac` may have any length; only
    /// the correct 32-byte tag is accepted.
    pub fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
        // `verify_slice` compares in constant time (via `subtle`), never with `==`.
        primitives::hmac(self.hmac_key())
            .chain_update(message)
            .verify_slice(mac)
            .is_ok()
    }

    /// Starts a token over a message that arrives in pieces, e.g. canonical bytes streamed by
    /// the encoder instead of collected first. Feeding the pieces in order gives the same
    /// token as [`SharedSecret::sign`] over their concatenation.
    pub fn mac(&self) -> TokenMac {
        TokenMac(primitives::hmac(self.hmac_key()))
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// An `auth-token` being computed incrementally: [`SharedSecret::mac`], then
/// [`TokenMac::update`] per piece, then [`TokenMac::verify`] or [`TokenMac::finish`].
///
/// The keyed HMAC state is as sensitive as the secret, and `hmac` 0.12 cannot zeroize it, so the
/// type is neither `Clone` nor printable: it lives for one message and is consumed at the end.
pub struct TokenMac(Hmac<Sha256>);

impl TokenMac {
    /// Appends the next piece of the message.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Checks a received MAC over everything fed so far, in constant time. `mac` may have any
    /// length; only the correct 32-byte tag is accepted.
    pub fn verify(self, mac: &[u8]) -> bool {
        // `verify_slice` compares in constant time (via `subtle`), never with `==`.
        self.0.verify_slice(mac).is_ok()
    }

    /// The token over everything fed so far.
    pub fn finish(self) -> Token {
        Token(self.0.finalize().into_bytes().into())
    }
}

impl fmt::Debug for TokenMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenMac(<redacted>)")
    }
}

/// An HMAC-SHA256 tag, sent as the `auth-token` header.
///
/// Not secret in the cryptographic sense, but a bearer credential in practice: the reference
/// has no replay protection (AUTH.md §10), so `Debug` does not print it either. There is no
/// `PartialEq`; compare with [`SharedSecret::verify`], which runs in constant time.
#[derive(Clone, Copy)]
pub struct Token([u8; TOKEN_LEN]);

impl Token {
    /// Wraps a raw 32-byte tag.
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses an `auth-token` header value with the reference's base64 rules (AUTH.md §4).
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidBase64`] if the value does not decode (e.g. missing padding) and
    /// [`AuthError::InvalidTokenLength`] if it does not decode to 32 bytes.
    pub fn from_header(value: &str) -> Result<Self, AuthError> {
        let bytes = header::decode(value)?;
        let tag = <[u8; TOKEN_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            AuthError::InvalidTokenLength {
                length: bytes.len(),
            }
        })?;
        Ok(Self(tag))
    }

    /// The raw 32-byte tag.
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }

    /// The `auth-token` header value: base64url with padding, always 44 characters.
    pub fn header_value(&self) -> String {
        header::encode(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The individual steps of the key schedule, exposed for test vectors and for debugging interop
/// problems. Protocol code should use [`SharedSecret`].
pub mod primitives {
    use hkdf::Hkdf;
    use zeroize::Zeroizing;

    use hmac::{Hmac, Mac as _};
    use sha2::Sha256;

    use super::TOKEN_LEN;
    use crate::error::AuthError;
    use crate::keys::{PrivateKey, PublicKey};

    /// Elliptic-curve Diffie-Hellman (SEC 1 §3.3.1): the x-coordinate of `private * public`,
    /// big-endian and fixed length (32, 48 or 66 bytes), as `cryptography`'s `exchange(ECDH())`
    /// returns it.
    ///
    /// # Errors
    ///
    /// [`AuthError::CurveMismatch`] if the keys are on different curves.
    pub fn ecdh_x_coordinate(
        private: &PrivateKey,
        public: &PublicKey,
    ) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        private.diffie_hellman(public)
    }

    /// HKDF-SHA256 ([RFC 5869](https://www.rfc-editor.org/rfc/rfc5869)) extract-then-expand
    /// into `okm`. `salt = None` means HashLen (32) zero bytes (RFC 5869 §2.2).
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidHkdfLength`] if `okm` is longer than 255 * 32 bytes.
    pub fn hkdf_sha256(
        ikm: &[u8],
        salt: Option<&[u8]>,
        info: &[u8],
        okm: &mut [u8],
    ) -> Result<(), AuthError> {
        Hkdf::<Sha256>::new(salt, ikm)
            .expand(info, okm)
            .map_err(|_| AuthError::InvalidHkdfLength { length: okm.len() })
    }

    /// HMAC-SHA256 ([RFC 2104](https://www.rfc-editor.org/rfc/rfc2104),
    /// [RFC 4231](https://www.rfc-editor.org/rfc/rfc4231)) of `message` under `key`.
    pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; TOKEN_LEN] {
        hmac(key)
            .chain_update(message)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Incremental HMAC-SHA256 under an arbitrary `key`, for test vectors; protocol code uses
    /// [`SharedSecret::mac`](super::SharedSecret::mac).
    pub fn hmac_sha256_mac(key: &[u8]) -> super::TokenMac {
        super::TokenMac(hmac(key))
    }

    /// A fresh HMAC-SHA256 state keyed with `key`.
    #[allow(clippy::expect_used)] // Cannot fail, see the invariant below.
    pub(super) fn hmac(key: &[u8]) -> Hmac<Sha256> {
        // Invariant: HMAC takes keys of any length (RFC 2104 §2: long keys are hashed, short
        // ones padded); `new_from_slice` can only fail for MACs with a fixed key size.
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let secret = SharedSecret::from_hkdf_output(&[7; 32]);
        assert_eq!(format!("{secret:?}"), "SharedSecret(<redacted>)");
        assert_eq!(format!("{:?}", secret.sign(b"x")), "Token(<redacted>)");
        assert_eq!(format!("{:?}", secret.mac()), "TokenMac(<redacted>)");
    }

    #[test]
    fn secret_text_is_the_base64url_of_the_hkdf_output() {
        let secret = SharedSecret::from_hkdf_output(&[0xff; 32]);
        assert_eq!(
            secret.hmac_key(),
            b"__________________________________________8="
        );
    }

    #[test]
    fn token_length_is_checked() {
        assert!(matches!(
            Token::from_header("QUJD"),
            Err(AuthError::InvalidTokenLength { length: 3 })
        ));
    }
}
