//! EC key pairs: reading OpenSSH files, the canonical PEM SPKI bytes, and writing key files.

use std::fmt;
use std::hash::{Hash, Hasher};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use p256::elliptic_curve::rand_core::CryptoRngCore;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use zeroize::Zeroizing;

use crate::curve::Curve;
use crate::error::AuthError;
use crate::header;
use crate::openssh;

/// First line of the canonical public key PEM.
const SPKI_PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----\n";
/// Last line of the canonical public key PEM, including the final newline.
const SPKI_PEM_END: &str = "-----END PUBLIC KEY-----\n";
/// Characters of base64 per PEM line (RFC 7468 §2; what OpenSSL writes).
const SPKI_PEM_LINE: usize = 64;

/// DER of `SubjectPublicKeyInfo` up to the point: `SEQUENCE { SEQUENCE { id-ecPublicKey,
/// namedCurve }, BIT STRING (0 unused bits)` whose contents are the uncompressed point.
fn spki_der_prefix(curve: Curve) -> &'static [u8] {
    match curve {
        // 30 59 | 30 13 06 07 2a8648ce3d0201 06 08 2a8648ce3d030107 | 03 42 00
        Curve::P256 => &[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ],
        // 30 76 | 30 10 06 07 2a8648ce3d0201 06 05 2b81040022 | 03 62 00
        Curve::P384 => &[
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
        ],
        // 30 81 9b | 30 10 06 07 2a8648ce3d0201 06 05 2b81040023 | 03 81 86 00
        Curve::P521 => &[
            0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
            0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00,
        ],
    }
}

/// An EC public key on one of the supported curves.
///
/// Equality compares the curve and point. The canonical byte form that the protocol sends and
/// compares is [`PublicKey::to_spki_pem`].
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    inner: PublicInner,
}

/// Curve-specific public key; construction validates that the point is on the curve.
#[derive(Clone, PartialEq, Eq)]
enum PublicInner {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

impl PublicKey {
    /// Parses an OpenSSH public key line (`ecdsa-sha2-nistp384 AAAA... [comment]`), e.g. the
    /// contents of a `.pub` file or one allow-list field, with the reference's rules
    /// (AUTH.md §2.2): the type token at the very start, spaces/tabs, base64; the type inside
    /// the blob must equal the token; the rest of the data is ignored.
    ///
    /// # Errors
    ///
    /// [`AuthError::NotEllipticCurve`] for a well-formed `ssh-ed25519`, `ssh-rsa` or `ssh-dss`
    /// key, [`AuthError::InvalidPublicKey`] for anything else that is not a valid EC key.
    pub fn from_openssh(data: impl AsRef<[u8]>) -> Result<Self, AuthError> {
        let parsed = openssh::parse_public_line(data.as_ref())?;
        Self::from_sec1(parsed.curve, &parsed.point)
    }

    /// Parses the canonical PEM SPKI bytes of [`PublicKey::to_spki_pem`], and nothing else.
    ///
    /// Strict on purpose: the reference compares these bytes exactly, so a PEM with CRLF,
    /// another line width, a missing final newline or a compressed point would not match the
    /// allow-list anyway (AUTH.md §2.3).
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidPublicKey`] if the bytes are not the canonical encoding of an EC
    /// public key on a supported curve.
    pub fn from_spki_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let invalid = |reason: &str| AuthError::InvalidPublicKey(reason.into());
        let body = pem
            .strip_prefix(SPKI_PEM_BEGIN.as_bytes())
            .and_then(|rest| rest.strip_suffix(SPKI_PEM_END.as_bytes()))
            .ok_or_else(|| invalid("not a PEM public key"))?;
        let base64: Vec<u8> = body.iter().copied().filter(|b| *b != b'\n').collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|_| invalid("invalid base64 in PEM public key"))?;
        let (curve, point) = Curve::ALL
            .into_iter()
            .find_map(|curve| Some((curve, der.strip_prefix(spki_der_prefix(curve))?)))
            .ok_or_else(|| invalid("not an EC SubjectPublicKeyInfo on a supported curve"))?;
        let key = Self::from_sec1(curve, point)?;
        // Re-encoding catches every non-canonical detail (line width, missing newline, ...).
        if key.to_spki_pem() != pem {
            return Err(invalid("PEM public key is not in canonical form"));
        }
        Ok(key)
    }

    /// Parses a `public-key` header value: Python-compatible base64url (AUTH.md §4), then
    /// [`PublicKey::from_spki_pem`].
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidBase64`] for undecodable values (including missing padding),
    /// [`AuthError::InvalidPublicKey`] if the decoded bytes are not a canonical PEM key.
    pub fn from_header(value: &str) -> Result<Self, AuthError> {
        Self::from_spki_pem(&header::decode(value)?)
    }

    /// The curve this key is on.
    pub fn curve(&self) -> Curve {
        match self.inner {
            PublicInner::P256(_) => Curve::P256,
            PublicInner::P384(_) => Curve::P384,
            PublicInner::P521(_) => Curve::P521,
        }
    }

    /// The uncompressed SEC1 point `04 || X || Y`.
    pub fn to_sec1_bytes(&self) -> Vec<u8> {
        match &self.inner {
            PublicInner::P256(key) => key.to_encoded_point(false).as_bytes().to_vec(),
            PublicInner::P384(key) => key.to_encoded_point(false).as_bytes().to_vec(),
            PublicInner::P521(key) => key.to_encoded_point(false).as_bytes().to_vec(),
        }
    }

    /// DER `SubjectPublicKeyInfo` with the named curve and the uncompressed point (91, 120 or
    /// 158 bytes).
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = spki_der_prefix(self.curve()).to_vec();
        der.extend_from_slice(&self.to_sec1_bytes());
        der
    }

    /// The canonical public key bytes that are sent, stored and compared (AUTH.md §2.3).
    ///
    /// Byte-identical to the reference's `public_bytes(PEM, SubjectPublicKeyInfo)`:
    /// `-----BEGIN PUBLIC KEY-----`, base64 of [`PublicKey::to_spki_der`] in lines of 64
    /// characters, `-----END PUBLIC KEY-----`, every line ending in `\n`.
    pub fn to_spki_pem(&self) -> Vec<u8> {
        let base64 = STANDARD.encode(self.to_spki_der());
        let mut pem = String::with_capacity(base64.len() + base64.len() / SPKI_PEM_LINE + 52);
        pem.push_str(SPKI_PEM_BEGIN);
        // `base64` is ASCII, so byte chunks are valid UTF-8 on their own.
        for line in base64.as_bytes().chunks(SPKI_PEM_LINE) {
            pem.extend(line.iter().map(|b| char::from(*b)));
            pem.push('\n');
        }
        pem.push_str(SPKI_PEM_END);
        pem.into_bytes()
    }

    /// The `public-key` header value: base64url with padding of [`PublicKey::to_spki_pem`].
    pub fn header_value(&self) -> String {
        header::encode(&self.to_spki_pem())
    }

    /// The OpenSSH public key line (`ecdsa-sha2-nistp384 AAAA... comment`) ending in `\n`,
    /// i.e. the contents of a `.pub` file that `ssh-keygen -l -f` reads.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidComment`] if `comment` contains a line break.
    pub fn to_openssh(&self, comment: &str) -> Result<String, AuthError> {
        check_comment(comment)?;
        Ok(openssh::format_public_line(
            self.curve(),
            &self.to_sec1_bytes(),
            comment,
        ))
    }

    /// The SHA-256 fingerprint of the OpenSSH key blob, `SHA256:<base64 without padding>`, as
    /// `ssh-keygen -l` prints it; meant for logs.
    pub fn fingerprint(&self) -> String {
        openssh::fingerprint(self.curve(), &self.to_sec1_bytes())
    }

    /// Builds a key from an uncompressed point, checking that it lies on `curve`.
    fn from_sec1(curve: Curve, point: &[u8]) -> Result<Self, AuthError> {
        let off_curve = |_| AuthError::InvalidPublicKey("point is not on the curve".into());
        let inner = match curve {
            Curve::P256 => {
                PublicInner::P256(p256::PublicKey::from_sec1_bytes(point).map_err(off_curve)?)
            }
            Curve::P384 => {
                PublicInner::P384(p384::PublicKey::from_sec1_bytes(point).map_err(off_curve)?)
            }
            Curve::P521 => {
                PublicInner::P521(p521::PublicKey::from_sec1_bytes(point).map_err(off_curve)?)
            }
        };
        let key = Self { inner };
        // `from_sec1_bytes` also takes compressed points; the protocol only knows uncompressed.
        if key.to_sec1_bytes() != point {
            return Err(AuthError::InvalidPublicKey(
                "expected an uncompressed point".into(),
            ));
        }
        Ok(key)
    }
}

impl Hash for PublicKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.curve().hash(state);
        self.to_sec1_bytes().hash(state);
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("curve", &self.curve())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// An EC private key; the scalar is zeroized on drop and never printed.
#[derive(Clone)]
pub struct PrivateKey {
    inner: PrivateInner,
}

/// Curve-specific secret key (the `SecretKey` types zeroize themselves on drop).
#[derive(Clone)]
enum PrivateInner {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

impl PrivateKey {
    /// Parses an unencrypted OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`)
    /// holding an ECDSA key on P-256, P-384 or P-521, like the reference (AUTH.md §2.1).
    ///
    /// Stricter than the reference in one way: the public point stored in the file must belong
    /// to the scalar (the reference silently recomputes it).
    ///
    /// # Errors
    ///
    /// * [`AuthError::NotEllipticCurve`] for `ssh-ed25519`, `ssh-rsa` and `ssh-dss` keys;
    /// * [`AuthError::EncryptedPrivateKey`] for passphrase-protected keys;
    /// * [`AuthError::UnsupportedPrivateKeyFormat`] for PEM forms such as `EC PRIVATE KEY`
    ///   (`ssh-keygen -m PEM`) or PKCS#8 `PRIVATE KEY`;
    /// * [`AuthError::InvalidPrivateKey`] for anything else that is malformed.
    pub fn from_openssh(data: impl AsRef<[u8]>) -> Result<Self, AuthError> {
        let parsed = openssh::parse_private_container(data.as_ref())?;
        let scalar = parsed.scalar.as_slice();
        let out_of_range = |_| AuthError::InvalidPrivateKey("private scalar out of range".into());
        // `from_slice` accepts exactly the field size, which `parse_private_container` ensures.
        let inner = match parsed.public.curve {
            Curve::P256 => {
                PrivateInner::P256(p256::SecretKey::from_slice(scalar).map_err(out_of_range)?)
            }
            Curve::P384 => {
                PrivateInner::P384(p384::SecretKey::from_slice(scalar).map_err(out_of_range)?)
            }
            Curve::P521 => {
                PrivateInner::P521(p521::SecretKey::from_slice(scalar).map_err(out_of_range)?)
            }
        };
        let key = Self { inner };
        if key.public_key().to_sec1_bytes() != parsed.public.point {
            return Err(AuthError::InvalidPrivateKey(
                "public key in the file does not belong to the private scalar".into(),
            ));
        }
        Ok(key)
    }

    /// Generates a fresh key on `curve` from `rng` (use a CSPRNG such as `rand::rngs::OsRng`).
    pub fn generate(curve: Curve, rng: &mut impl CryptoRngCore) -> Self {
        let inner = match curve {
            Curve::P256 => PrivateInner::P256(p256::SecretKey::random(rng)),
            Curve::P384 => PrivateInner::P384(p384::SecretKey::random(rng)),
            Curve::P521 => PrivateInner::P521(p521::SecretKey::random(rng)),
        };
        Self { inner }
    }

    /// The curve this key is on.
    pub fn curve(&self) -> Curve {
        match self.inner {
            PrivateInner::P256(_) => Curve::P256,
            PrivateInner::P384(_) => Curve::P384,
            PrivateInner::P521(_) => Curve::P521,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let inner = match &self.inner {
            PrivateInner::P256(key) => PublicInner::P256(key.public_key()),
            PrivateInner::P384(key) => PublicInner::P384(key.public_key()),
            PrivateInner::P521(key) => PublicInner::P521(key.public_key()),
        };
        PublicKey { inner }
    }

    /// Whether `public` is this key's public half. The reference never checks this (AUTH.md
    /// §1.1); a mismatched SuperLink key pair makes every authenticated call fail.
    pub fn matches(&self, public: &PublicKey) -> bool {
        self.public_key() == *public
    }

    /// The secret scalar, big-endian, left-padded to the field size (32, 48 or 66 bytes).
    ///
    /// Secret material: for test vectors and key inspection only.
    pub fn to_scalar_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match &self.inner {
            PrivateInner::P256(key) => key.to_bytes().to_vec(),
            PrivateInner::P384(key) => key.to_bytes().to_vec(),
            PrivateInner::P521(key) => key.to_bytes().to_vec(),
        })
    }

    /// The OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`, unencrypted, LF line
    /// endings) that `ssh-keygen` and the reference read.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidComment`] if `comment` contains a line break;
    /// [`AuthError::EncodeKey`] if `ssh-key` cannot encode the key.
    pub fn to_openssh(&self, comment: &str) -> Result<Zeroizing<String>, AuthError> {
        use ssh_key::private::{EcdsaKeypair, KeypairData};

        check_comment(comment)?;
        let keypair = match &self.inner {
            PrivateInner::P256(key) => EcdsaKeypair::NistP256 {
                public: key.public_key().to_encoded_point(false),
                private: key.clone().into(),
            },
            PrivateInner::P384(key) => EcdsaKeypair::NistP384 {
                public: key.public_key().to_encoded_point(false),
                private: key.clone().into(),
            },
            PrivateInner::P521(key) => EcdsaKeypair::NistP521 {
                public: key.public_key().to_encoded_point(false),
                private: key.clone().into(),
            },
        };
        let encode_failed = |e: ssh_key::Error| AuthError::EncodeKey(e.to_string());
        ssh_key::PrivateKey::new(KeypairData::Ecdsa(keypair), comment)
            .and_then(|key| key.to_openssh(ssh_key::LineEnding::LF))
            .map_err(encode_failed)
    }

    /// The key as unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form in which the
    /// reference stores the SuperLink key in its LinkState (AUTH.md §8).
    ///
    /// # Errors
    ///
    /// [`AuthError::EncodeKey`] if the PKCS#8 encoder fails.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, AuthError> {
        let pem = match &self.inner {
            PrivateInner::P256(key) => key.to_pkcs8_pem(LineEnding::LF),
            PrivateInner::P384(key) => key.to_pkcs8_pem(LineEnding::LF),
            PrivateInner::P521(key) => key.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map_err(|e| AuthError::EncodeKey(format!("PKCS#8: {e}")))
    }

    /// ECDH with `public`: the x-coordinate of the shared point, fixed length, big-endian.
    pub(crate) fn diffie_hellman(
        &self,
        public: &PublicKey,
    ) -> Result<Zeroizing<Vec<u8>>, AuthError> {
        use p256::elliptic_curve::ecdh::diffie_hellman;

        let shared = match (&self.inner, &public.inner) {
            (PrivateInner::P256(ours), PublicInner::P256(theirs)) => {
                diffie_hellman(ours.to_nonzero_scalar(), theirs.as_affine())
                    .raw_secret_bytes()
                    .to_vec()
            }
            (PrivateInner::P384(ours), PublicInner::P384(theirs)) => {
                diffie_hellman(ours.to_nonzero_scalar(), theirs.as_affine())
                    .raw_secret_bytes()
                    .to_vec()
            }
            (PrivateInner::P521(ours), PublicInner::P521(theirs)) => {
                diffie_hellman(ours.to_nonzero_scalar(), theirs.as_affine())
                    .raw_secret_bytes()
                    .to_vec()
            }
            _ => {
                return Err(AuthError::CurveMismatch {
                    private: self.curve(),
                    public: public.curve(),
                })
            }
        };
        Ok(Zeroizing::new(shared))
    }
}

impl fmt::Debug for PrivateKey {
    /// Prints the curve and the public fingerprint, never the scalar.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("curve", &self.curve())
            .field("public", &self.public_key().fingerprint())
            .finish_non_exhaustive()
    }
}

/// Generates a key pair on `curve` with the operating system's CSPRNG, e.g. for a key
/// generation command that then writes [`PrivateKey::to_openssh`] and
/// [`PublicKey::to_openssh`] to files.
pub fn generate_keypair(curve: Curve) -> (PrivateKey, PublicKey) {
    let private = PrivateKey::generate(curve, &mut rand::rngs::OsRng);
    let public = private.public_key();
    (private, public)
}

/// Rejects comments that would break the one-line OpenSSH formats.
fn check_comment(comment: &str) -> Result<(), AuthError> {
    if comment.contains(['\n', '\r']) {
        return Err(AuthError::InvalidComment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};

    use super::*;

    #[test]
    fn spki_der_matches_the_pkcs8_encoder() {
        for curve in Curve::ALL {
            let (private, public) = generate_keypair(curve);
            let expected = match &private.inner {
                PrivateInner::P256(key) => key.public_key().to_public_key_der(),
                PrivateInner::P384(key) => key.public_key().to_public_key_der(),
                PrivateInner::P521(key) => key.public_key().to_public_key_der(),
            };
            assert_eq!(
                public.to_spki_der(),
                expected.unwrap().as_bytes(),
                "{curve}"
            );
        }
    }

    #[test]
    fn pkcs8_pem_round_trips() {
        let (private, _) = generate_keypair(Curve::P384);
        let pem = private.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = p384::SecretKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.to_bytes().to_vec(), *private.to_scalar_bytes());
    }

    #[test]
    fn debug_never_prints_the_scalar() {
        let (private, _) = generate_keypair(Curve::P256);
        let debug = format!("{private:?}");
        let scalar_hex: String = private
            .to_scalar_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!debug.contains(&scalar_hex));
        assert!(debug.contains("SHA256:"));
    }

    #[test]
    fn compressed_points_are_rejected() {
        let (_, public) = generate_keypair(Curve::P256);
        let sec1 = public.to_sec1_bytes();
        let mut compressed = vec![0x02 | (sec1[64] & 1)];
        compressed.extend_from_slice(&sec1[1..33]);
        assert!(PublicKey::from_sec1(Curve::P256, &compressed).is_err());
    }
}
