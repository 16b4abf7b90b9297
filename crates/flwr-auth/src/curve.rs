//! The three NIST curves the reference accepts (AUTH.md §2.1, §5.4).

use std::fmt;

/// An elliptic curve usable for node authentication; both sides of a pair must use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Curve {
    /// NIST P-256 (secp256r1, `ecdsa-sha2-nistp256`).
    P256,
    /// NIST P-384 (secp384r1, `ecdsa-sha2-nistp384`); what `ssh-keygen -t ecdsa -b 384` makes
    /// and the recommended default.
    P384,
    /// NIST P-521 (secp521r1, `ecdsa-sha2-nistp521`).
    P521,
}

impl Curve {
    /// All supported curves, in ascending size.
    pub const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// The OpenSSH key type, e.g. `ecdsa-sha2-nistp384`.
    pub fn ssh_algorithm(self) -> &'static str {
        match self {
            Self::P256 => "ecdsa-sha2-nistp256",
            Self::P384 => "ecdsa-sha2-nistp384",
            Self::P521 => "ecdsa-sha2-nistp521",
        }
    }

    /// The OpenSSH curve identifier inside the key blob, e.g. `nistp384`.
    pub fn ssh_curve_id(self) -> &'static str {
        match self {
            Self::P256 => "nistp256",
            Self::P384 => "nistp384",
            Self::P521 => "nistp521",
        }
    }

    /// Size of a field element (and of the ECDH x-coordinate) in bytes: 32, 48 or 66.
    pub fn field_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// Looks a curve up by its OpenSSH key type (`ecdsa-sha2-nistp384`).
    pub(crate) fn from_ssh_algorithm(name: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|curve| curve.ssh_algorithm().as_bytes() == name)
    }

    /// Length of an uncompressed SEC1 point: `04 || X || Y`.
    pub(crate) fn uncompressed_point_len(self) -> usize {
        1 + 2 * self.field_len()
    }
}

impl fmt::Display for Curve {
    /// Formats as `P-256`, `P-384` or `P-521`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        })
    }
}
