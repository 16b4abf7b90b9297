//! A certificate authority and a SuperLink server certificate.

use std::{net::IpAddr, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::files::{join, OutputFile};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// No host name or address was given.
    #[error("at least one host name or IP address is needed")]
    NoHosts,
    /// A host name is not a valid DNS name.
    #[error("invalid host name {0:?}")]
    InvalidHost(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// `ca.crt`, `ca.key`, `server.pem` and `server.key` for a server reachable under `hosts`
/// (DNS names or IP addresses), valid for `days` days.
///
/// # Errors
///
/// When `hosts` is empty or holds an invalid DNS name.
pub fn certificate_files(
    dir: &Path,
    hosts: &[String],
    days: i64,
) -> Result<Vec<OutputFile>, CertError> {
    let first = hosts.first().ok_or(CertError::NoHosts)?;
    let now = OffsetDateTime::now_utc();
    // A day of slack so a peer whose clock is slightly behind accepts it at once.
    let (not_before, not_after) = (now - Duration::days(1), now + Duration::days(days.max(1)));

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flower-rs CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::default();
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_dns_name(host) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|_| CertError::InvalidHost(host.clone()))?,
            ),
            Err(_) => return Err(CertError::InvalidHost(host.clone())),
        };
        server.subject_alt_names.push(san);
    }
    server
        .distinguished_name
        .push(DnType::CommonName, first.as_str());
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key)?;

    let file = |name: &str, content: String, private: bool| OutputFile {
        path: join(dir, name),
        content: content.into_bytes(),
        private,
    };
    Ok(vec![
        file("ca.crt", ca_cert.pem(), false),
        file("ca.key", ca_key.serialize_pem(), true),
        file("server.pem", server_cert.pem(), false),
        file("server.key", server_key.serialize_pem(), true),
    ])
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::is_dns_name;

    #[test]
    fn dns_names() {
        for good in ["localhost", "superlink.example", "a-b.c1", "x."] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in ["", "bad host!", "-a", "a-", "a..b", "a_b", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
