//! What an operator sees of a SuperNode (issue #14): `/metrics` after a registration and a
//! message whose ClientApp fails, and gRPC health on the ClientAppIo port turning NOT_SERVING
//! when shutdown begins. Runs against an in-process SuperLink on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    CreateRunRequest, GetNodesRequest, Node, PushTaskInsRequest, RecordSet, RunStatus, Task,
    TaskIns, UpdateRunStatusRequest,
};
use flwr_supernode::{Args, Operations};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const WAIT: Duration = Duration::from_secs(30);

async fn scrape(port: u16) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request = "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(WAIT, exchange).await.ok().flatten();
    response
        .and_then(|text| text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()))
        .unwrap_or_default()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Scrapes until `series` has `value` (at most `WAIT`); returns the last scrape.
async fn wait_for_sample(port: u16, series: &str, value: f64) -> String {
    let mut text = String::new();
    for _ in 0..300 {
        text = scrape(port).await;
        if sample(&text, series) == Some(value) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never became {value}; last scrape:\n{text}");
}

fn failing_clientapp(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fake-flwr-clientapp");
    std::fs::write(&path, "#!/bin/sh\nexit 3\n").expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_message_and_health_follows_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let [fleet, serverappio, exec, clientappio, metrics] =
        flwr_testkit::free_ports::<5>().expect("ports");

    // The SuperLink, in-process.
    let argv = [
        "flower-superlink".to_owned(),
        "--insecure".to_owned(),
        "--isolation".to_owned(),
        "process".to_owned(),
        "--storage-dir".to_owned(),
        dir.path().join("ffs").display().to_string(),
        "--fleet-api-address".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--serverappio-api-address".to_owned(),
        format!("127.0.0.1:{serverappio}"),
        "--exec-api-address".to_owned(),
        format!("127.0.0.1:{exec}"),
    ];
    let args = flwr_superlink::Args::try_parse_from(argv).expect("flags");
    let config = flwr_superlink::Config::from_args(args).expect("config");
    let superlink = flwr_superlink::SuperLink::bind(config).await.expect("bind");
    let (stop_link, link_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // the test awaits it below
    let link = tokio::spawn(superlink.run(async {
        let _ = link_stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{serverappio}"))
        .expect("uri")
        .connect_lazy();
    let mut io = ServerAppIoClient::new(channel);
    let run_id = io
        .create_run(CreateRunRequest::default())
        .await
        .expect("CreateRun")
        .into_inner()
        .run_id;
    for status in ["starting", "running"] {
        io.update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: Some(RunStatus {
                status: status.to_owned(),
                ..RunStatus::default()
            }),
        })
        .await
        .expect("UpdateRunStatus");
    }

    // The SuperNode, in-process, with metrics and a ClientApp that exits 3.
    let cli = Args::try_parse_from([
        "flower-supernode".to_owned(),
        "--insecure".to_owned(),
        "--superlink".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--clientappio-api-address".to_owned(),
        format!("127.0.0.1:{clientappio}"),
        "--clientapp-lifetime".to_owned(),
        "per-message".to_owned(),
        "--metrics-address".to_owned(),
        format!("127.0.0.1:{metrics}"),
    ])
    .expect("flags");
    let operations: Operations = cli.operations().expect("operations");
    let mut config = cli.into_config().expect("config");
    config.clientapp_program = failing_clientapp(dir.path());
    config.flwr_dir = Some(dir.path().join("home"));
    let (stop_node, node_stopped) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // the test awaits it below
    let node = tokio::spawn(flwr_supernode::run_operated(config, operations, async {
        let _ = node_stopped.await;
    }));

    wait_for_sample(metrics, "flwr_supernode_registered", 1.0).await;
    let node_id = io
        .get_nodes(GetNodesRequest { run_id })
        .await
        .expect("GetNodes")
        .into_inner()
        .nodes[0]
        .node_id;
    let ins = TaskIns {
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
            created_at: now(),
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
        ..TaskIns::default()
    };
    io.push_task_ins(PushTaskInsRequest {
        task_ins_list: vec![ins],
        run_id,
    })
    .await
    .expect("PushTaskIns");

    let text = wait_for_sample(metrics, "flwr_supernode_tasks_failed_total", 1.0).await;
    for (series, value) in [
        ("flwr_supernode_tasks_received_total", 1.0),
        ("flwr_supernode_tasks_completed_total", 0.0),
        (r#"flwr_supernode_clientapp_exits_total{code="3"}"#, 1.0),
        ("flwr_supernode_clientapp_duration_seconds_count", 1.0),
        ("flwr_supernode_reconnects_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }

    // Health on the ClientAppIo port: SERVING, then NOT_SERVING once shutdown begins.
    let channel = Channel::from_shared(format!("http://127.0.0.1:{clientappio}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "flwr.proto.ClientAppIo".to_owned(),
        })
        .await
        .expect("Check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let _ = stop_node.send(());
    let mut not_serving = false;
    // tonic-health may repeat the current status once before the next change.
    for _ in 0..10 {
        match tokio::time::timeout(WAIT, watch.message()).await {
            Ok(Ok(Some(item))) if item.status == ServingStatus::NotServing as i32 => {
                not_serving = true;
                break;
            }
            Ok(Ok(Some(_))) => continue,
            _ => break,
        }
    }
    assert!(not_serving, "no NOT_SERVING after shutdown began");
    tokio::time::timeout(WAIT, node)
        .await
        .expect("SuperNode stops")
        .expect("task")
        .expect("clean stop");
    let _ = stop_link.send(());
    tokio::time::timeout(WAIT, link)
        .await
        .expect("SuperLink stops")
        .expect("task")
        .expect("clean stop");
}
