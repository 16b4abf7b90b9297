//! The client side of a Fleet channel's TLS: what `--insecure` and `--root-certificates` mean
//! for the SuperNode and the load generator alike (CLI.md §2).

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Error};

/// How a channel to the SuperLink is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext (`--insecure`).
    Insecure,
    /// TLS trusting the PEM certificates of `--root-certificates`.
    RootCertificates(Vec<u8>),
    /// TLS trusting the system's certificate store.
    SystemRoots,
}

impl Tls {
    /// The URI scheme: `http` for plaintext, `https` otherwise.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Insecure => "http",
            Self::RootCertificates(_) | Self::SystemRoots => "https",
        }
    }

    /// An endpoint for `authority` (`host:port`, or an IP literal standing for the host) with
    /// this trust, checking the server's certificate against `host`.
    ///
    /// # Errors
    ///
    /// When `authority` is not a valid URI authority or the TLS settings are refused.
    pub fn endpoint(&self, authority: &str, host: &str) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(format!("{}://{authority}", self.scheme()))?;
        let config = match self {
            Self::Insecure => return Ok(endpoint),
            Self::RootCertificates(pem) => {
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            Self::SystemRoots => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint.tls_config(config.domain_name(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_http_and_tls_is_https() {
        let plain = Tls::Insecure
            .endpoint("127.0.0.1:9092", "127.0.0.1")
            .unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let pinned = Tls::RootCertificates(Vec::new())
            .endpoint("localhost:9092", "localhost")
            .unwrap();
        assert_eq!(pinned.uri().scheme_str(), Some("https"));
        assert!(Tls::Insecure.endpoint("bad host:1", "bad host").is_err());
    }
}
