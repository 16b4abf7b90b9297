//! `host:port` addresses, parsed the way Flower 1.14 parses them.
//!
//! PROTOCOL.md §2.2: "Addresses are parsed by splitting at the **last** `:`; the port must be an
//! integer 1–65535; `[` and `]` are stripped from the host; an IPv6 literal is re-wrapped as
//! `[host]:port`. A host that is not an IP literal is kept as a DNS name."

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The host part of an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (or anything else that is not an IP literal), kept verbatim.
    Domain(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
}

/// A server address as given on the command line, e.g. `0.0.0.0:9092` or `[::1]:9093`.
///
/// [`Display`](fmt::Display) gives the reference's normalised form, which is also what the
/// SuperLink and SuperNode log and hand to the app processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP literal.
    pub host: Host,
    /// Port, 1–65535.
    pub port: u16,
}

/// The address could not be parsed; carries the input. The message is the reference's
/// (`flwr.server.app._format_address`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Address ({0}) cannot be parsed (expected: URL or IPv4 or IPv6).")]
pub struct AddressError(pub String);

impl Address {
    /// The host as text, without brackets (what TLS verifies the certificate against).
    pub fn host_text(&self) -> String {
        match &self.host {
            Host::Domain(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    /// The address a local client should dial to reach a server bound here: the reference
    /// replaces exactly the host `0.0.0.0` by `127.0.0.1` and keeps everything else.
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

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let error = || AddressError(address.to_owned());
        // Python's `str.rpartition(":")`: no colon at all leaves the whole string as the port.
        let (raw_host, raw_port) = address.rsplit_once(':').unwrap_or(("", address));
        let port = parse_python_int(raw_port).ok_or_else(error)?;
        let port = u16::try_from(port)
            .ok()
            .filter(|port| *port >= 1)
            .ok_or_else(error)?;
        let stripped: String = raw_host
            .chars()
            .filter(|c| *c != '[' && *c != ']')
            .collect();
        // The reference keeps the *unstripped* host when it is not an IP literal.
        let host = match stripped.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Domain(raw_host.to_owned()),
        };
        Ok(Self { host, port })
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

/// Python's `int(text)` for base-10 input: surrounding whitespace, one sign, and single
/// underscores between digits are accepted.
fn parse_python_int(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first()? {
        b'+' => (false, &text[1..]),
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    if digits.contains("__") || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    let value: i64 = digits.replace('_', "").parse().ok()?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> Result<Address, AddressError> {
        text.parse()
    }

    #[test]
    fn accepts_the_reference_forms() {
        let cases = [
            ("0.0.0.0:9092", "0.0.0.0:9092"),
            ("127.0.0.1:1", "127.0.0.1:1"),
            ("[::1]:9093", "[::1]:9093"),
            ("[::]:65535", "[::]:65535"),
            // brackets are optional for IPv6 because the port is split at the last colon
            ("::1:8080", "[::1]:8080"),
            ("localhost:9091", "localhost:9091"),
            ("superlink.example.org:443", "superlink.example.org:443"),
            // Python int(): whitespace, sign and digit-group underscores
            ("127.0.0.1: 80", "127.0.0.1:80"),
            ("127.0.0.1:+80", "127.0.0.1:80"),
            ("127.0.0.1:9_092", "127.0.0.1:9092"),
            // `rpartition` without a colon: an empty host, as in the reference
            ("9092", ":9092"),
        ];
        for (input, normalised) in cases {
            let address = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(address.to_string(), normalised, "{input}");
        }
        let address = parse("[::1]:9092").expect("parses");
        assert_eq!(address.host_text(), "::1");
        let address = parse("localhost:1").expect("parses");
        assert_eq!(address.host, Host::Domain("localhost".into()));
    }

    #[test]
    fn rejects_what_the_reference_rejects() {
        for input in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:-1",
            "127.0.0.1:port",
            "127.0.0.1:",
            "127.0.0.1:9_",
            "127.0.0.1:9__0",
            "host:",
            "host:x",
            "",
        ] {
            let error = parse(input).expect_err(input);
            assert_eq!(
                error.to_string(),
                format!("Address ({input}) cannot be parsed (expected: URL or IPv4 or IPv6).")
            );
        }
    }

    #[test]
    fn only_the_ipv4_wildcard_is_rewritten_for_local_clients() {
        let local = |input: &str| parse(input).map(|a| a.for_local_client().to_string());
        assert_eq!(local("0.0.0.0:9091").as_deref(), Ok("127.0.0.1:9091"));
        assert_eq!(local("[::]:9091").as_deref(), Ok("[::]:9091"));
        assert_eq!(local("10.1.2.3:9091").as_deref(), Ok("10.1.2.3:9091"));
        assert_eq!(local("localhost:9091").as_deref(), Ok("localhost:9091"));
    }

    #[test]
    fn non_ip_hosts_keep_their_brackets_like_the_reference() {
        let address = parse("[name]:1").expect("parses");
        assert_eq!(address.host, Host::Domain("[name]".into()));
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
