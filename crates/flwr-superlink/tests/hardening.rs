//! The `flower-superlink` binary against what a stranger or an operator's slip can do to it:
//! liveness claims from a public key alone, allow-list files caught mid-write or on the wrong
//! curve, and unauthenticated APIs listening beyond loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    canonical, CreateNodeRequest, CreateRunRequest, GetNodesRequest, Node, PingRequest, RunStatus,
    UpdateRunStatusRequest,
};
use flwr_testkit::{free_ports, CommandLine, Pki, Proc};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request};

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");
const STARTED: &str = "Starting Fleet API";
const WAIT: Duration = Duration::from_secs(30);

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors")
}

/// The OpenSSH public key line of a test-vector key, without its newline.
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

/// A SuperLink binary with TLS and node auth (P-384 key pair) on free loopback ports.
struct AuthSuperLink {
    proc: Proc,
    csv: PathBuf,
    fleet: u16,
    serverappio: u16,
    ca: Vec<u8>,
}

impl AuthSuperLink {
    fn start(dir: &Path, csv_content: &str, extra: &[&str]) -> Self {
        let pki = Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
        let csv = dir.join("allowed.csv");
        std::fs::write(&csv, csv_content).expect("csv");
        let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
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
            .arg("--auth-list-public-keys")
            .arg(&csv)
            .arg("--auth-superlink-private-key")
            .arg(keys.join("superlink_p384_derived"))
            .arg("--auth-superlink-public-key")
            .arg(keys.join("superlink_p384_derived.pub"))
            .args(extra.iter().copied());
        let proc = Proc::spawn("superlink", &command, dir).expect("spawn");
        proc.wait_for_log(STARTED, WAIT).expect("superlink starts");
        let ca = std::fs::read(&pki.ca_cert).expect("ca");
        Self {
            proc,
            csv,
            fleet,
            serverappio,
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

    fn serverappio(&self) -> ServerAppIoClient<Channel> {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.serverappio))
            .expect("uri")
            .connect_lazy();
        ServerAppIoClient::new(channel)
    }

    fn stop(mut self) {
        let status = self.proc.terminate(Duration::from_secs(10)).expect("stop");
        assert!(status.success(), "{status}");
    }
}

fn create_request(who: &Identity, ping_interval: f64) -> Request<CreateNodeRequest> {
    let mut request = Request::new(CreateNodeRequest { ping_interval });
    let key = MetadataValue::try_from(who.header.as_str()).expect("ascii");
    request.metadata_mut().insert("public-key", key);
    request
}

/// Registers `who` with the reference SuperNode's 30 s and returns its node and secret.
async fn register(client: &mut FleetClient<Channel>, who: &Identity) -> (u64, SharedSecret) {
    let response = client
        .create_node(create_request(who, 30.0))
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

fn signed_ping(
    who: &Identity,
    secret: &SharedSecret,
    node_id: u64,
    ping_interval: f64,
) -> Request<PingRequest> {
    let message = PingRequest {
        node: Some(Node {
            node_id,
            anonymous: false,
        }),
        ping_interval,
    };
    let token = secret
        .sign(&canonical::encode(&message).expect("canonical"))
        .header_value();
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "public-key",
        MetadataValue::try_from(who.header.as_str()).expect("ascii"),
    );
    metadata.insert(
        "auth-token",
        MetadataValue::try_from(token.as_str()).expect("ascii"),
    );
    request
}

/// The online node ids, as a ServerApp sees them (GetNodes needs an existing run).
async fn online_nodes(io: &mut ServerAppIoClient<Channel>, run_id: u64) -> Vec<u64> {
    let response = io
        .get_nodes(GetNodesRequest { run_id })
        .await
        .expect("GetNodes");
    response
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.node_id)
        .collect()
}

/// A running run, so that GetNodes answers.
async fn create_run(io: &mut ServerAppIoClient<Channel>) -> u64 {
    let request = CreateRunRequest {
        fab_id: "tester/app".into(),
        fab_version: "1.0.0".into(),
        ..CreateRunRequest::default()
    };
    let run_id = io
        .create_run(request)
        .await
        .expect("CreateRun")
        .into_inner()
        .run_id;
    for status in ["starting", "running"] {
        let request = UpdateRunStatusRequest {
            run_id,
            run_status: Some(RunStatus {
                status: status.to_owned(),
                sub_status: String::new(),
                details: String::new(),
            }),
        };
        io.update_run_status(request)
            .await
            .expect("UpdateRunStatus");
    }
    run_id
}

const BAD_INTERVALS: [f64; 6] = [-1e9, 0.0, f64::INFINITY, f64::NAN, -0.0, 1e9];

#[test]
fn ping_intervals_that_break_liveness_are_invalid_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Identity::load("supernode_p384_derived");
    let database = dir.path().join("state.db");
    let database = database.display().to_string();
    let superlink = AuthSuperLink::start(
        dir.path(),
        &format!("{}\n", key_line("supernode_p384_derived")),
        &["--database", &database],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut fleet = superlink.fleet().await;
        let mut io = superlink.serverappio();
        let run_id = create_run(&mut io).await;
        let (node_id, secret) = register(&mut fleet, &node).await;
        for interval in BAD_INTERVALS {
            let status = fleet
                .create_node(create_request(&node, interval))
                .await
                .expect_err("CreateNode refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{interval}: {status:?}"
            );
            let status = fleet
                .ping(signed_ping(&node, &secret, node_id, interval))
                .await
                .expect_err("Ping refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{interval}: {status:?}"
            );
        }
        // None of them touched the node's liveness.
        assert_eq!(online_nodes(&mut io, run_id).await, [node_id]);
        let pinged = fleet
            .ping(signed_ping(&node, &secret, node_id, 30.0))
            .await
            .expect("a sane Ping");
        assert!(pinged.into_inner().success);
    });
    superlink.stop();
}

#[test]
fn registering_a_key_again_never_shortens_its_nodes_liveness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Identity::load("supernode_p384_derived");
    let superlink = AuthSuperLink::start(
        dir.path(),
        &format!("{}\n", key_line("supernode_p384_derived")),
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut fleet = superlink.fleet().await;
        let mut io = superlink.serverappio();
        let run_id = create_run(&mut io).await;
        let (node_id, _) = register(&mut fleet, &node).await;
        // Anyone who knows the public key can send CreateNode (it carries no token).
        let again = fleet
            .create_node(create_request(&node, 0.001))
            .await
            .expect("the key gets its node back")
            .into_inner();
        assert_eq!(again.node.expect("node").node_id, node_id);
        // Far longer than the claimed 1 ms, far shorter than the node's own 30 s.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(online_nodes(&mut io, run_id).await, [node_id]);
    });
    superlink.stop();
}

/// Runs the binary with `args`, bounded: a refused configuration exits at once.
fn run_refused(dir: &Path, args: &[String]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env("FLWR_HOME", dir.join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flower-superlink");
    for _ in 0..200 {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("collect output");
    panic!(
        "flower-superlink did not exit within 10 s; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the binary with node auth and the allow-list `csv`; returns its one error line.
fn start_error(csv: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate_with_openssl(&dir.path().join("certs")).expect("openssl PKI");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let keys = vectors().join("keys");
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "--ssl-ca-certfile".into(),
        path(&pki.ca_cert),
        "--ssl-certfile".into(),
        path(&pki.server_cert),
        "--ssl-keyfile".into(),
        path(&pki.server_key),
        "--fleet-api-address".into(),
        format!("127.0.0.1:{fleet}"),
        "--serverappio-api-address".into(),
        format!("127.0.0.1:{serverappio}"),
        "--exec-api-address".into(),
        format!("127.0.0.1:{exec}"),
        "--auth-list-public-keys".into(),
        path(csv),
        "--auth-superlink-private-key".into(),
        path(&keys.join("superlink_p384_derived")),
        "--auth-superlink-public-key".into(),
        path(&keys.join("superlink_p384_derived.pub")),
    ];
    let output = run_refused(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("Starting Exec API"),
        "half-started:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    errors[0].to_owned()
}

#[test]
fn an_allow_list_with_a_key_on_another_curve_is_refused_at_start() {
    let csv = vectors().join("csv_examples/valid_p256_key.csv");
    let line = start_error(&csv);
    assert!(
        line.contains("--auth-list-public-keys")
            && line.contains("valid_p256_key.csv")
            && line.contains("line 1, column 1")
            && line.contains("P-256"),
        "{line}"
    );
}

#[test]
fn an_empty_allow_list_is_refused_at_start() {
    let csv = vectors().join("csv_examples/valid_empty_file.csv");
    let line = start_error(&csv);
    assert!(
        line.contains("--auth-list-public-keys") && line.contains("no public keys"),
        "{line}"
    );
}

#[test]
fn an_emptied_or_wrong_curve_allow_list_is_refused_at_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Identity::load("supernode_p384_derived");
    let superlink = AuthSuperLink::start(
        dir.path(),
        &format!("{}\n", key_line("supernode_p384_derived")),
        &[],
    );
    // An editor truncated the file (and crashed, or has not written yet).
    std::fs::write(&superlink.csv, "").expect("empty csv");
    superlink
        .proc
        .wait_for_log("lists no public keys", WAIT)
        .expect("the empty file is refused");
    // A P-256 key against the P-384 SuperLink.
    std::fs::write(
        &superlink.csv,
        format!("{}\n", key_line("supernode_p256_derived")),
    )
    .expect("p256 csv");
    superlink
        .proc
        .wait_for_log("line 1, column 1: key is on P-256", WAIT)
        .expect("the wrong-curve file is refused");
    let log = superlink.proc.log_text().expect("log");
    assert!(!log.contains("reloaded --auth-list-public-keys"), "{log}");
    // The listed node is still admitted.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut fleet = superlink.fleet().await;
        register(&mut fleet, &node).await;
    });
    superlink.stop();
}

#[test]
fn apis_without_authentication_beyond_loopback_are_named_in_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let spawn = |serverappio_host: &str, exec_host: &str, name: &str| {
        let command = CommandLine::new(BINARY)
            .env("FLWR_HOME", dir.path().join("home"))
            .args(["--insecure", "--isolation", "process", "--storage-dir"])
            .arg(dir.path().join("ffs"))
            .args(["--fleet-api-address", &format!("127.0.0.1:{fleet}")])
            .args([
                "--serverappio-api-address",
                &format!("{serverappio_host}:{serverappio}"),
            ])
            .args(["--exec-api-address", &format!("{exec_host}:{exec}")]);
        let log_dir = dir.path().join(name);
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let proc = Proc::spawn(name, &command, &log_dir).expect("spawn");
        proc.wait_for_log(STARTED, WAIT).expect("superlink starts");
        proc
    };

    let mut exposed = spawn("0.0.0.0", "0.0.0.0", "exposed");
    let log = exposed.log_text().expect("log");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("listens beyond loopback"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("--serverappio-api-address")
                && l.contains(&format!("0.0.0.0:{serverappio}"))
                && l.contains("every task")),
        "{log}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("--exec-api-address")
            && l.contains(&format!("0.0.0.0:{exec}"))
            && l.contains("StartRun")
            && l.contains("every SuperNode")),
        "{log}"
    );
    let status = exposed.terminate(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{status}");

    let mut local = spawn("127.0.0.1", "127.0.0.1", "local");
    let log = local.log_text().expect("log");
    assert!(!log.contains("listens beyond loopback"), "{log}");
    let status = local.terminate(Duration::from_secs(10)).expect("stop");
    assert!(status.success(), "{status}");
}
