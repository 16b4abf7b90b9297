//! What the integration tests share: TLS files, keys, an in-process SuperLink of ours, and
//! running `flower-loadgen` as a process with a bounded wait.

// Each test file uses a different part of this module.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use flwr_superlink::{Args, Config, StartError, SuperLink};
use flwr_testkit::CommandLine;
use tokio::sync::oneshot;

/// Upper bound on one `flower-loadgen` run in these tests.
pub(crate) const LOADGEN_TIMEOUT: Duration = Duration::from_secs(120);

/// `ca.crt`, `server.pem`, `server.key` for 127.0.0.1 and localhost in `dir/certs`.
pub(crate) struct Certs {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) fn certs(dir: &Path) -> Certs {
    let certs = dir.join("certs");
    let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let files = flwr_keygen::certs::certificate_files(&certs, &hosts, 2).expect("certificates");
    flwr_keygen::files::write_all(&files, false).expect("write certificates");
    Certs {
        ca: certs.join("ca.crt"),
        cert: certs.join("server.pem"),
        key: certs.join("server.key"),
    }
}

/// Writes `nodes` key pairs into `dir` with `flower-loadgen --generate-keys --generate-only`.
pub(crate) fn generate_keys(dir: &Path, nodes: usize) {
    let output = loadgen(&[
        "--generate-keys",
        dir.to_str().expect("utf-8 path"),
        "--generate-only",
        "--nodes",
        &nodes.to_string(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(dir.join("client_public_keys.csv").is_file());
}

/// An allow-list in `path` holding only the first `count` keys of `keys/client_public_keys.csv`.
pub(crate) fn partial_allow_list(keys: &Path, count: usize, path: &Path) -> PathBuf {
    let csv = std::fs::read_to_string(keys.join("client_public_keys.csv")).expect("csv");
    let lines: Vec<&str> = csv.lines().take(count).collect();
    std::fs::write(path, format!("{}\n", lines.join("\n"))).expect("write csv");
    path.to_owned()
}

/// Runs `flower-loadgen` with `args` to completion (bounded).
pub(crate) fn loadgen(args: &[&str]) -> Output {
    CommandLine::new(env!("CARGO_BIN_EXE_flower-loadgen"))
        .args(args)
        .output(LOADGEN_TIMEOUT)
        .expect("flower-loadgen ends within the timeout")
}

/// Runs `flower-loadgen` off the async runtime, which serves the in-process SuperLink.
pub(crate) async fn loadgen_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        loadgen(&args)
    })
    .await
    .expect("loadgen thread")
}

/// stdout and stderr, for assertion messages.
pub(crate) fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The one JSON report a `--json` run printed.
pub(crate) fn report(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", text(output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected:\n{}", text(output));
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

/// Asserts the fields every report has.
pub(crate) fn assert_report_fields(report: &serde_json::Value) {
    for field in [
        "mode",
        "rpc",
        "nodes",
        "nodes_connected",
        "requests",
        "requests_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors_total",
        "errors",
        "seconds",
        "auth",
        "tls",
        "concurrency",
        "payload_bytes",
        "registration_s",
    ] {
        assert!(report.get(field).is_some(), "no {field} in {report}");
    }
    assert!(report["errors"].is_object(), "{report}");
}

/// Node authentication flags for a SuperLink, with the allow-list `csv`.
pub(crate) fn auth_flags(keys: &Path, csv: &Path) -> Vec<String> {
    vec![
        "--auth-list-public-keys".into(),
        csv.display().to_string(),
        "--auth-superlink-private-key".into(),
        keys.join("server_credentials").display().to_string(),
        "--auth-superlink-public-key".into(),
        keys.join("server_credentials.pub").display().to_string(),
    ]
}

/// Our SuperLink, served in-process over TLS with `--isolation process`.
pub(crate) struct OurSuperLink {
    pub(crate) fleet: String,
    pub(crate) serverappio: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
}

impl OurSuperLink {
    pub(crate) async fn start(dir: &Path, certs: &Certs, extra: &[String]) -> Self {
        let [fleet, serverappio, exec] = flwr_testkit::free_ports::<3>().expect("ports");
        let mut argv: Vec<String> = vec![
            "flower-superlink".into(),
            "--ssl-ca-certfile".into(),
            certs.ca.display().to_string(),
            "--ssl-certfile".into(),
            certs.cert.display().to_string(),
            "--ssl-keyfile".into(),
            certs.key.display().to_string(),
            "--isolation".into(),
            "process".into(),
            "--storage-dir".into(),
            dir.join("ffs").display().to_string(),
            "--fleet-api-address".into(),
            format!("127.0.0.1:{fleet}"),
            "--serverappio-api-address".into(),
            format!("127.0.0.1:{serverappio}"),
            "--exec-api-address".into(),
            format!("127.0.0.1:{exec}"),
        ];
        argv.extend(extra.iter().cloned());
        let args = <Args as clap::Parser>::try_parse_from(argv).expect("SuperLink flags parse");
        let config = Config::from_args(args).expect("valid SuperLink config");
        let superlink = SuperLink::bind(config).await.expect("SuperLink binds");
        let (sender, receiver) = oneshot::channel::<()>();
        // The test owns this task and awaits it in `stop`.
        #[allow(clippy::disallowed_methods)]
        let server = tokio::spawn(superlink.run(async {
            let _ = receiver.await;
        }));
        Self {
            fleet: format!("127.0.0.1:{fleet}"),
            serverappio: format!("127.0.0.1:{serverappio}"),
            shutdown: Some(sender),
            server: Some(server),
        }
    }

    /// Stops the SuperLink and waits (bounded) for it to finish.
    pub(crate) async fn stop(mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server)
                .await
                .expect("SuperLink stops within 20 s")
                .expect("server task")
                .expect("SuperLink ran without error");
        }
    }
}

impl Drop for OurSuperLink {
    fn drop(&mut self) {
        // A failed assertion skips `stop`; the task must not outlive the test's runtime.
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
