//! A model above the reference's 512 MiB limit between our SuperLink and the SuperNode's Fleet
//! client, both started with a raised `--grpc-max-message-length`: the TaskIns arrives and the
//! TaskRes returns intact. A SuperNode left at the default limit refuses the same TaskIns with
//! an error that names the flag.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    Array, CreateRunRequest, Node, ParametersRecord, PullTaskResRequest, PushTaskInsRequest,
    RecordSet, RunStatus, Task, TaskIns, TaskRes, UpdateRunStatusRequest,
};
use flwr_superlink::{Args, Config, StartError, SuperLink};
use flwr_supernode::backoff::RetryPolicy;
use flwr_supernode::fleet::{CallError, Fleet, Tls};
use flwr_supernode::signer::Unsigned;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Just above the reference's limit.
const PAYLOAD: usize = flwr_proto::MAX_MESSAGE_SIZE + (8 << 20);
/// The raised limit of both sides.
const LIMIT: usize = 640 << 20;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// A record set carrying one `PAYLOAD`-byte array with a recognisable pattern.
fn model(seed: u8) -> RecordSet {
    let data: Vec<u8> = (0..PAYLOAD)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let array = Array {
        dtype: "uint8".to_owned(),
        shape: vec![i32::try_from(PAYLOAD).expect("fits")],
        stype: "numpy.ndarray".to_owned(),
        data: data.into(),
    };
    RecordSet {
        parameters: HashMap::from([(
            "model".to_owned(),
            ParametersRecord {
                data_keys: vec!["weights".to_owned()],
                data_values: vec![array],
            },
        )]),
        ..RecordSet::default()
    }
}

fn digest(recordset: Option<&RecordSet>) -> Vec<u8> {
    let array = &recordset.expect("recordset").parameters["model"].data_values[0];
    assert_eq!(array.data.len(), PAYLOAD);
    Sha256::digest(&array.data).to_vec()
}

async fn start_superlink(
    limit: usize,
) -> (
    u16,
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), StartError>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let [fleet, serverappio, exec] = flwr_testkit::free_ports::<3>().expect("ports");
    let argv = [
        "flower-superlink".to_owned(),
        "--insecure".to_owned(),
        "--isolation".to_owned(),
        "process".to_owned(),
        "--storage-dir".to_owned(),
        dir.path().display().to_string(),
        "--fleet-api-address".to_owned(),
        format!("127.0.0.1:{fleet}"),
        "--serverappio-api-address".to_owned(),
        format!("127.0.0.1:{serverappio}"),
        "--exec-api-address".to_owned(),
        format!("127.0.0.1:{exec}"),
        "--grpc-max-message-length".to_owned(),
        limit.to_string(),
    ];
    let args = <Args as clap::Parser>::try_parse_from(argv).expect("flags parse");
    let superlink = SuperLink::bind(Config::from_args(args).expect("config"))
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The test owns the server task and awaits it at the end.
    #[allow(clippy::disallowed_methods)]
    let server = tokio::spawn(superlink.run(async {
        let _ = stopped.await;
    }));
    (fleet, serverappio, stop, server, dir)
}

fn fleet_client(port: u16, limit: Option<usize>) -> Fleet {
    let address = format!("127.0.0.1:{port}").parse().expect("address");
    let fleet = Fleet::connect(
        &address,
        &Tls::Insecure,
        Arc::new(Unsigned),
        RetryPolicy::default(),
        CancellationToken::new(),
    )
    .expect("channel");
    match limit {
        Some(limit) => fleet.with_max_message_size(limit),
        None => fleet,
    }
}

/// A running run on `io`, moved on by status as a ServerApp that took it would.
async fn running_run(io: &mut ServerAppIoClient<Channel>) -> u64 {
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
    run_id
}

fn instruction(run_id: u64, node_id: u64) -> TaskIns {
    TaskIns {
        run_id,
        group_id: "1".to_owned(),
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
            recordset: Some(model(7)),
            ..Task::default()
        }),
        ..TaskIns::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_above_512_mib_travels_both_ways_with_the_raised_limit() {
    let (fleet_port, io_port, stop, server, _dir) = start_superlink(LIMIT).await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{io_port}"))
        .expect("uri")
        .connect_lazy();
    let mut io = ServerAppIoClient::new(channel)
        .max_decoding_message_size(LIMIT)
        .max_encoding_message_size(LIMIT);
    let fleet = fleet_client(fleet_port, Some(LIMIT));
    let node = fleet.create_node().await.expect("CreateNode");
    let run_id = running_run(&mut io).await;

    let ins = instruction(run_id, node.node_id);
    let sent = digest(ins.task.as_ref().and_then(|t| t.recordset.as_ref()));
    let ids = io
        .push_task_ins(PushTaskInsRequest {
            task_ins_list: vec![ins],
            run_id,
        })
        .await
        .expect("PushTaskIns above 512 MiB")
        .into_inner()
        .task_ids;
    let pulled = tokio::time::timeout(Duration::from_secs(120), fleet.pull_task_ins(&node))
        .await
        .expect("bounded")
        .expect("PullTaskIns above 512 MiB")
        .task_ins
        .expect("the instruction");
    assert_eq!(pulled.task_id, ids[0]);
    let task = pulled.task.expect("task");
    assert_eq!(
        digest(task.recordset.as_ref()),
        sent,
        "the TaskIns arrived intact"
    );

    let reply_model = model(9);
    let returned = digest(Some(&reply_model));
    let created_at = now();
    let reply = TaskRes {
        run_id,
        group_id: "1".to_owned(),
        task: Some(Task {
            producer: Some(node),
            consumer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            created_at,
            ttl: task.ttl - (created_at - task.created_at),
            ancestry: vec![pulled.task_id.clone()],
            task_type: "train".to_owned(),
            recordset: Some(reply_model),
            ..Task::default()
        }),
        ..TaskRes::default()
    };
    drop(task);
    tokio::time::timeout(Duration::from_secs(120), fleet.push_task_res(&node, reply))
        .await
        .expect("bounded")
        .expect("PushTaskRes above 512 MiB");
    let replies = io
        .pull_task_res(PullTaskResRequest {
            node: None,
            task_ids: ids,
            run_id,
        })
        .await
        .expect("PullTaskRes")
        .into_inner()
        .task_res_list;
    assert_eq!(replies.len(), 1);
    let task = replies[0].task.as_ref().expect("task");
    assert_eq!(
        digest(task.recordset.as_ref()),
        returned,
        "the TaskRes returned intact"
    );

    // A SuperNode left at the reference's limit cannot take such a model, and says which flag
    // would let it.
    let small = fleet_client(fleet_port, None);
    let other = small.create_node().await.expect("CreateNode");
    io.push_task_ins(PushTaskInsRequest {
        task_ins_list: vec![instruction(run_id, other.node_id)],
        run_id,
    })
    .await
    .expect("PushTaskIns");
    let error = tokio::time::timeout(Duration::from_secs(120), small.pull_task_ins(&other))
        .await
        .expect("bounded")
        .expect_err("over the SuperNode's limit");
    match &error {
        CallError::Rejected { status, .. } => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("--grpc-max-message-length"),
                "{status:?}"
            );
        }
        other => panic!("unexpected error: {other}"),
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the SuperLink stops")
        .expect("server task")
        .expect("SuperLink ran without error");
}
