//! Connections as a server on the internet gets them: the SuperLink keeps serving when it runs
//! out of descriptors, caps connections, drops peers that never speak, and fails loudly when an
//! API server ends without being asked to. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use flwr_proto::exec_client::ExecClient;
use flwr_proto::ListRunsRequest;
use flwr_testkit::{free_ports, CommandLine, Proc};

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");

struct Ports {
    fleet: u16,
    exec: u16,
}

/// `flower-superlink --insecure` under an open-file limit of `descriptors` (soft and hard, so
/// the SuperLink cannot raise it), with `extra` flags.
fn spawn_limited(dir: &Path, descriptors: u32, extra: &[&str]) -> (Proc, Ports) {
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let mut line = format!(
        "ulimit -n {descriptors} && exec {BINARY} --insecure --isolation process \
         --fleet-api-address 127.0.0.1:{fleet} --serverappio-api-address 127.0.0.1:{serverappio} \
         --exec-api-address 127.0.0.1:{exec} --storage-dir {}",
        dir.join("ffs").display()
    );
    for flag in extra {
        line.push(' ');
        line.push_str(flag);
    }
    let command = CommandLine::new("sh")
        .args(["-c", &line])
        .env("FLWR_HOME", dir.join("home"));
    let superlink = Proc::spawn("superlink", &command, dir).expect("spawn");
    superlink
        .wait_for_log("Starting Fleet API", Duration::from_secs(30))
        .expect("superlink starts");
    (superlink, Ports { fleet, exec })
}

/// Opens up to `count` idle TCP connections (no HTTP/2, no TLS) to `port`.
fn idle_connections(port: u16, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect()
}

/// Whether an Exec `ListRuns` succeeds within `budget` (retrying while connections close).
fn serves_requests(exec: u16, budget: Duration) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let deadline = Instant::now() + budget;
        while Instant::now() < deadline {
            let attempt = async {
                let channel =
                    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{exec}"))?
                        .connect()
                        .await?;
                let mut client = ExecClient::new(channel);
                client.list_runs(ListRunsRequest::default()).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    })
}

#[test]
fn running_out_of_descriptors_is_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cap above the descriptor limit, so that accept() itself fails with EMFILE.
    let (mut superlink, ports) = spawn_limited(dir.path(), 256, &["--max-connections", "5000"]);
    let held = idle_connections(ports.fleet, 400);
    assert!(held.len() >= 300, "only {} connections opened", held.len());
    superlink
        .wait_for_log("cannot accept connections", Duration::from_secs(20))
        .expect("descriptor exhaustion is reported");
    assert!(superlink.is_running(), "the SuperLink exited");
    drop(held);
    assert!(
        serves_requests(ports.exec, Duration::from_secs(30)),
        "no request served after the connections closed"
    );
    assert!(superlink.is_running(), "the SuperLink exited");
    let status = superlink.terminate(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{status}");
}

#[test]
fn connections_past_the_cap_are_refused_with_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default cap follows the descriptor limit: 256 - 128 reserved.
    let (mut superlink, ports) = spawn_limited(dir.path(), 256, &[]);
    superlink
        .wait_for_log("Accepting up to 128 connections", Duration::from_secs(5))
        .expect("the cap is logged");
    let held = idle_connections(ports.fleet, 200);
    superlink
        .wait_for_log("connection limit reached", Duration::from_secs(20))
        .expect("refusals are reported");
    assert!(superlink.is_running(), "the SuperLink exited");
    drop(held);
    assert!(serves_requests(ports.exec, Duration::from_secs(30)));
    let status = superlink.terminate(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{status}");
}

#[test]
fn a_peer_that_never_speaks_is_disconnected() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut superlink, ports) = spawn_limited(dir.path(), 1024, &["--handshake-timeout", "0.5"]);
    let mut silent = TcpStream::connect(("127.0.0.1", ports.fleet)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    // The server speaks first (its HTTP/2 SETTINGS); then EOF or a reset means it closed the
    // connection, while a read timeout would fail the test.
    for _ in 0..100 {
        match silent.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(error) => {
                assert_eq!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset,
                    "not closed by the server: {error}"
                );
                break;
            }
        }
    }
    assert!(superlink.is_running());
    let status = superlink.terminate(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{status}");
}

#[test]
fn bad_connection_flags_are_refused() {
    for flags in [
        &["--handshake-timeout=0"][..],
        &["--idle-timeout=-1"],
        &["--idle-timeout=nan"],
        &["--max-connections=0"],
    ] {
        let output = CommandLine::new(BINARY)
            .arg("--insecure")
            .args(flags.iter().copied())
            .output(Duration::from_secs(10))
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{flags:?}: {stderr}");
        let line = stderr.lines().last().unwrap_or_default();
        let flag = flags[0].split('=').next().unwrap_or_default();
        assert!(
            line.starts_with("error: ") && line.contains(flag),
            "{flags:?}: {line}"
        );
    }
}

/// An API server whose listening socket breaks ends, and the SuperLink reports it as a failure
/// instead of a normal stop.
#[tokio::test]
async fn an_api_server_that_ends_unasked_is_a_failure() {
    use flwr_superlink::{Args, Config, SuperLink};

    let dir = tempfile::tempdir().expect("tempdir");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let storage = dir.path().join("ffs");
    let args = <Args as clap::Parser>::parse_from([
        "flower-superlink".to_owned(),
        "--insecure".to_owned(),
        "--isolation".to_owned(),
        "process".to_owned(),
        format!("--fleet-api-address=127.0.0.1:{fleet}"),
        format!("--serverappio-api-address=127.0.0.1:{serverappio}"),
        format!("--exec-api-address=127.0.0.1:{exec}"),
        format!("--storage-dir={}", storage.display()),
    ]);
    let superlink = SuperLink::bind(Config::from_args(args).expect("config"))
        .await
        .expect("bind");
    // Find the Fleet listener among this process's descriptors before the server owns it.
    let fleet_fd = std::fs::read_dir("/proc/self/fd")
        .expect("fd list")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|fd| {
            nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(*fd)
                .is_ok_and(|address| address.port() == fleet)
        })
        .expect("the Fleet listener's descriptor");
    // The test owns this task and awaits it below.
    #[allow(clippy::disallowed_methods)]
    let running = tokio::spawn(superlink.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // shutdown(2) on a listening socket makes accept() fail with EINVAL from then on.
    nix::sys::socket::shutdown(fleet_fd, nix::sys::socket::Shutdown::Both).expect("shutdown");
    let ended = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the SuperLink ends by itself")
        .expect("no panic");
    let error = ended.expect_err("an unasked stop is an error");
    assert!(
        error
            .to_string()
            .contains("Fleet API server stopped unexpectedly"),
        "{error}"
    );
}
