//! HTTP/2 connections to the SuperLink: one per `--nodes-per-connection` simulated nodes, each
//! from its own local port, spread over several loopback source addresses.
//!
//! A TCP connection is identified by (source address, source port, destination); with one
//! source address the ephemeral port range (about 28 000 ports by default) caps the
//! connections to one SuperLink. Loopback has all of 127.0.0.0/8, so against a loopback
//! SuperLink connection `c` binds `127.0.0.(2 + c / 20000)` first, and each source address gets
//! its own port range.
//!
//! The connector only makes the TCP stream; tonic puts TLS on top of any custom connector when
//! the endpoint's URI is `https` (its `Connector` wraps ours), so TLS and ALPN `h2` work as
//! with tonic's own connector.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use flwr_core::Address;
use flwr_proto::fleet_client::FleetClient;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OnceCell;
use tonic::transport::{Channel, Endpoint};

use crate::config::Tls;

/// Connections per loopback source address, well inside the default ephemeral port range.
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// How long TCP connect plus TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The SuperLink address does not resolve.
    #[error("cannot resolve {address}: {reason}")]
    Resolve {
        /// The `--superlink` value.
        address: String,
        /// Why.
        reason: String,
    },
    /// tonic refused the endpoint or TLS settings.
    #[error("cannot configure the channel to {address}: {source}")]
    Endpoint {
        /// The `--superlink` value.
        address: String,
        /// tonic's reason.
        #[source]
        source: tonic::transport::Error,
    },
}

/// The lazily opened connections of one test; connection `c` serves nodes
/// `c * K .. (c + 1) * K`.
#[derive(Debug)]
pub struct Connections {
    endpoint: Endpoint,
    target: SocketAddr,
    spread_sources: bool,
    clients: Vec<OnceCell<FleetClient<Channel>>>,
}

impl Connections {
    /// `count` connections to `address`, none opened yet.
    ///
    /// # Errors
    ///
    /// When the address does not resolve or the TLS settings are unusable.
    pub async fn new(address: &Address, tls: &Tls, count: usize) -> Result<Self, ConnectionError> {
        let text = address.to_string();
        let target = tokio::net::lookup_host(text.as_str())
            .await
            .map_err(|error| ConnectionError::Resolve {
                address: text.clone(),
                reason: error.to_string(),
            })?
            .next()
            .ok_or_else(|| ConnectionError::Resolve {
                address: text.clone(),
                reason: "no address".to_owned(),
            })?;
        let fail = |source| ConnectionError::Endpoint {
            address: text.clone(),
            source,
        };
        let endpoint = tls
            .endpoint(&text, &address.host_text())
            .map_err(fail)?
            .connect_timeout(CONNECT_TIMEOUT);
        // Only IPv4 loopback has more than one local address to spread over.
        let spread_sources = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
        Ok(Self {
            endpoint,
            target,
            spread_sources,
            clients: (0..count).map(|_| OnceCell::new()).collect(),
        })
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.clients
            .iter()
            .filter(|cell| cell.initialized())
            .count()
    }

    /// The client of connection `index`, opening the connection on first use. Concurrent
    /// callers wait for the same connection attempt; a failed attempt is retried by the next
    /// caller.
    ///
    /// # Errors
    ///
    /// When the TCP connection or the TLS handshake fails.
    pub async fn client(&self, index: usize) -> Result<FleetClient<Channel>, tonic::Status> {
        let Some(cell) = self.clients.get(index) else {
            return Err(tonic::Status::internal(format!("no connection {index}")));
        };
        let connector = SourceConnector {
            source: self.source_for(index),
            target: self.target,
        };
        cell.get_or_try_init(|| async {
            let channel = self
                .endpoint
                .connect_with_connector(connector)
                .await
                .map_err(|error| tonic::Status::unavailable(describe(&error)))?;
            Ok(FleetClient::new(channel)
                .max_decoding_message_size(flwr_proto::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(flwr_proto::MAX_MESSAGE_SIZE))
        })
        .await
        .cloned()
    }

    /// The local address connection `index` binds, if any.
    fn source_for(&self, index: usize) -> Option<IpAddr> {
        if !self.spread_sources {
            return None;
        }
        // 127.0.0.2 onwards: 127.0.0.1 stays the address other local clients use. 253 source
        // addresses hold more connections than any process may open.
        let offset = (index / CONNECTIONS_PER_SOURCE).min(252) as u8;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + offset)))
    }
}

/// A tonic transport error with its innermost cause (e.g. `Connection refused`), which tonic's
/// own message ("transport error") leaves out.
fn describe(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text = format!("{text}: {inner}");
        cause = inner.source();
    }
    text
}

/// Makes the TCP stream of one connection, bound to a source address when one is given.
#[derive(Clone, Debug)]
struct SourceConnector {
    source: Option<IpAddr>,
    target: SocketAddr,
}

impl tower_service::Service<Uri> for SourceConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The URI names the SuperLink as given; the address was resolved once, up front.
        let (source, target) = (self.source, self.target);
        Box::pin(async move {
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = source {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(target).await?;
            // gRPC calls are small writes that must not wait for Nagle's algorithm.
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_connections_spread_over_source_addresses() {
        let address: Address = "127.0.0.1:9".parse().unwrap();
        let connections = Connections::new(&address, &Tls::Insecure, 3).await.unwrap();
        assert_eq!(
            connections.source_for(0),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            connections.source_for(CONNECTIONS_PER_SOURCE - 1),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            connections.source_for(CONNECTIONS_PER_SOURCE),
            Some("127.0.0.3".parse().unwrap())
        );
        let v6: Address = "[::1]:9".parse().unwrap();
        let connections = Connections::new(&v6, &Tls::Insecure, 1).await.unwrap();
        assert_eq!(connections.source_for(0), None);
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let address: Address = format!("127.0.0.1:{port}").parse().unwrap();
        let connections = Connections::new(&address, &Tls::Insecure, 1).await.unwrap();
        let status = connections.client(0).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("refused"), "{}", status.message());
        assert_eq!(connections.opened(), 0);
    }
}
