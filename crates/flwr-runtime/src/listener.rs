//! The accept loop behind every gRPC port.
//!
//! tonic's own loop (`serve_with_incoming` over a `TcpListenerStream`) ends the server when
//! `accept()` fails with anything but a handful of connection errors, and reports that as a
//! normal stop: one `EMFILE` under load and the SuperLink exits 0. It also has no deadline
//! for TLS handshakes and no bound on connections. [`incoming`] replaces it:
//!
//! * `accept()` errors never end the stream. Descriptor and memory exhaustion are logged (at
//!   most once per second, with a count) and retried after a short pause; errors the kernel
//!   passes on from an already-failed connection are skipped. Only an error that means the
//!   listening socket itself is broken ends the stream, with an error line, so the caller's
//!   server ends and the process can report it.
//! * Every connection holds a permit of a [`ConnectionBudget`] shared by all listeners of the
//!   process; past the budget new connections are closed at once, with a log line.
//! * A TLS handshake must finish within [`Limits::handshake_timeout`]; a plaintext peer must
//!   send its first bytes within the same bound; a peer silent for [`Limits::idle_timeout`] is
//!   disconnected. HTTP/2 keep-alive PINGs (set on the tonic server) are answered by live
//!   peers, so an open connection of a healthy client never counts as silent.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use nix::errno::Errno;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::RateLimited;

/// Time bounds applied to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TLS handshake, or a plaintext peer's first bytes, must arrive within this.
    pub handshake_timeout: Duration,
    /// A peer that sends nothing (not even an HTTP/2 PING acknowledgement) for this long is
    /// disconnected.
    pub idle_timeout: Duration,
}

impl Limits {
    /// 10 s to handshake, 5 min of silence (longer than the servers' 210 s keep-alive
    /// interval, so a live peer always answers in time).
    pub const DEFAULT: Self = Self {
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How many connections a process holds at once, across all its listeners.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionBudget {
    /// Descriptors kept back from the open-file limit for files, the database, child processes
    /// and the listeners themselves.
    pub const RESERVED_DESCRIPTORS: u64 = 128;

    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    /// As many connections as the open-file limit `limit` allows after
    /// [`RESERVED_DESCRIPTORS`](Self::RESERVED_DESCRIPTORS) (at least 16).
    pub fn for_open_file_limit(limit: u64) -> Self {
        let max = limit.saturating_sub(Self::RESERVED_DESCRIPTORS).max(16);
        Self::new(usize::try_from(max).unwrap_or(usize::MAX))
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.max
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.permits.available_permits())
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }
}

/// Why a TLS identity cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The key file holds no PEM private key.
    #[error("no PEM private key found")]
    NoPrivateKey,
    /// The PEM text could not be read.
    #[error("unreadable PEM: {0}")]
    Pem(#[source] io::Error),
    /// rustls refused the certificate or key (e.g. they do not belong together).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// A server's TLS identity, ready to accept handshakes.
#[derive(Clone)]
pub struct ServerTls(TlsAcceptor);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the private key.
        f.write_str("ServerTls(..)")
    }
}

/// A TLS identity for a PEM certificate chain and private key, offering ALPN `h2` (which
/// gRPC-core clients require) and no client authentication.
///
/// # Errors
///
/// See [`TlsError`].
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerTls, TlsError> {
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(TlsError::Pem)?
        .ok_or(TlsError::NoPrivateKey)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls(TlsAcceptor::from(Arc::new(config))))
}

/// Everything [`incoming`] needs besides the socket.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Name of the API for log lines (`Fleet`, `Exec`, …).
    pub api: &'static str,
    /// TLS, when the port serves it.
    pub tls: Option<ServerTls>,
    /// Time bounds per connection.
    pub limits: Limits,
    /// The process-wide connection cap.
    pub budget: ConnectionBudget,
}

/// Accepted connections waiting for the server, beyond which the accept loop waits.
const QUEUE: usize = 256;
/// Pause after `accept()` fails for lack of descriptors or memory, so that the loop does not
/// spin while nothing can be accepted.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this interval per kind of event.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` until `stop` is cancelled, for
/// `Server::serve_with_incoming_shutdown`. See the module documentation for what it bounds.
///
/// The stream ends when `stop` is cancelled or, after an error line, when the listening
/// socket is broken; it never yields an error item.
pub fn incoming(
    listener: TcpListener,
    settings: ListenerSettings,
    stop: CancellationToken,
) -> ReceiverStream<Result<Connection, io::Error>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, settings, stop, tx));
    ReceiverStream::new(rx)
}

type Sender = mpsc::Sender<Result<Connection, io::Error>>;

async fn accept_loop(
    listener: TcpListener,
    settings: ListenerSettings,
    stop: CancellationToken,
    tx: Sender,
) {
    let api = settings.api;
    let mut exhausted_log = RateLimited::new(LOG_INTERVAL);
    let mut full_log = RateLimited::new(LOG_INTERVAL);
    let handshake_log = Arc::new(Mutex::new(RateLimited::new(LOG_INTERVAL)));
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => match classify(&error) {
                AcceptError::Transient => continue,
                AcceptError::Exhausted => {
                    if let Some(more) = exhausted_log.check() {
                        tracing::warn!(
                            api,
                            %error,
                            repeated = more,
                            "cannot accept connections (out of descriptors or memory); retrying"
                        );
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(EXHAUSTED_BACKOFF) => continue,
                    }
                }
                AcceptError::Fatal => {
                    tracing::error!(api, %error, "the listening socket failed; no more connections are accepted");
                    return;
                }
            },
        };
        let Some(permit) = settings.budget.try_take() else {
            if let Some(more) = full_log.check() {
                tracing::warn!(
                    api,
                    %peer,
                    max_connections = settings.budget.max(),
                    refused_since_last = more,
                    "connection limit reached; closing new connection"
                );
            }
            continue;
        };
        // gRPC requests are small and latency-bound; Nagle only delays them.
        let _ = stream.set_nodelay(true);
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let limits = settings.limits;
        match &settings.tls {
            None => {
                let connection = Connection::new(Io::Plain(stream), info, limits, permit, false);
                if tx.send(Ok(connection)).await.is_err() {
                    return;
                }
            }
            Some(ServerTls(acceptor)) => {
                let (acceptor, tx, log) =
                    (acceptor.clone(), tx.clone(), Arc::clone(&handshake_log));
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
                    let failure = match handshake.await {
                        Ok(Ok(tls)) => {
                            let io = Io::Tls(Box::new(tls));
                            let _ = tx
                                .send(Ok(Connection::new(io, info, limits, permit, true)))
                                .await;
                            return;
                        }
                        Ok(Err(error)) => error.to_string(),
                        Err(_) => format!("no TLS handshake within {:?}", limits.handshake_timeout),
                    };
                    let report = log.lock().ok().and_then(|mut log| log.check());
                    if let Some(more) = report {
                        tracing::debug!(api, %peer, failure, repeated = more, "TLS handshake failed");
                    }
                });
            }
        }
    }
}

enum AcceptError {
    /// The failed connection is gone; the next accept may succeed at once.
    Transient,
    /// Out of descriptors or memory: back off, then retry.
    Exhausted,
    /// The listening socket itself is unusable.
    Fatal,
}

fn classify(error: &io::Error) -> AcceptError {
    let Some(code) = error.raw_os_error() else {
        return AcceptError::Transient;
    };
    match Errno::from_raw(code) {
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => AcceptError::Exhausted,
        Errno::EBADF | Errno::EINVAL | Errno::ENOTSOCK | Errno::EFAULT => AcceptError::Fatal,
        // ECONNABORTED, EPROTO, EPERM, ENETDOWN, … concern one connection (accept(2)).
        _ => AcceptError::Transient,
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: TCP or TLS, holding its place in the [`ConnectionBudget`] until it
/// is dropped, and failing its reads once the peer has been silent too long.
pub struct Connection {
    io: Io,
    info: TcpConnectInfo,
    idle_timeout: Duration,
    /// When the peer last sent bytes; `None` until it sends its first.
    last_read: Option<Instant>,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("remote_addr", &self.info.remote_addr)
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        io: Io,
        info: TcpConnectInfo,
        limits: Limits,
        permit: OwnedSemaphorePermit,
        handshaken: bool,
    ) -> Self {
        let now = Instant::now();
        // After a TLS handshake the peer has spoken; a plaintext peer must still say hello.
        let (last_read, first_bound) = if handshaken {
            (Some(now), limits.idle_timeout)
        } else {
            (None, limits.handshake_timeout)
        };
        Self {
            io,
            info,
            idle_timeout: limits.idle_timeout,
            last_read,
            deadline: Box::pin(tokio::time::sleep_until(now + first_bound)),
            _permit: permit,
        }
    }

    /// `Ready(Err)` once the peer has been silent past its bound; otherwise registers the
    /// timer with `cx` and stays pending.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer is only moved when it fires, not on every read.
            match self.last_read.map(|last| last + self.idle_timeout) {
                Some(due) if due > Instant::now() => self.deadline.as_mut().reset(due),
                Some(_) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "peer silent past the idle timeout",
                    )))
                }
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "peer sent nothing within the handshake timeout",
                    )))
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        match read {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_silence(cx),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}
