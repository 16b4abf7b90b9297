//! What an operator sees (issue #14): `/metrics` after authenticated traffic, refusals, an
//! allow-list reload and a finished run; gRPC health from SERVING to NOT_SERVING when shutdown
//! begins (SIGTERM for the binary, the shutdown future in-process); JSON log lines; and the
//! cost of a scrape with 50 000 registered nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    canonical, CreateNodeRequest, CreateRunRequest, Node, PingRequest, RunStatus,
    UpdateRunStatusRequest,
};
use flwr_superlink::{Args, Config, SuperLink};
use flwr_testkit::{free_ports, CommandLine, Pki, Proc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");
const WAIT: Duration = Duration::from_secs(30);

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

fn key_line(name: &str) -> String {
    let path = vectors().join("keys").join(format!("{name}.pub"));
    std::fs::read_to_string(path)
        .expect("test key")
        .trim_end()
        .to_owned()
}

struct Identity {
    private: PrivateKey,
    header: String,
}

impl Identity {
    fn load(name: &str) -> Self {
        let bytes = std::fs::read(vectors().join("keys").join(name)).expect("key file");
        let private = PrivateKey::from_openssh(bytes).expect("key");
        let header = private.public_key().header_value();
        Self { private, header }
    }
}

fn with_key<T>(message: T, who: &Identity) -> Request<T> {
    let mut request = Request::new(message);
    let key = MetadataValue::try_from(who.header.as_str()).expect("ascii");
    request.metadata_mut().insert("public-key", key);
    request
}

fn ping(who: &Identity, secret: &SharedSecret, node_id: u64, tamper: bool) -> Request<PingRequest> {
    let message = PingRequest {
        node: Some(Node {
            node_id,
            anonymous: false,
        }),
        ping_interval: 30.0,
    };
    let mut signed = canonical::encode(&message).expect("canonical");
    if tamper {
        signed.push(0);
    }
    let token = secret.sign(&signed).header_value();
    let mut request = with_key(message, who);
    request.metadata_mut().insert(
        "auth-token",
        MetadataValue::try_from(token.as_str()).expect("ascii"),
    );
    request
}

/// `GET path` over HTTP/1.0: status code and body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the metrics port");
        let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("scrape answered");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name and labels, exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(sample(text, series), Some(expected), "{series} in\n{text}");
}

async fn health_status(port: u16, service: &str) -> i32 {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect_timeout(WAIT)
        .connect()
        .await
        .expect("connect to the health port");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Check")
        .into_inner()
        .status
}

/// Whether a Watch stream reports NOT_SERVING before it ends. tonic-health may repeat the
/// current status once before the next change, so a few SERVING items are skipped.
async fn turns_not_serving(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> bool {
    for _ in 0..10 {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Ok(Ok(Some(item))) if item.status == ServingStatus::NotServing as i32 => return true,
            Ok(Ok(Some(_))) => continue,
            _ => return false,
        }
    }
    false
}

#[test]
fn the_binary_exports_metrics_health_and_json_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let pki = Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
    let csv = dir.join("allowed.csv");
    std::fs::write(&csv, format!("{}\n", key_line("supernode_p384_derived"))).expect("csv");
    let [fleet_port, serverappio_port, exec_port, metrics_port, health_port] =
        free_ports::<5>().expect("ports");
    let keys = vectors().join("keys");
    let command = CommandLine::new(BINARY)
        .env("FLWR_HOME", dir.join("home"))
        .arg("--ssl-ca-certfile")
        .arg(&pki.ca_cert)
        .arg("--ssl-certfile")
        .arg(&pki.server_cert)
        .arg("--ssl-keyfile")
        .arg(&pki.server_key)
        .args(["--isolation", "process", "--storage-dir"])
        .arg(dir.join("ffs"))
        .args(["--fleet-api-address", &format!("127.0.0.1:{fleet_port}")])
        .args([
            "--serverappio-api-address",
            &format!("127.0.0.1:{serverappio_port}"),
        ])
        .args(["--exec-api-address", &format!("127.0.0.1:{exec_port}")])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--health-server-address",
            &format!("127.0.0.1:{health_port}"),
        ])
        .args(["--log-format", "json"])
        .arg("--auth-list-public-keys")
        .arg(&csv)
        .arg("--auth-superlink-private-key")
        .arg(keys.join("superlink_p384_derived"))
        .arg("--auth-superlink-public-key")
        .arg(keys.join("superlink_p384_derived.pub"));
    let mut proc = Proc::spawn("superlink", &command, dir).expect("spawn");
    proc.wait_for_log("Starting Fleet API", WAIT)
        .expect("superlink starts");
    let ca = std::fs::read(&pki.ca_cert).expect("ca");
    let node = Identity::load("supernode_p384_derived");
    let stranger = Identity::load("stranger_p384_derived");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let token_header = runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{fleet_port}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect");
        let mut fleet = FleetClient::new(channel);

        // Authenticated traffic: a registration and a Ping.
        let response = fleet
            .create_node(with_key(CreateNodeRequest { ping_interval: 30.0 }, &node))
            .await
            .expect("listed key registers");
        let superlink_key = response
            .metadata()
            .get("public-key")
            .and_then(|v| v.to_str().ok())
            .map(|v| PublicKey::from_header(v).expect("superlink key"))
            .expect("SuperLink key header");
        let node_id = response.into_inner().node.expect("node").node_id;
        let secret = SharedSecret::derive(&node.private, &superlink_key).expect("secret");
        fleet
            .ping(ping(&node, &secret, node_id, false))
            .await
            .expect("signed Ping");
        // Refusals: an unlisted key, and a token over other bytes.
        let refused = fleet
            .create_node(with_key(CreateNodeRequest { ping_interval: 30.0 }, &stranger))
            .await
            .expect_err("unlisted key refused");
        assert_eq!(refused.code(), Code::Unauthenticated);
        let tampered = ping(&node, &secret, node_id, true);
        let token_header = tampered
            .metadata()
            .get("auth-token")
            .and_then(|v| v.to_str().ok())
            .expect("token")
            .to_owned();
        let refused = fleet.ping(tampered).await.expect_err("bad token refused");
        assert_eq!(refused.code(), Code::Unauthenticated);

        // A run that finishes.
        let channel = Channel::from_shared(format!("http://127.0.0.1:{serverappio_port}"))
            .expect("uri")
            .connect_lazy();
        let mut io = ServerAppIoClient::new(channel);
        let run_id = io
            .create_run(CreateRunRequest {
                fab_id: "tester/app".into(),
                fab_version: "1.0.0".into(),
                ..CreateRunRequest::default()
            })
            .await
            .expect("CreateRun")
            .into_inner()
            .run_id;
        for (status, sub_status) in [
            ("starting", ""),
            ("running", ""),
            ("finished", "completed"),
        ] {
            io.update_run_status(UpdateRunStatusRequest {
                run_id,
                run_status: Some(RunStatus {
                    status: status.to_owned(),
                    sub_status: sub_status.to_owned(),
                    details: String::new(),
                }),
            })
            .await
            .expect("UpdateRunStatus");
        }

        // An allow-list reload that adds a key.
        std::fs::write(
            &csv,
            format!(
                "{}\n{}\n",
                key_line("supernode_p384_derived"),
                key_line("stranger_p384_derived")
            ),
        )
        .expect("csv");
        proc.wait_for_log("reloaded --auth-list-public-keys", WAIT)
            .expect("reload");

        let (status, text) = http_get(metrics_port, "/metrics").await;
        assert_eq!(status, 200);
        for (series, value) in [
            (r#"flwr_grpc_requests_total{api="Fleet",method="CreateNode",code="OK"}"#, 1.0),
            (r#"flwr_grpc_requests_total{api="Fleet",method="Ping",code="OK"}"#, 1.0),
            (
                r#"flwr_grpc_requests_total{api="Fleet",method="CreateNode",code="UNAUTHENTICATED"}"#,
                1.0,
            ),
            (
                r#"flwr_grpc_requests_total{api="Fleet",method="Ping",code="UNAUTHENTICATED"}"#,
                1.0,
            ),
            (
                r#"flwr_grpc_requests_total{api="ServerAppIo",method="UpdateRunStatus",code="OK"}"#,
                3.0,
            ),
            (r#"flwr_grpc_request_duration_seconds_count{api="Fleet",method="Ping"}"#, 2.0),
            (r#"flwr_superlink_node_auth_refusals_total{reason="not_allowed"}"#, 1.0),
            (r#"flwr_superlink_node_auth_refusals_total{reason="bad_token"}"#, 1.0),
            (r#"flwr_superlink_allow_list_reloads_total{result="ok"}"#, 1.0),
            ("flwr_superlink_allow_list_keys", 2.0),
            ("flwr_superlink_nodes_registered", 1.0),
            ("flwr_superlink_nodes_online", 1.0),
            (r#"flwr_superlink_runs{status="finished"}"#, 1.0),
            (r#"flwr_superlink_runs{status="running"}"#, 0.0),
            ("flwr_superlink_held_pulls", 0.0),
            ("flwr_superlink_task_ins_stored", 0.0),
        ] {
            assert_sample(&text, series, value);
        }
        let received = sample(&text, r#"flwr_grpc_received_bytes_total{api="Fleet"}"#);
        assert!(received.is_some_and(|bytes| bytes > 0.0), "{text}");
        // The scrape's own connection is open while it is answered.
        assert!(sample(&text, "flwr_superlink_open_connections").is_some_and(|n| n >= 1.0));
        let (status, _) = http_get(metrics_port, "/").await;
        assert_eq!(status, 404);

        // Health, on the plaintext port and (through TLS) nowhere else needed: SERVING now.
        let serving = ServingStatus::Serving as i32;
        assert_eq!(health_status(health_port, "").await, serving);
        assert_eq!(health_status(health_port, "flwr.proto.Fleet").await, serving);
        assert_eq!(health_status(serverappio_port, "").await, serving);

        // Watch, then SIGTERM: NOT_SERVING arrives before the process is gone.
        let channel = Channel::from_shared(format!("http://127.0.0.1:{health_port}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("Watch")
            .into_inner();
        let first = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("first status")
            .expect("stream")
            .expect("an item");
        assert_eq!(first.status, serving);
        let pid = nix::unistd::Pid::from_raw(i32::try_from(proc.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        assert!(turns_not_serving(&mut watch).await, "no NOT_SERVING after SIGTERM");
        token_header
    });
    let status = proc.terminate(WAIT).expect("stop");
    assert!(status.success(), "{status}");

    // Every log line is one JSON object; the refusal carries its fields, never the token.
    let log = proc.log_text().expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let started = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("Starting Fleet API"))
        })
        .expect("start line");
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string());
    let refusal = lines
        .iter()
        .find(|line| line["message"] == "refused Fleet request")
        .expect("refusal line");
    assert_eq!(refusal["level"], "WARN");
    assert!(refusal["method"].is_string() && refusal["reason"].is_string());
    assert!(!log.contains(&token_header), "the auth token was logged");
    assert!(lines
        .iter()
        .any(|line| line["message"] == "SuperLink shutting down"));
}

/// A SuperLink on free loopback ports, without TLS, with `--metrics-address`.
async fn in_process(dir: &Path) -> (SuperLink, u16, u16) {
    let [fleet, serverappio, exec, metrics] = free_ports::<4>().expect("ports");
    let argv = [
        "flower-superlink".to_owned(),
        "--insecure".to_owned(),
        "--isolation".to_owned(),
        "process".to_owned(),
        "--storage-dir".to_owned(),
        dir.join("ffs").display().to_string(),
        "--fleet-api-address".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--serverappio-api-address".to_owned(),
        format!("127.0.0.1:{serverappio}"),
        "--exec-api-address".to_owned(),
        format!("127.0.0.1:{exec}"),
        "--metrics-address".to_owned(),
        format!("127.0.0.1:{metrics}"),
    ];
    let args = <Args as clap::Parser>::try_parse_from(argv).expect("flags parse");
    let config = Config::from_args(args).expect("valid config");
    let superlink = SuperLink::bind(config).await.expect("bind");
    (superlink, fleet, metrics)
}

#[tokio::test]
async fn health_turns_not_serving_as_soon_as_shutdown_begins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (superlink, fleet, _) = in_process(dir.path()).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The test owns this task and awaits it below.
    #[allow(clippy::disallowed_methods)]
    let server = tokio::spawn(superlink.run(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{fleet}"))
        .expect("uri")
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    // The servers come up after `run` starts: wait (bounded) for SERVING on the Fleet port.
    let mut watch = None;
    for _ in 0..100 {
        let request = HealthCheckRequest {
            service: "flwr.proto.Fleet".to_owned(),
        };
        if let Ok(response) = client.watch(request).await {
            let mut stream = response.into_inner();
            let first = tokio::time::timeout(WAIT, stream.message()).await;
            if let Ok(Ok(Some(item))) = first {
                if item.status == ServingStatus::Serving as i32 {
                    watch = Some(stream);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut watch = watch.expect("SERVING within 5 s");
    let _ = stop.send(());
    assert!(
        turns_not_serving(&mut watch).await,
        "no NOT_SERVING after shutdown began"
    );
    tokio::time::timeout(WAIT, server)
        .await
        .expect("SuperLink stops")
        .expect("task")
        .expect("clean stop");
}

/// The scrape with 50 000 registered nodes (in-memory state). Prints the time per scrape;
/// asserts only that the counts are right (no timing assertions in tests).
#[tokio::test]
async fn a_scrape_with_50_000_nodes_counts_them_all() {
    const NODES: usize = 50_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (superlink, _, metrics) = in_process(dir.path()).await;
    let state = std::sync::Arc::clone(&superlink.stores().state);
    for _ in 0..NODES {
        state.create_node(30.0, None).expect("create node");
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)]
    let server = tokio::spawn(superlink.run(async {
        let _ = stopped.await;
    }));
    let mut text = String::new();
    for _ in 0..100 {
        let connected = tokio::net::TcpStream::connect(("127.0.0.1", metrics)).await;
        if connected.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, body) = http_get(metrics, "/metrics").await;
        times.push(started.elapsed());
        assert_eq!(status, 200);
        text = body;
    }
    times.sort();
    eprintln!(
        "GET /metrics with {NODES} registered nodes: median {:?}, max {:?} over {} scrapes",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    assert_sample(&text, "flwr_superlink_nodes_registered", NODES as f64);
    assert_sample(&text, "flwr_superlink_nodes_online", NODES as f64);
    let _ = stop.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .expect("SuperLink stops")
        .expect("task")
        .expect("clean stop");
}
