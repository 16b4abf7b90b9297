//! `--node-auth-mode hardened` against the `flower-superlink` binary, with tokens made by hand
//! with flwr-auth: a correctly bound request passes, and a byte-for-byte replay, a token reused
//! for another method, a 1.14 token and a stale time are refused, each under its own metrics
//! label. The same replay and cross-method reuse against the default mode pass, as they do with
//! the reference (the difference the mode makes). And the mode needs node authentication.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flwr_auth::hardened::{Binding, COUNTER_HEADER, TIME_HEADER};
use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::{
    canonical, CreateNodeRequest, DeleteNodeRequest, Node, PingRequest, PullTaskInsRequest,
};
use flwr_testkit::{free_ports, CommandLine, Pki, Proc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");
const WAIT: Duration = Duration::from_secs(30);
const PULL: &str = "/flwr.proto.Fleet/PullTaskIns";
const PING: &str = "/flwr.proto.Fleet/Ping";
const DELETE: &str = "/flwr.proto.Fleet/DeleteNode";

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

/// A node identity from the test vectors.
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

/// A SuperLink binary with TLS, node auth (P-384), `--metrics-address` and `extra` flags.
struct AuthSuperLink {
    proc: Proc,
    fleet: u16,
    metrics: u16,
    ca: Vec<u8>,
}

impl AuthSuperLink {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let pki = Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
        let csv = dir.join("allowed.csv");
        std::fs::write(&csv, format!("{}\n", key_line("supernode_p384_derived"))).expect("csv");
        let [fleet, serverappio, exec, metrics] = free_ports::<4>().expect("ports");
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
            .args(["--fleet-api-address", &format!("127.0.0.1:{fleet}")])
            .args([
                "--serverappio-api-address",
                &format!("127.0.0.1:{serverappio}"),
            ])
            .args(["--exec-api-address", &format!("127.0.0.1:{exec}")])
            .args(["--metrics-address", &format!("127.0.0.1:{metrics}")])
            // Empty pulls answered at once: this test sends many.
            .arg("--no-hold-pulls")
            .arg("--auth-list-public-keys")
            .arg(&csv)
            .arg("--auth-superlink-private-key")
            .arg(keys.join("superlink_p384_derived"))
            .arg("--auth-superlink-public-key")
            .arg(keys.join("superlink_p384_derived.pub"))
            .args(extra.iter().copied());
        let proc = Proc::spawn("superlink", &command, dir).expect("spawn");
        proc.wait_for_log("Starting Fleet API", WAIT)
            .expect("superlink starts");
        let ca = std::fs::read(&pki.ca_cert).expect("ca");
        Self {
            proc,
            fleet,
            metrics,
            ca,
        }
    }

    async fn fleet(&self) -> FleetClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", self.fleet))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect");
        FleetClient::new(channel)
    }

    /// `flwr_superlink_node_auth_refusals_total{reason="<reason>"}`.
    async fn refusals(&self, reason: &str) -> f64 {
        let text = scrape(self.metrics).await;
        let series = format!("flwr_superlink_node_auth_refusals_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in\n{text}"))
    }

    fn stop(mut self) -> String {
        let status = self.proc.terminate(Duration::from_secs(10)).expect("stop");
        assert!(status.success(), "{status}");
        self.proc.log_text().expect("log")
    }
}

/// The body of `GET /metrics`.
async fn scrape(port: u16) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the metrics port");
        let request = "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("scrape answered");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Registers `who` (CreateNode carries no token in either mode) and returns its node id and the
/// secret shared with the SuperLink.
async fn register(fleet: &mut FleetClient<Channel>, who: &Identity) -> (u64, SharedSecret) {
    let mut request = Request::new(CreateNodeRequest {
        ping_interval: 30.0,
    });
    let key = MetadataValue::try_from(who.header.as_str()).expect("ascii");
    request.metadata_mut().insert("public-key", key);
    let response = fleet
        .create_node(request)
        .await
        .expect("listed key registers");
    let superlink_key = response
        .metadata()
        .get("public-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| PublicKey::from_header(v).expect("superlink key"))
        .expect("SuperLink key header");
    let node_id = response.into_inner().node.expect("node").node_id;
    let secret = SharedSecret::derive(&who.private, &superlink_key).expect("secret");
    (node_id, secret)
}

fn node(node_id: u64) -> Option<Node> {
    Some(Node {
        node_id,
        anonymous: false,
    })
}

fn pull(node_id: u64) -> PullTaskInsRequest {
    PullTaskInsRequest {
        node: node(node_id),
        task_ids: Vec::new(),
    }
}

fn delete(node_id: u64) -> DeleteNodeRequest {
    DeleteNodeRequest {
        node: node(node_id),
    }
}

fn ping(node_id: u64) -> PingRequest {
    PingRequest {
        node: node(node_id),
        ping_interval: 30.0,
    }
}

/// The metadata a request carries: `public-key`, `auth-token` and, when hardened,
/// `flwr-auth-time` / `flwr-auth-counter`. Kept as text so a capture can be re-sent verbatim.
#[derive(Clone, Debug)]
struct Headers(Vec<(&'static str, String)>);

impl Headers {
    /// Flower 1.14's headers for `message`.
    fn compatible<T: prost::Message + prost::Name>(
        who: &Identity,
        secret: &SharedSecret,
        message: &T,
    ) -> Self {
        let bytes = canonical::encode(message).expect("canonical");
        Self(vec![
            ("public-key", who.header.clone()),
            ("auth-token", secret.sign(&bytes).header_value()),
        ])
    }

    /// Hardened headers for `message` sent to `method` at `time_ms` with `counter`.
    fn hardened<T: prost::Message + prost::Name>(
        who: &Identity,
        secret: &SharedSecret,
        method: &str,
        time_ms: u64,
        counter: u64,
        message: &T,
    ) -> Self {
        let bytes = canonical::encode(message).expect("canonical");
        let binding = Binding::new(method, time_ms, counter).expect("binding");
        Self(vec![
            ("public-key", who.header.clone()),
            (
                "auth-token",
                secret.sign_bound(&binding, &bytes).header_value(),
            ),
            (TIME_HEADER, time_ms.to_string()),
            (COUNTER_HEADER, counter.to_string()),
        ])
    }

    fn on<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        for (name, value) in &self.0 {
            let value = MetadataValue::try_from(value.as_str()).expect("ascii");
            request.metadata_mut().insert(*name, value);
        }
        request
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(since.as_millis()).expect("ms")
}

fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(status.message(), "Access denied", "{what}");
}

#[test]
fn hardened_mode_refuses_replays_reuse_for_another_method_1_14_tokens_and_stale_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let superlink = AuthSuperLink::start(
        dir.path(),
        &[
            "--node-auth-mode",
            "hardened",
            "--node-auth-max-clock-skew",
            "5",
        ],
    );
    let node = Identity::load("supernode_p384_derived");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut fleet = superlink.fleet().await;
        let (node_id, secret) = register(&mut fleet, &node).await;
        let counter = now_ms() * 1_000;

        // (4) A 1.14 token, first so that the rate-limited refusal log shows its line.
        let legacy = Headers::compatible(&node, &secret, &pull(node_id));
        refused(
            fleet.pull_task_ins(legacy.on(pull(node_id))).await,
            "1.14 token",
        );
        superlink
            .proc
            .wait_for_log(
                "1.14 token refused: hardened node auth requires flwr-auth-time/flwr-auth-counter \
                 (our SuperNode with --node-auth-mode hardened)",
                WAIT,
            )
            .expect("the refusal says why");
        assert_eq!(superlink.refusals("legacy_token").await, 1.0);

        // (1) A correctly bound request passes.
        let captured = Headers::hardened(&node, &secret, PULL, now_ms(), counter, &pull(node_id));
        fleet
            .pull_task_ins(captured.on(pull(node_id)))
            .await
            .expect("a bound PullTaskIns passes");

        // (2) The same request again, byte for byte: its counter was used.
        refused(
            fleet.pull_task_ins(captured.on(pull(node_id))).await,
            "replayed PullTaskIns",
        );
        assert_eq!(superlink.refusals("replayed").await, 1.0);

        // (3) The PullTaskIns token on DeleteNode, whose request has the very same bytes:
        // refused because the method is in the MAC...
        assert_eq!(
            canonical::encode(&pull(node_id)).expect("canonical"),
            canonical::encode(&delete(node_id)).expect("canonical")
        );
        refused(
            fleet.delete_node(captured.on(delete(node_id))).await,
            "PullTaskIns token on DeleteNode",
        );
        // ...not only because its counter was used: a token signed for PullTaskIns and never
        // sent is refused on DeleteNode and on Ping too, and still passes on PullTaskIns.
        let unsent = Headers::hardened(&node, &secret, PULL, now_ms(), counter + 1, &pull(node_id));
        refused(
            fleet.delete_node(unsent.on(delete(node_id))).await,
            "unsent PullTaskIns token on DeleteNode",
        );
        refused(
            fleet.ping(unsent.on(ping(node_id))).await,
            "unsent PullTaskIns token on Ping",
        );
        assert_eq!(superlink.refusals("bad_token").await, 3.0);
        fleet
            .pull_task_ins(unsent.on(pull(node_id)))
            .await
            .expect("the node was not deleted, and the counter was not used up");

        // Requests that overtake each other within the window all pass, once.
        for offset in [10, 7, 9, 8] {
            let headers = Headers::hardened(
                &node,
                &secret,
                PING,
                now_ms(),
                counter + offset,
                &ping(node_id),
            );
            let pinged = fleet
                .ping(headers.on(ping(node_id)))
                .await
                .expect("overtaken Ping passes");
            assert!(pinged.into_inner().success);
        }
        // A counter far behind the latest is refused too.
        let old = Headers::hardened(
            &node,
            &secret,
            PING,
            now_ms(),
            counter - 5_000,
            &ping(node_id),
        );
        refused(fleet.ping(old.on(ping(node_id))).await, "counter too old");
        assert_eq!(superlink.refusals("replayed").await, 2.0);

        // (5) A time outside the 5 s skew, either way, with a fresh counter.
        for (time, counter) in [
            (now_ms() - 60_000, counter + 100),
            (now_ms() + 60_000, counter + 101),
        ] {
            let stale = Headers::hardened(&node, &secret, PULL, time, counter, &pull(node_id));
            refused(
                fleet.pull_task_ins(stale.on(pull(node_id))).await,
                "time outside the skew",
            );
        }
        assert_eq!(superlink.refusals("clock_skew").await, 2.0);

        // A malformed counter is refused before anything else.
        let mut malformed = Headers::hardened(
            &node,
            &secret,
            PULL,
            now_ms(),
            counter + 200,
            &pull(node_id),
        );
        malformed.0[3].1 = format!("+{}", counter + 200);
        refused(
            fleet.pull_task_ins(malformed.on(pull(node_id))).await,
            "malformed counter",
        );
        assert_eq!(superlink.refusals("bad_token").await, 4.0);

        // A bound DeleteNode of its own passes.
        let headers = Headers::hardened(
            &node,
            &secret,
            DELETE,
            now_ms(),
            counter + 300,
            &delete(node_id),
        );
        fleet
            .delete_node(headers.on(delete(node_id)))
            .await
            .expect("a bound DeleteNode passes");
    });
    let log = superlink.stop();
    assert!(
        log.contains("Node authentication hardened"),
        "the mode is announced at start:\n{log}"
    );
}

#[test]
fn compatible_mode_accepts_replays_and_reuse_for_another_method_as_the_reference_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let superlink = AuthSuperLink::start(dir.path(), &[]);
    let node = Identity::load("supernode_p384_derived");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut fleet = superlink.fleet().await;
        let (node_id, secret) = register(&mut fleet, &node).await;
        let captured = Headers::compatible(&node, &secret, &pull(node_id));
        for _ in 0..3 {
            fleet
                .pull_task_ins(captured.on(pull(node_id)))
                .await
                .expect("a replayed 1.14 token passes, as with the reference");
        }
        // The captured PullTaskIns token deletes the node: same bytes, no method binding.
        fleet
            .delete_node(captured.on(delete(node_id)))
            .await
            .expect("a PullTaskIns token passes on DeleteNode, as with the reference");
        refused(
            fleet
                .ping(Headers::compatible(&node, &secret, &ping(node_id)).on(ping(node_id)))
                .await,
            "Ping of the deleted node",
        );
        assert_eq!(
            superlink.refusals("not_bound").await,
            1.0,
            "the node is gone"
        );
        // Hardened headers mean nothing here: the 1.14 token is checked, as by the reference.
        let (node_id, secret) = register(&mut fleet, &node).await;
        let hardened = Headers::hardened(&node, &secret, PULL, now_ms(), 1, &pull(node_id));
        refused(
            fleet.pull_task_ins(hardened.on(pull(node_id))).await,
            "a hardened token against the compatible mode",
        );
        assert_eq!(superlink.refusals("bad_token").await, 1.0);
        for reason in ["legacy_token", "replayed", "clock_skew"] {
            assert_eq!(superlink.refusals(reason).await, 0.0, "{reason}");
        }
    });
    superlink.stop();
}

/// Runs the binary with `args` and `env`, expecting it to refuse at once; returns stderr.
fn refused_start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env("FLWR_HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn flower-superlink");
    for _ in 0..200 {
        if child.try_wait().expect("poll child").is_some() {
            let output = child.wait_with_output().expect("collect output");
            assert!(!output.status.success());
            return String::from_utf8_lossy(&output.stderr).into_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("flower-superlink {args:?} did not exit within 10 s");
}

#[test]
fn the_hardened_mode_needs_node_auth_and_a_bounded_skew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let fleet = format!("127.0.0.1:{fleet}");
    let serverappio = format!("127.0.0.1:{serverappio}");
    let exec = format!("127.0.0.1:{exec}");
    let base = [
        "--insecure",
        "--fleet-api-address",
        &fleet,
        "--serverappio-api-address",
        &serverappio,
        "--exec-api-address",
        &exec,
    ];
    // From the environment too.
    let stderr = refused_start(dir.path(), &base, &[("FLWR_NODE_AUTH_MODE", "hardened")]);
    assert!(
        stderr.contains("--node-auth-mode hardened") && stderr.contains("--auth-list-public-keys"),
        "{stderr}"
    );
    let mut args = base.to_vec();
    args.extend(["--node-auth-max-clock-skew", "0"]);
    let stderr = refused_start(dir.path(), &args, &[]);
    assert!(stderr.contains("--node-auth-max-clock-skew"), "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--node-auth-max-clock-skew", "10"]);
    let stderr = refused_start(dir.path(), &args, &[]);
    assert!(
        stderr.contains("--node-auth-max-clock-skew only applies with --node-auth-mode hardened"),
        "{stderr}"
    );
    let help = Command::new(BINARY).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    for text in [
        "--node-auth-mode",
        "--node-auth-max-clock-skew",
        "FLWR_NODE_AUTH_MODE",
    ] {
        assert!(help.contains(text), "{text} missing from --help:\n{help}");
    }
}
