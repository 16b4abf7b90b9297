//! `host:port` addresses, parsed the way the reference does (PROTOCOL.md §2.2).
//!
//! The text is split at the *last* `:`; the port must be an integer from 1 to 65535; `[` and `]`
//! are removed from the host; an IPv6 literal is written back as `[host]:port`; any other host is
//! kept as a DNS name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The host part of an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (kept verbatim).
    Domain(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
}

/// A parsed `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP literal.
    pub host: Host,
    /// Port, 1 to 65535.
    pub port: u16,
}

/// The text is not `host:port` with a port from 1 to 65535.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("address ({0}) cannot be parsed")]
pub struct AddressError(pub String);

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || AddressError(text.to_owned());
        let (raw_host, raw_port) = text.rsplit_once(':').ok_or_else(fail)?;
        let port: u16 = raw_port.trim().parse().map_err(|_| fail())?;
        if port == 0 {
            return Err(fail());
        }
        let stripped: String = raw_host
            .chars()
            .filter(|c| *c != '[' && *c != ']')
            .collect();
        let host = match stripped.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Domain(raw_host.to_owned()),
        };
        Ok(Self { host, port })
    }
}

impl Address {
    /// The host as text, without brackets (what TLS verifies the certificate against).
    pub fn host_text(&self) -> String {
        match &self.host {
            Host::Domain(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    /// The address a client on this machine should dial for a server bound here: the wildcard
    /// `0.0.0.0` becomes `127.0.0.1` (what the reference passes to `flwr-clientapp`).
    pub fn for_local_client(&self) -> Self {
        match self.host {
            Host::Ip(IpAddr::V4(ip)) if ip.is_unspecified() => Self {
                host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: self.port,
            },
            _ => self.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Domain(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reference_forms() {
        let a: Address = "127.0.0.1:9092".parse().unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:9092");
        let a: Address = "[::1]:9092".parse().unwrap();
        assert_eq!(a.to_string(), "[::1]:9092");
        assert_eq!(a.host_text(), "::1");
        let a: Address = "localhost:1".parse().unwrap();
        assert_eq!(a.host, Host::Domain("localhost".into()));
        let a: Address = "0.0.0.0:9094".parse().unwrap();
        assert_eq!(a.for_local_client().to_string(), "127.0.0.1:9094");
        let a: Address = "10.0.0.2:9094".parse().unwrap();
        assert_eq!(a.for_local_client(), a);
        for bad in ["", "9092", "host:", "host:0", "host:65536", "host:x"] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(ip in any::<IpAddr>(), port in 1_u16..) {
            let address = Address { host: Host::Ip(ip), port };
            prop_assert_eq!(address.to_string().parse::<Address>().unwrap(), address);
        }

        #[test]
        fn never_panics(text in "\\PC{0,30}") {
            let _ = text.parse::<Address>();
        }
    }
}
