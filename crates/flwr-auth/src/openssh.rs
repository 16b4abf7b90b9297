//! OpenSSH wire formats: the public key line, the key blob and the private key container.
//!
//! Reading follows what the reference's `cryptography` 42 loaders accept (AUTH.md §2.1, §2.2),
//! not what `ssh-key` accepts, because the two differ in details that matter for interop: any
//! base64 line width in the private container, scalars stored as minimal `mpint`s (OpenSSH drops
//! a leading zero byte, so a P-384 scalar can be 47 bytes long), and the line syntax of `.pub`
//! files and allow-list fields. Writing private keys is left to `ssh-key`.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::curve::Curve;
use crate::error::AuthError;
use crate::header::{decode_lenient, Alphabet};

/// Armour around the private key container, as written by `ssh-keygen`.
const PRIVATE_BEGIN: &[u8] = b"-----BEGIN OPENSSH PRIVATE KEY-----";
/// End of the private key armour.
const PRIVATE_END: &[u8] = b"-----END OPENSSH PRIVATE KEY-----";
/// Magic bytes at the start of the binary private key container (`PROTOCOL.key`).
const PRIVATE_MAGIC: &[u8] = b"openssh-key-v1\0";
/// SSH key types the reference loads and then rejects as "not an EC key".
const NON_EC_ALGORITHMS: [&str; 3] = ["ssh-dss", "ssh-ed25519", "ssh-rsa"];
/// Suffix of OpenSSH certificate key types (`ecdsa-sha2-nistp384-cert-v01@openssh.com`).
const CERT_SUFFIX: &[u8] = b"-cert-v01@openssh.com";
/// Longest padding the reference accepts at the end of the private section (its `_PADDING`).
const MAX_PADDING: usize = 16;

/// A validated EC public key as found in OpenSSH data: curve plus uncompressed SEC1 point.
#[derive(Debug)]
pub(crate) struct EcPoint {
    /// Curve named by the key type.
    pub(crate) curve: Curve,
    /// `04 || X || Y`, exactly [`Curve::uncompressed_point_len`] bytes (not yet checked to lie
    /// on the curve).
    pub(crate) point: Vec<u8>,
}

/// A private key read from the OpenSSH container: curve, point and big-endian scalar.
pub(crate) struct EcPrivate {
    /// Public half as stored in the file.
    pub(crate) public: EcPoint,
    /// Scalar, left-padded to [`Curve::field_len`] bytes.
    pub(crate) scalar: zeroize::Zeroizing<Vec<u8>>,
}

/// Parses an OpenSSH public key line (`ecdsa-sha2-nistp384 AAAA... comment`).
///
/// Reference rules (cryptography's `_load_ssh_public_identity`, AUTH.md §2.2), in order:
/// 1. the data must match `\A(\S+)[ \t]+(\S+)`: a type token at the very start, one or more
///    spaces/tabs, a base64 body; anything after the body is ignored;
/// 2. the type token must be a known key type, else "unsupported key type";
/// 3. the body is decoded with non-strict `binascii.a2b_base64`;
/// 4. the blob's inner type must equal the token, the key fields must parse, and nothing may
///    follow them.
///
/// Known non-EC types that pass all of this yield [`AuthError::NotEllipticCurve`]; everything
/// else that fails yields [`AuthError::InvalidPublicKey`].
pub(crate) fn parse_public_line(data: &[u8]) -> Result<EcPoint, AuthError> {
    let invalid = |reason: String| AuthError::InvalidPublicKey(reason);
    // Step 1: `\S` in a bytes regex is everything but ASCII whitespace.
    let token_len = data.iter().take_while(|b| !is_python_space(**b)).count();
    let (token, rest) = data.split_at(token_len);
    let gap = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &rest[gap..];
    let body_len = rest.iter().take_while(|b| !is_python_space(**b)).count();
    if token_len == 0 || gap == 0 || body_len == 0 {
        return Err(invalid(
            "invalid line format: expected '<key type> <base64>' at the start".into(),
        ));
    }
    let body = &rest[..body_len];

    // Step 2: classify the outer token before touching the body, like the reference.
    let curve = Curve::from_ssh_algorithm(token);
    let non_ec = NON_EC_ALGORITHMS
        .into_iter()
        .find(|name| name.as_bytes() == token);
    if curve.is_none() && non_ec.is_none() {
        let why = if token.ends_with(CERT_SUFFIX) {
            "certificates are not supported"
        } else {
            "unsupported key type"
        };
        return Err(invalid(format!("{why}: '{}'", token.escape_ascii())));
    }

    // Step 3.
    let blob = decode_lenient(body, Alphabet::Standard)
        .map_err(|e| invalid(format!("invalid base64 body: {e}")))?;

    // Step 4.
    if let Some(curve) = curve {
        let mut reader = Reader::new(&blob);
        let point = read_ec_blob(&mut reader, curve).map_err(|e| invalid(e.into()))?;
        if !reader.is_empty() {
            return Err(invalid("trailing data after the key blob".into()));
        }
        return Ok(point);
    }
    // A non-EC key: check that it really is a well-formed key of that type, so that garbage
    // stays "invalid" rather than "not EC".
    let algorithm = String::from_utf8_lossy(token).into_owned();
    match ssh_key::PublicKey::from_bytes(&blob) {
        Ok(key) if key.algorithm().as_str() == algorithm => {
            Err(AuthError::NotEllipticCurve { algorithm })
        }
        Ok(_) => Err(invalid(
            "key type inside the blob differs from the line".into(),
        )),
        Err(e) => Err(invalid(format!("malformed {algorithm} key blob: {e}"))),
    }
}

/// Reads the EC key fields of a blob: `string type, string curve id, string point`.
fn read_ec_blob(reader: &mut Reader<'_>, curve: Curve) -> Result<EcPoint, &'static str> {
    if reader.string()? != curve.ssh_algorithm().as_bytes() {
        return Err("key type inside the blob differs from the line");
    }
    read_ec_fields(reader, curve)
}

/// Reads `string curve id, string point` and checks them against `curve`.
fn read_ec_fields(reader: &mut Reader<'_>, curve: Curve) -> Result<EcPoint, &'static str> {
    if reader.string()? != curve.ssh_curve_id().as_bytes() {
        return Err("curve name mismatch");
    }
    let point = reader.string()?;
    // The reference refuses anything but an uncompressed point ("Need uncompressed point").
    if point.first() != Some(&0x04) || point.len() != curve.uncompressed_point_len() {
        return Err("expected an uncompressed point of the curve's size");
    }
    Ok(EcPoint {
        curve,
        point: point.to_vec(),
    })
}

/// Encodes the public key blob: `string type, string curve id, string point`.
pub(crate) fn encode_ec_blob(curve: Curve, point: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(4 + 19 + 4 + 8 + 4 + point.len());
    for field in [
        curve.ssh_algorithm().as_bytes(),
        curve.ssh_curve_id().as_bytes(),
        point,
    ] {
        // Field lengths are at most 133 bytes, far below u32::MAX.
        blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
        blob.extend_from_slice(field);
    }
    blob
}

/// Formats the public key line `<type> <base64 blob>[ <comment>]` followed by `\n`.
pub(crate) fn format_public_line(curve: Curve, point: &[u8], comment: &str) -> String {
    let mut line = format!(
        "{} {}",
        curve.ssh_algorithm(),
        STANDARD.encode(encode_ec_blob(curve, point))
    );
    if !comment.is_empty() {
        line.push(' ');
        line.push_str(comment);
    }
    line.push('\n');
    line
}

/// The SHA-256 fingerprint as `ssh-keygen -l` prints it: `SHA256:<base64 without padding>`.
pub(crate) fn fingerprint(curve: Curve, point: &[u8]) -> String {
    let digest = Sha256::digest(encode_ec_blob(curve, point));
    format!("SHA256:{}", STANDARD_NO_PAD.encode(digest))
}

/// Parses an unencrypted OpenSSH private key container holding one ECDSA key.
///
/// Reference algorithm (cryptography's `load_ssh_private_key`, AUTH.md §2.1):
/// 1. find `-----BEGIN OPENSSH PRIVATE KEY-----` ... `-----END OPENSSH PRIVATE KEY-----` anywhere
///    in the data and base64-decode what lies between (non-strict, so line width is free);
/// 2. magic `openssh-key-v1\0`, cipher, kdf, kdf options, key count (must be 1), public blob;
/// 3. the public blob's key type selects the format (unknown type: error);
/// 4. cipher or kdf other than `none`: passphrase-protected, which the reference refuses;
/// 5. private section: two equal check words, the same type, curve and point as the public
///    blob, the scalar as `mpint`, a comment and padding `1, 2, 3, ...` to a multiple of 8.
pub(crate) fn parse_private_container(data: &[u8]) -> Result<EcPrivate, AuthError> {
    let invalid = |reason: &str| AuthError::InvalidPrivateKey(reason.into());
    // Step 1.
    let Some(start) = find(data, PRIVATE_BEGIN) else {
        return Err(match pem_label(data) {
            Some(label) => AuthError::UnsupportedPrivateKeyFormat { label },
            None => invalid("no '-----BEGIN OPENSSH PRIVATE KEY-----' block found"),
        });
    };
    let body_start = start + PRIVATE_BEGIN.len();
    let Some(body_len) = find(&data[body_start..], PRIVATE_END) else {
        return Err(invalid("missing '-----END OPENSSH PRIVATE KEY-----'"));
    };
    let binary = zeroize::Zeroizing::new(
        decode_lenient(&data[body_start..body_start + body_len], Alphabet::Standard)
            .map_err(|e| AuthError::InvalidPrivateKey(format!("invalid base64: {e}")))?,
    );

    // Step 2.
    let mut reader = Reader::new(&binary);
    if reader.bytes(PRIVATE_MAGIC.len()).ok() != Some(PRIVATE_MAGIC) {
        return Err(invalid("not an OpenSSH private key container (bad magic)"));
    }
    let truncated = |_| invalid("truncated container");
    let cipher = reader.string().map_err(truncated)?;
    let kdf = reader.string().map_err(truncated)?;
    let _kdf_options = reader.string().map_err(truncated)?;
    if reader.u32().map_err(truncated)? != 1 {
        return Err(invalid("the container must hold exactly one key"));
    }
    let public_blob = reader.string().map_err(truncated)?;

    // Step 3.
    let mut public_reader = Reader::new(public_blob);
    let key_type = public_reader.string().map_err(truncated)?;
    let Some(curve) = Curve::from_ssh_algorithm(key_type) else {
        let algorithm = String::from_utf8_lossy(key_type).into_owned();
        if NON_EC_ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(AuthError::NotEllipticCurve { algorithm });
        }
        return Err(AuthError::InvalidPrivateKey(format!(
            "unsupported key type '{}'",
            key_type.escape_ascii()
        )));
    };
    let public = read_ec_fields(&mut public_reader, curve).map_err(invalid)?;
    if !public_reader.is_empty() {
        return Err(invalid("trailing data after the public key blob"));
    }

    // Step 4.
    if cipher != b"none" || kdf != b"none" {
        return Err(AuthError::EncryptedPrivateKey);
    }

    // Step 5.
    let section = reader.string().map_err(truncated)?;
    if !reader.is_empty() {
        return Err(invalid("trailing data after the private section"));
    }
    if section.len() % 8 != 0 {
        return Err(invalid(
            "private section is not a multiple of the block size",
        ));
    }
    let mut reader = Reader::new(section);
    if reader.u32().map_err(truncated)? != reader.u32().map_err(truncated)? {
        return Err(invalid("check words differ"));
    }
    if reader.string().map_err(truncated)? != curve.ssh_algorithm().as_bytes() {
        return Err(invalid("private key type differs from the public key type"));
    }
    let private_public = read_ec_fields(&mut reader, curve).map_err(invalid)?;
    if private_public.point != public.point {
        return Err(invalid("public point in the private section differs"));
    }
    let scalar = read_mpint_fixed(&mut reader, curve.field_len()).map_err(invalid)?;
    let _comment = reader.string().map_err(truncated)?;
    let padding = reader.rest();
    let padding_ok = padding.len() <= MAX_PADDING
        && padding
            .iter()
            .enumerate()
            .all(|(i, byte)| usize::from(*byte) == i + 1);
    if !padding_ok {
        return Err(invalid("invalid padding"));
    }
    Ok(EcPrivate { public, scalar })
}

/// Reads a non-negative `mpint` and left-pads it to `len` bytes.
///
/// OpenSSH writes minimal `mpint`s (a scalar with a leading zero byte is one byte shorter);
/// other writers, like `ssh-key`, keep the fixed width. Both are accepted, as in the reference.
fn read_mpint_fixed(
    reader: &mut Reader<'_>,
    len: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, &'static str> {
    let raw = reader.string()?;
    if raw.first().is_some_and(|b| b & 0x80 != 0) {
        return Err("negative private scalar");
    }
    let significant = &raw[raw.iter().take_while(|b| **b == 0).count()..];
    if significant.len() > len {
        return Err("private scalar too large for the curve");
    }
    let mut out = zeroize::Zeroizing::new(vec![0u8; len]);
    out[len - significant.len()..].copy_from_slice(significant);
    Ok(out)
}

/// ASCII whitespace as matched by `\s` in a Python bytes regex.
fn is_python_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The label of the first `-----BEGIN <label>-----` line, if the data has one.
fn pem_label(data: &[u8]) -> Option<String> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let start = find(data, BEGIN)? + BEGIN.len();
    let len = find(&data[start..], b"-----")?;
    let label = &data[start..start + len];
    (label.len() <= 64 && !label.contains(&b'\n'))
        .then(|| String::from_utf8_lossy(label).into_owned())
}

/// Cursor over SSH wire data (RFC 4251 §5: `uint32` big-endian, `string` length-prefixed).
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if self.data.len() < len {
            return Err("truncated data");
        }
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let bytes = self.bytes(4)?;
        let bytes = <[u8; 4]>::try_from(bytes).map_err(|_| "truncated data")?;
        Ok(u32::from_be_bytes(bytes))
    }

    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u32()?;
        let len = usize::try_from(len).map_err(|_| "truncated data")?;
        self.bytes(len)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
