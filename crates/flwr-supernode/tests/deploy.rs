//! `deploy/` stays true to the binaries: the Grafana dashboard names only metrics that a running
//! SuperLink (TLS and node auth, so every metric is registered) and SuperNode export, its `job`
//! labels are the Prometheus configuration's jobs, and the systemd units verify (when
//! `systemd-analyze` is installed; skipped with a message otherwise).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The body of `GET /metrics`, retried (bounded) until the port answers.
async fn scrape(port: u16) -> String {
    for _ in 0..100 {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let request = "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n";
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
        };
        if let Ok(Some(body)) = tokio::time::timeout(WAIT, exchange).await {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing answered on the metrics port {port}");
}

/// The sample names an exposition can carry, from its `# TYPE` lines (present for every
/// registered metric, even one without samples yet).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Every PromQL expression of the dashboard.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// Identifiers in `expr` that start with `prefix` (metric names; PromQL functions and labels
/// never do).
fn identifiers<'a>(expr: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(prefix) {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        found.push(&tail[..end]);
        rest = &tail[end..];
    }
    found
}

/// The SuperLink (TLS and node auth) and a SuperNode, both with `--metrics-address`; returns
/// both expositions.
async fn expositions(dir: &Path) -> (String, String) {
    let pki = flwr_testkit::Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
    let keys = repo().join("testdata/vectors/keys");
    let csv = dir.join("allowed.csv");
    let listed = std::fs::read_to_string(keys.join("supernode_p384_derived.pub")).expect("key");
    std::fs::write(&csv, listed).expect("csv");
    let [fleet, serverappio, exec, link_metrics, clientappio, node_metrics, nowhere] =
        flwr_testkit::free_ports::<7>().expect("ports");
    let path = |p: &Path| p.display().to_string();
    let argv = [
        "flower-superlink".to_owned(),
        "--ssl-ca-certfile".to_owned(),
        path(&pki.ca_cert),
        "--ssl-certfile".to_owned(),
        path(&pki.server_cert),
        "--ssl-keyfile".to_owned(),
        path(&pki.server_key),
        "--auth-list-public-keys".to_owned(),
        path(&csv),
        "--auth-superlink-private-key".to_owned(),
        path(&keys.join("superlink_p384_derived")),
        "--auth-superlink-public-key".to_owned(),
        path(&keys.join("superlink_p384_derived.pub")),
        "--isolation".to_owned(),
        "process".to_owned(),
        "--storage-dir".to_owned(),
        path(&dir.join("ffs")),
        "--fleet-api-address".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--serverappio-api-address".to_owned(),
        format!("127.0.0.1:{serverappio}"),
        "--exec-api-address".to_owned(),
        format!("127.0.0.1:{exec}"),
        "--metrics-address".to_owned(),
        format!("127.0.0.1:{link_metrics}"),
    ];
    let args = flwr_superlink::Args::try_parse_from(argv).expect("flags");
    let config = flwr_superlink::Config::from_args(args).expect("config");
    let superlink = flwr_superlink::SuperLink::bind(config).await.expect("bind");
    let (stop_link, link_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // awaited below
    let link = tokio::spawn(superlink.run(async {
        let _ = link_stopped.await;
    }));

    // The SuperNode's metric names do not depend on reaching a SuperLink: it retries a port
    // where nothing listens while it is scraped.
    let cli = flwr_supernode::Args::try_parse_from([
        "flower-supernode".to_owned(),
        "--insecure".to_owned(),
        "--superlink".to_owned(),
        format!("127.0.0.1:{nowhere}"),
        "--clientappio-api-address".to_owned(),
        format!("127.0.0.1:{clientappio}"),
        "--metrics-address".to_owned(),
        format!("127.0.0.1:{node_metrics}"),
    ])
    .expect("flags");
    let operations = cli.operations().expect("operations");
    let mut config = cli.into_config().expect("config");
    config.flwr_dir = Some(dir.join("home"));
    let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // awaited below
    let node = tokio::spawn(flwr_supernode::run_operated(config, operations, async {
        let _ = node_stopped.await;
    }));

    let link_text = scrape(link_metrics).await;
    let node_text = scrape(node_metrics).await;
    let _ = stop_node.send(());
    let _ = tokio::time::timeout(WAIT, node)
        .await
        .expect("SuperNode stops");
    let _ = stop_link.send(());
    tokio::time::timeout(WAIT, link)
        .await
        .expect("SuperLink stops")
        .expect("task")
        .expect("clean stop");
    (link_text, node_text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_only_exported_metrics_of_configured_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (link, node) = expositions(dir.path()).await;
    let mut exported = exported_names(&link);
    exported.extend(exported_names(&node));
    assert!(
        exported.contains("flwr_superlink_node_auth_refusals_total"),
        "{link}"
    );
    assert!(exported.contains("flwr_supernode_registered"), "{node}");

    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/flower-rs.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    let prometheus = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    let jobs: BTreeSet<&str> = prometheus
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- job_name:"))
        .map(str::trim)
        .collect();
    for expr in &exprs {
        for name in identifiers(expr, "flwr_") {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which no binary exports: {expr}"
            );
        }
        let mut rest = expr.as_str();
        while let Some(start) = rest.find("job=\"") {
            let tail = &rest[start + 5..];
            let end = tail.find('"').expect("closing quote");
            assert!(
                jobs.contains(&tail[..end]),
                "job {} is not in prometheus.yml ({jobs:?})",
                &tail[..end]
            );
            rest = &tail[end..];
        }
    }
}

#[test]
fn the_systemd_units_verify() {
    let Ok(found) = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
    else {
        eprintln!("skipped: no shell to look for systemd-analyze");
        return;
    };
    if !found.status.success() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart's program exists: point it at an executable that does.
    let program = std::env::current_exe().expect("test binary");
    let mut units = Vec::new();
    for name in ["flower-superlink", "flower-supernode"] {
        let text = std::fs::read_to_string(repo().join(format!("deploy/systemd/{name}.service")))
            .expect("unit");
        let installed = format!("/usr/local/bin/{name}");
        assert!(text.contains(&installed), "{name}.service runs {installed}");
        let unit = dir.path().join(format!("{name}.service"));
        std::fs::write(
            &unit,
            text.replace(&installed, &program.display().to_string()),
        )
        .expect("unit copy");
        units.push(unit);
    }
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze runs");
    // verify reports unknown keys and bad values as warnings with exit status 0: any output
    // is a finding.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "{report}"
    );
}
