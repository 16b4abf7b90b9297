//! Our SuperNode with `--node-auth-mode hardened` against our SuperLink in the same mode, both
//! in-process with TLS and node auth: the node registers, pings, pulls an instruction, fetches
//! its run and pushes its reply, and leaves with DeleteNode, without a single refusal. Every
//! call but CreateNode carries a hardened token (the SuperLink refuses 1.14 tokens in this
//! mode, so a zero `legacy_token` count means none was sent).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser as _;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    CreateRunRequest, GetNodesRequest, Node, PullTaskResRequest, PushTaskInsRequest, RecordSet,
    RunStatus, Task, TaskIns, UpdateRunStatusRequest,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

fn keys() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/keys")
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

/// The value of the sample `series` (name and labels, exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn fleet_ok(text: &str, method: &str) -> f64 {
    sample(
        text,
        &format!(r#"flwr_grpc_requests_total{{api="Fleet",method="{method}",code="OK"}}"#),
    )
}

/// Every `flwr_superlink_node_auth_refusals_total` sample that is not zero.
fn refusals(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| line.starts_with("flwr_superlink_node_auth_refusals_total"))
        .filter(|line| !line.ends_with(" 0"))
        .collect()
}

/// A stand-in for `flwr-clientapp` that fails at once: the node then answers with the
/// reference's error reply, which is all this test needs to see a PushTaskRes.
fn failing_clientapp(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fake-flwr-clientapp");
    std::fs::write(&path, "#!/bin/sh\nexit 1\n").expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn task_ins(run_id: u64, node_id: u64) -> TaskIns {
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    TaskIns {
        task_id: String::new(),
        group_id: "1".to_owned(),
        run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(Node {
                node_id,
                anonymous: false,
            }),
            created_at,
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

/// Creates a running run (ServerAppIo wants one for GetNodes and PushTaskIns).
async fn running_run(io: &mut ServerAppIoClient<Channel>) -> u64 {
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
    for status in ["starting", "running"] {
        io.update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: Some(RunStatus {
                status: status.to_owned(),
                sub_status: String::new(),
                details: String::new(),
            }),
        })
        .await
        .expect("UpdateRunStatus");
    }
    run_id
}

/// Polls (bounded) until `check` returns `Some`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_supernode_works_with_a_hardened_superlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let pki = flwr_testkit::Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
    let csv = dir.join("allowed.csv");
    let listed = std::fs::read_to_string(keys().join("supernode_p384_derived.pub")).expect("key");
    std::fs::write(&csv, listed).expect("csv");
    let [fleet, serverappio, exec, metrics, clientappio] =
        flwr_testkit::free_ports::<5>().expect("ports");
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
        path(&keys().join("superlink_p384_derived")),
        "--auth-superlink-public-key".to_owned(),
        path(&keys().join("superlink_p384_derived.pub")),
        "--node-auth-mode".to_owned(),
        "hardened".to_owned(),
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
        format!("127.0.0.1:{metrics}"),
    ];
    let args = flwr_superlink::Args::try_parse_from(argv).expect("flags");
    let config = flwr_superlink::Config::from_args(args).expect("config");
    let superlink = flwr_superlink::SuperLink::bind(config).await.expect("bind");
    let (stop_link, link_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // awaited below
    let link = tokio::spawn(superlink.run(async {
        let _ = link_stopped.await;
    }));

    let cli = flwr_supernode::Args::try_parse_from([
        "flower-supernode".to_owned(),
        "--root-certificates".to_owned(),
        path(&pki.ca_cert),
        "--superlink".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--auth-supernode-private-key".to_owned(),
        path(&keys().join("supernode_p384_derived")),
        "--auth-supernode-public-key".to_owned(),
        path(&keys().join("supernode_p384_derived.pub")),
        "--node-auth-mode".to_owned(),
        "hardened".to_owned(),
        "--clientapp-lifetime".to_owned(),
        "per-message".to_owned(),
        "--clientappio-api-address".to_owned(),
        format!("127.0.0.1:{clientappio}"),
    ])
    .expect("flags");
    let mut config = cli.into_config().expect("config");
    config.flwr_dir = Some(dir.join("home"));
    config.clientapp_program = failing_clientapp(dir);
    let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // awaited below
    let node = tokio::spawn(flwr_supernode::run(config, async {
        let _ = node_stopped.await;
    }));

    // The node registers and pings.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{serverappio}"))
        .expect("uri")
        .connect_lazy();
    let mut io = ServerAppIoClient::new(channel);
    let run_id = running_run(&mut io).await;
    let node_id = eventually("the node to register and ping", || {
        let mut io = io.clone();
        async move {
            let nodes = io
                .get_nodes(GetNodesRequest { run_id })
                .await
                .ok()?
                .into_inner()
                .nodes;
            nodes.first().map(|node| node.node_id)
        }
    })
    .await;

    // An instruction for it: pulled, its run fetched, a reply pushed.
    let task_id = io
        .push_task_ins(PushTaskInsRequest {
            task_ins_list: vec![task_ins(run_id, node_id)],
            run_id,
        })
        .await
        .expect("PushTaskIns")
        .into_inner()
        .task_ids
        .remove(0);
    let reply = eventually("the node's reply", || {
        let mut io = io.clone();
        let task_ids = vec![task_id.clone()];
        async move {
            io.pull_task_res(PullTaskResRequest {
                node: None,
                task_ids,
                run_id,
            })
            .await
            .ok()?
            .into_inner()
            .task_res_list
            .pop()
        }
    })
    .await;
    let task = reply.task.expect("task");
    assert_eq!(task.producer.expect("producer").node_id, node_id);
    assert_eq!(task.ancestry, [task_id]);
    assert!(task.error.is_some(), "the failing ClientApp's error reply");

    // Everything so far passed; Ping may take a moment after registration.
    let text = eventually("the first Ping", || async {
        let text = scrape(metrics).await;
        (fleet_ok(&text, "Ping") >= 1.0).then_some(text)
    })
    .await;
    for method in ["CreateNode", "Ping", "PullTaskIns", "GetRun", "PushTaskRes"] {
        assert!(fleet_ok(&text, method) >= 1.0, "no OK {method} in\n{text}");
    }
    assert_eq!(refusals(&text), Vec::<&str>::new(), "refusals in\n{text}");

    // Leaving: DeleteNode, hardened too.
    let _ = stop_node.send(());
    tokio::time::timeout(WAIT, node)
        .await
        .expect("SuperNode stops")
        .expect("task")
        .expect("clean stop");
    let text = scrape(metrics).await;
    assert!(
        fleet_ok(&text, "DeleteNode") >= 1.0,
        "no OK DeleteNode in\n{text}"
    );
    // The pull held when the node left ends empty (its node is gone), not as a refusal.
    assert_eq!(refusals(&text), Vec::<&str>::new(), "refusals in\n{text}");

    let _ = stop_link.send(());
    tokio::time::timeout(WAIT, link)
        .await
        .expect("SuperLink stops")
        .expect("task")
        .expect("clean stop");
}
