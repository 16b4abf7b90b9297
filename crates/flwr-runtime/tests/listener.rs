//! What the listener bounds: handshakes, silent peers and the number of connections. Every
//! wait is bounded; the assertions are about what happens, not how fast.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use flwr_runtime::listener::{incoming, tls_acceptor, ConnectionBudget, Limits, ListenerSettings};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

const SHORT: Limits = Limits {
    handshake_timeout: Duration::from_millis(300),
    idle_timeout: Duration::from_millis(600),
};
/// Far beyond any bound under test: a connection still open after this was not closed.
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `settings` on a loopback port like a server would: every accepted connection is
/// read until it fails or ends, and echoed back.
async fn start(settings: ListenerSettings) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let mut connections = incoming(listener, settings, stop.clone());
    tokio::spawn(async move {
        while let Some(Ok(mut connection)) = connections.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = connection.read(&mut buf).await {
                    if connection.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (address, stop)
}

fn plain(budget: usize) -> ListenerSettings {
    ListenerSettings {
        api: "test",
        tls: None,
        limits: SHORT,
        budget: ConnectionBudget::new(budget),
    }
}

/// Reads until the server closes the connection; `true` if it did within [`PATIENCE`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.is_ok()
}

#[tokio::test]
async fn a_peer_that_never_speaks_is_disconnected() {
    let (address, stop) = start(plain(8)).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    assert!(closed_by_server(&mut stream).await);
    stop.cancel();
}

#[tokio::test]
async fn a_peer_that_goes_silent_is_disconnected_and_a_talking_one_is_not() {
    let (address, stop) = start(plain(8)).await;
    let mut talking = TcpStream::connect(address).await.expect("connect");
    let mut silent = TcpStream::connect(address).await.expect("connect");
    silent.write_all(b"hello").await.expect("write");
    // Keep one peer talking for three idle periods; the other said hello once.
    let mut buf = [0u8; 5];
    for _ in 0..9 {
        talking
            .write_all(b"ping!")
            .await
            .expect("talking peer still connected");
        talking.read_exact(&mut buf).await.expect("echo");
        tokio::time::sleep(SHORT.idle_timeout / 3).await;
    }
    assert!(closed_by_server(&mut silent).await);
    talking
        .write_all(b"ping!")
        .await
        .expect("talking peer still connected");
    talking.read_exact(&mut buf).await.expect("echo");
    stop.cancel();
}

#[tokio::test]
async fn connections_past_the_budget_are_closed_and_freed_places_are_reused() {
    let (address, stop) = start(plain(2)).await;
    let mut first = TcpStream::connect(address).await.expect("connect");
    let mut second = TcpStream::connect(address).await.expect("connect");
    let mut buf = [0u8; 2];
    for stream in [&mut first, &mut second] {
        stream.write_all(b"ok").await.expect("write");
        stream.read_exact(&mut buf).await.expect("echo");
    }
    let mut third = TcpStream::connect(address).await.expect("connect");
    assert!(closed_by_server(&mut third).await);
    drop(first);
    // The freed place goes to the next connection (bounded retries while the close lands).
    let mut served = false;
    for _ in 0..50 {
        let mut next = TcpStream::connect(address).await.expect("connect");
        if next.write_all(b"ok").await.is_ok()
            && tokio::time::timeout(Duration::from_millis(500), next.read_exact(&mut buf))
                .await
                .is_ok_and(|read| read.is_ok())
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a freed place was never reused");
    stop.cancel();
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_off() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let acceptor = tls_acceptor(
        certified.cert.pem().as_bytes(),
        certified.key_pair.serialize_pem().as_bytes(),
    )
    .expect("usable identity");
    let settings = ListenerSettings {
        tls: Some(acceptor),
        ..plain(8)
    };
    let (address, stop) = start(settings).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    // Half a ClientHello: the record header promises more than ever arrives.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    assert!(closed_by_server(&mut stream).await);
    stop.cancel();
}

#[test]
fn unusable_identities_are_refused() {
    assert!(tls_acceptor(b"", b"").is_err());
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let other = rcgen::KeyPair::generate().expect("key");
    let mismatched = tls_acceptor(
        certified.cert.pem().as_bytes(),
        other.serialize_pem().as_bytes(),
    );
    assert!(
        mismatched.is_err(),
        "a key of another certificate was accepted"
    );
}

#[test]
fn the_budget_follows_the_descriptor_limit() {
    assert_eq!(ConnectionBudget::for_open_file_limit(20_000).max(), 19_872);
    assert_eq!(ConnectionBudget::for_open_file_limit(100).max(), 16);
}
