//! `host:port` server addresses, parsed the way Flower 1.14 parses them.
//!
//! PROTOCOL.md §2.2: "Addresses are parsed by splitting at the **last** `:`; the port must be an
//! integer 1–65535; `[` and `]` are stripped from the host; an IPv6 literal is re-wrapped as
//! `[host]:port`. A host that is not an IP literal is kept as a DNS name."

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// The host part of an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (or anything else that is not an IP literal), kept verbatim.
    Dns(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
}

/// A server address as given on the command line, e.g. `0.0.0.0:9092` or `[::1]:9093`.
///
/// [`Display`](fmt::Display) gives the reference's normalised form, which is also what the
/// SuperLink logs and hands to `flwr-serverapp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// Host name or IP literal.
    pub host: Host,
    /// Port, 1–65535.
    pub port: u16,
}

/// The address could not be parsed; carries the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Address ({0}) cannot be parsed (expected: URL or IPv4 or IPv6).")]
pub struct AddressError(pub String);

impl Address {
    /// The address a local client should dial to reach a server bound here: the reference
    /// replaces exactly the host `0.0.0.0` by `127.0.0.1` and keeps everything else.
    pub fn for_local_client(&self) -> Self {
        match self.host {
            Host::Ip(IpAddr::V4(ip)) if ip.is_unspecified() => Self {
                host: Host::Ip(IpAddr::from([127, 0, 0, 1])),
                port: self.port,
            },
            _ => self.clone(),
        }
    }

    /// Resolves the address for binding a listener (DNS names are looked up; the first result
    /// wins).
    ///
    /// # Errors
    ///
    /// The name does not resolve to any address.
    pub fn to_socket_addr(&self) -> io::Result<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Ok(SocketAddr::new(*ip, self.port)),
            Host::Dns(name) => (name.as_str(), self.port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{name} does not resolve"))
                }),
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
            Err(_) => Host::Dns(raw_host.to_owned()),
        };
        Ok(Self { host, port })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
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
        ];
        for (input, normalised) in cases {
            let address = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(address.to_string(), normalised, "{input}");
        }
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
        assert_eq!(address.host, Host::Dns("[name]".into()));
    }
}
