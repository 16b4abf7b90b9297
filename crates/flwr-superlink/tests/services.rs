//! The Fleet, ServerAppIo and Exec services of an in-process SuperLink, driven by tonic clients
//! over loopback: the reference's status codes and details, the run lifecycle, TaskIns/TaskRes
//! relay, log streaming, and the ServerApp launcher's supervision.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flwr_proto::exec_client::ExecClient;
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    CreateNodeRequest, DeleteNodeRequest, Fab, GetAuthTokensRequest, GetFabRequest,
    GetLoginDetailsRequest, GetNodesRequest, GetRunRequest, GetRunStatusRequest, ListRunsRequest,
    Node, PingRequest, PullServerAppInputsRequest, PullTaskInsRequest, PullTaskResRequest,
    PushLogsRequest, PushServerAppOutputsRequest, PushTaskInsRequest, PushTaskResRequest,
    RecordSet, Run, RunStatus, StartRunRequest, StopRunRequest, StreamLogsRequest, Task, TaskIns,
    TaskRes, UpdateRunStatusRequest,
};
use flwr_superlink::{Args, Config, StartError, SuperLink};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;

const PYPROJECT: &str = r#"
[project]
name = "miniapp"
version = "1.2.3"

[tool.flwr.app]
publisher = "tester"

[tool.flwr.app.components]
serverapp = "miniapp.server_app:app"
clientapp = "miniapp.client_app:app"
"#;

/// A SuperLink served in-process, with clients for its three APIs.
struct Harness {
    fleet: FleetClient<Channel>,
    exec: ExecClient<Channel>,
    io: ServerAppIoClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
    /// Holds the FAB storage directory for the life of the SuperLink.
    _dir: tempfile::TempDir,
}

/// Options of [`Harness::start`].
#[derive(Default)]
struct Options {
    /// `--isolation subprocess` with this program as `flwr-serverapp`; `None` = `process`.
    serverapp: Option<PathBuf>,
    /// `--database` value; `None` = the in-memory default.
    database: Option<String>,
    /// `--no-hold-pulls`: answer pulls that do not ask for a hold at once.
    no_hold_pulls: bool,
}

impl Harness {
    async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let [fleet, serverappio, exec] = flwr_testkit::free_ports::<3>().expect("ports");
        let isolation = if options.serverapp.is_some() {
            "subprocess"
        } else {
            "process"
        };
        let storage = dir.path().join("ffs");
        let argv = [
            "flower-superlink".to_owned(),
            "--insecure".to_owned(),
            "--isolation".to_owned(),
            isolation.to_owned(),
            "--storage-dir".to_owned(),
            storage.display().to_string(),
            "--fleet-api-address".to_owned(),
            format!("127.0.0.1:{fleet}"),
            "--serverappio-api-address".to_owned(),
            format!("127.0.0.1:{serverappio}"),
            "--exec-api-address".to_owned(),
            format!("127.0.0.1:{exec}"),
        ];
        let mut argv = argv.to_vec();
        if let Some(database) = options.database {
            argv.extend(["--database".to_owned(), database]);
        }
        if options.no_hold_pulls {
            argv.push("--no-hold-pulls".to_owned());
        }
        let args = <Args as clap::Parser>::try_parse_from(argv).expect("flags parse");
        let config = Config::from_args(args).expect("valid config");
        let mut superlink = SuperLink::bind(config)
            .await
            .expect("bind")
            .with_launcher_poll_interval(Duration::from_millis(200));
        if let Some(program) = options.serverapp {
            superlink = superlink.with_serverapp_program(program);
        }
        let (sender, receiver) = oneshot::channel::<()>();
        // Tests own this task and await it in `stop`.
        #[allow(clippy::disallowed_methods)]
        let server = tokio::spawn(superlink.run(async {
            let _ = receiver.await;
        }));
        let channel = |port: u16| {
            Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("uri")
                .connect_lazy()
        };
        Self {
            fleet: FleetClient::new(channel(fleet)),
            exec: ExecClient::new(channel(exec)),
            io: ServerAppIoClient::new(channel(serverappio)),
            shutdown: Some(sender),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Shuts the SuperLink down and waits (bounded) for `run` to return.
    async fn stop(&mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
        if let Some(server) = self.server.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("SuperLink stops within 10 s")
                .expect("server task");
            result.expect("SuperLink ran without error");
        }
    }

    async fn create_node(&mut self) -> u64 {
        let node = self
            .fleet
            .create_node(CreateNodeRequest {
                ping_interval: 30.0,
            })
            .await
            .expect("CreateNode")
            .into_inner()
            .node
            .expect("node");
        assert!(!node.anonymous);
        assert_ne!(node.node_id, 0);
        node.node_id
    }

    async fn start_run(&mut self, content: Vec<u8>) -> Option<u64> {
        self.exec
            .start_run(StartRunRequest {
                fab: Some(Fab {
                    hash_str: "ignored".to_owned(),
                    content,
                }),
                override_config: HashMap::new(),
                federation_options: None,
            })
            .await
            .expect("StartRun")
            .into_inner()
            .run_id
    }

    async fn run(&mut self, run_id: u64) -> Run {
        self.io
            .get_run(GetRunRequest { node: None, run_id })
            .await
            .expect("GetRun")
            .into_inner()
            .run
            .expect("run exists")
    }

    async fn status(&mut self, run_id: u64) -> RunStatus {
        self.run(run_id).await.status.expect("status")
    }

    /// Polls until the run has `status` (bounded by `timeout`).
    async fn wait_for_status(&mut self, run_id: u64, status: &str, timeout: Duration) -> RunStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.status(run_id).await;
            if current.status == status {
                return current;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} still {current:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A run taken by a ServerApp and `running`.
    async fn running_run(&mut self) -> u64 {
        let run_id = self.start_run(fab()).await.expect("run id");
        let inputs = self
            .io
            .pull_server_app_inputs(PullServerAppInputsRequest {})
            .await
            .expect("PullServerAppInputs")
            .into_inner();
        assert_eq!(inputs.run.expect("run").run_id, run_id);
        self.update_status(run_id, "running", "").await;
        run_id
    }

    /// Pushes one TaskIns for `node_id`; returns it with its id.
    async fn push_task_ins(&mut self, run_id: u64, node_id: u64) -> TaskIns {
        let mut ins = task_ins(run_id, node_id);
        let ids = self
            .io
            .push_task_ins(PushTaskInsRequest {
                task_ins_list: vec![ins.clone()],
                run_id,
            })
            .await
            .expect("PushTaskIns")
            .into_inner()
            .task_ids;
        ins.task_id.clone_from(&ids[0]);
        assert_eq!(ins.task_id.len(), 36, "{ids:?}");
        ins
    }

    async fn update_status(&mut self, run_id: u64, status: &str, sub_status: &str) {
        self.io
            .update_run_status(UpdateRunStatusRequest {
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
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(sender) = self.shutdown.take() {
            let _ = sender.send(());
        }
    }
}

/// A FAB with a valid `pyproject.toml`.
fn fab() -> Vec<u8> {
    flwr_core::FabBuilder::new(PYPROJECT)
        .file("miniapp/server_app.py", "")
        .build()
        .expect("FAB")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn task_ins(run_id: u64, node_id: u64) -> TaskIns {
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
            created_at: now(),
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

fn task_res(ins: &TaskIns, node_id: u64) -> TaskRes {
    let ins_task = ins.task.as_ref().expect("task");
    let created_at = now();
    TaskRes {
        task_id: String::new(),
        group_id: ins.group_id.clone(),
        run_id: ins.run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id,
                anonymous: false,
            }),
            consumer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            created_at,
            ttl: ins_task.ttl - (created_at - ins_task.created_at),
            ancestry: vec![ins.task_id.clone()],
            task_type: ins_task.task_type.clone(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

#[tokio::test]
async fn fleet_registers_pings_and_deletes_nodes() {
    let mut h = Harness::start(Options::default()).await;
    let node_id = h.create_node().await;
    let own = Node {
        node_id,
        anonymous: false,
    };
    let node = Some(own);

    let ping = |node_id: u64| PingRequest {
        node: Some(Node {
            node_id,
            anonymous: false,
        }),
        ping_interval: 30.0,
    };
    assert!(
        h.fleet
            .ping(ping(node_id))
            .await
            .expect("Ping")
            .into_inner()
            .success
    );
    assert!(
        !h.fleet
            .ping(ping(node_id ^ 1))
            .await
            .expect("Ping")
            .into_inner()
            .success
    );

    // Online nodes are visible to a running run's ServerApp.
    let run_id = h.start_run(fab()).await.expect("run id");
    h.io.pull_server_app_inputs(PullServerAppInputsRequest {})
        .await
        .expect("inputs");
    h.update_status(run_id, "running", "").await;
    let nodes =
        h.io.get_nodes(GetNodesRequest { run_id })
            .await
            .expect("GetNodes")
            .into_inner()
            .nodes;
    assert_eq!(nodes, vec![own]);

    // Anonymous and id-0 deletions are ignored; unknown ids are UNKNOWN.
    for ignored in [
        Node {
            node_id: 5,
            anonymous: true,
        },
        Node::default(),
    ] {
        h.fleet
            .delete_node(DeleteNodeRequest {
                node: Some(ignored),
            })
            .await
            .expect("ignored DeleteNode");
    }
    h.fleet
        .delete_node(DeleteNodeRequest { node })
        .await
        .expect("DeleteNode");
    let error = h
        .fleet
        .delete_node(DeleteNodeRequest { node })
        .await
        .expect_err("already deleted");
    assert_eq!(error.code(), Code::Unknown);
    assert_eq!(error.message(), format!("Node {node_id} not found"));
    h.stop().await;
}

#[tokio::test]
async fn exec_starts_lists_and_stops_runs_with_the_reference_statuses() {
    let mut h = Harness::start(Options::default()).await;
    let run_id = h.start_run(fab()).await.expect("run id");

    let runs = h
        .exec
        .list_runs(ListRunsRequest { run_id: None })
        .await
        .expect("ListRuns")
        .into_inner();
    assert!(runs.now.ends_with("+00:00"), "{}", runs.now);
    let run = &runs.run_dict[&run_id];
    assert_eq!(run.fab_id, "tester/miniapp");
    assert_eq!(run.fab_version, "1.2.3");
    assert_eq!(run.fab_hash.len(), 64);
    assert!(run.pending_at.ends_with("+00:00"), "{}", run.pending_at);
    assert_eq!(run.status.as_ref().expect("status").status, "pending");
    let one = h
        .exec
        .list_runs(ListRunsRequest {
            run_id: Some(run_id),
        })
        .await
        .expect("ListRuns one")
        .into_inner();
    assert_eq!(one.run_dict.len(), 1);
    let none = h
        .exec
        .list_runs(ListRunsRequest { run_id: Some(0) })
        .await
        .expect("ListRuns none")
        .into_inner();
    assert!(none.run_dict.is_empty());

    // Fleet guards: a pending run is refused with PERMISSION_DENIED; an unknown run gives an
    // empty GetRun and UNKNOWN elsewhere.
    let error = h
        .fleet
        .get_run(GetRunRequest { node: None, run_id })
        .await
        .expect_err("pending");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.message(), "Run is pending.");
    let empty = h
        .fleet
        .get_run(GetRunRequest {
            node: None,
            run_id: run_id ^ 1,
        })
        .await
        .expect("unknown run")
        .into_inner();
    assert_eq!(empty.run, None);
    let error = h
        .fleet
        .get_fab(GetFabRequest {
            node: None,
            hash_str: run.fab_hash.clone(),
            run_id: run_id ^ 1,
        })
        .await
        .expect_err("unknown run");
    assert_eq!(error.code(), Code::Unknown);
    let error = h
        .fleet
        .push_task_res(PushTaskResRequest {
            node: None,
            task_res_list: vec![],
        })
        .await
        .expect_err("empty list");
    assert_eq!(error.code(), Code::Unknown);

    // StopRun: success once, then FAILED_PRECONDITION; unknown runs NOT_FOUND.
    let stopped = h
        .exec
        .stop_run(StopRunRequest { run_id })
        .await
        .expect("StopRun")
        .into_inner();
    assert!(stopped.success);
    let status = h.status(run_id).await;
    assert_eq!(
        (status.status.as_str(), status.sub_status.as_str()),
        ("finished", "stopped")
    );
    let error = h
        .exec
        .stop_run(StopRunRequest { run_id })
        .await
        .expect_err("twice");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        error.message(),
        format!("Run ID {run_id} is already finished")
    );
    let error = h
        .exec
        .stop_run(StopRunRequest { run_id: run_id ^ 1 })
        .await
        .expect_err("unknown");
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), format!("Run ID {} not found", run_id ^ 1));
    let error = h
        .fleet
        .get_run(GetRunRequest { node: None, run_id })
        .await
        .expect_err("stopped");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.message(), "Run is finished. Stopped by user.");

    // No user authentication in this build.
    let error = h
        .exec
        .get_login_details(GetLoginDetailsRequest {})
        .await
        .expect_err("unimplemented");
    assert_eq!(error.code(), Code::Unimplemented);
    assert_eq!(
        error.message(),
        "ExecServicer initialized without user authentication"
    );
    let error = h
        .exec
        .get_auth_tokens(GetAuthTokensRequest::default())
        .await
        .expect_err("unimplemented");
    assert_eq!(error.code(), Code::Unimplemented);
    h.stop().await;
}

#[tokio::test]
async fn a_fab_that_does_not_validate_gives_an_empty_start_run_response() {
    let mut h = Harness::start(Options::default()).await;
    assert_eq!(h.start_run(b"not a zip".to_vec()).await, None);
    let runs = h
        .exec
        .list_runs(ListRunsRequest { run_id: None })
        .await
        .expect("ListRuns")
        .into_inner();
    assert!(runs.run_dict.is_empty());
    let error = h
        .exec
        .stream_logs(StreamLogsRequest {
            run_id: 1,
            after_timestamp: 0.0,
        })
        .await
        .expect_err("unknown run");
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), "Run ID not found");
    h.stop().await;
}

#[tokio::test]
async fn a_run_relays_tasks_and_streams_its_logs_until_cancelled() {
    let mut h = Harness::start(Options::default()).await;
    let node_id = h.create_node().await;
    let run_id = h.start_run(fab()).await.expect("run id");

    // The ServerApp takes the run: it is `starting` and comes with its FAB and context.
    let inputs =
        h.io.pull_server_app_inputs(PullServerAppInputsRequest {})
            .await
            .expect("PullServerAppInputs")
            .into_inner();
    let run = inputs.run.expect("run");
    assert_eq!(run.run_id, run_id);
    assert_eq!(run.status.expect("status").status, "starting");
    assert_eq!(inputs.context.as_ref().expect("context").run_id, run_id);
    assert_eq!(inputs.fab.expect("fab").content, fab());
    let empty =
        h.io.pull_server_app_inputs(PullServerAppInputsRequest {})
            .await
            .expect("nothing pending")
            .into_inner();
    assert_eq!(empty.run, None);
    let error =
        h.io.get_nodes(GetNodesRequest { run_id })
            .await
            .expect_err("starting");
    assert_eq!(error.message(), "Run is starting.");
    h.update_status(run_id, "running", "").await;

    // ServerApp → node.
    let error =
        h.io.push_task_ins(PushTaskInsRequest {
            task_ins_list: vec![],
            run_id,
        })
        .await
        .expect_err("empty");
    assert_eq!(error.code(), Code::Unknown);
    assert_eq!(
        error.message(),
        "Malformed PushTaskInsRequest: `task_ins_list` must not be empty"
    );
    let task_ids =
        h.io.push_task_ins(PushTaskInsRequest {
            task_ins_list: vec![task_ins(run_id, node_id)],
            run_id,
        })
        .await
        .expect("PushTaskIns")
        .into_inner()
        .task_ids;
    assert_eq!(task_ids.len(), 1);
    assert_eq!(task_ids[0].len(), 36, "{task_ids:?}");
    let pulled = h
        .fleet
        .pull_task_ins(PullTaskInsRequest {
            node: Some(Node {
                node_id,
                anonymous: false,
            }),
            task_ids: vec![],
        })
        .await
        .expect("PullTaskIns")
        .into_inner()
        .task_ins_list;
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].task_id, task_ids[0]);

    // Fleet GetRun/GetFab now answer for the running run.
    let fleet_run = h
        .fleet
        .get_run(GetRunRequest { node: None, run_id })
        .await
        .expect("GetRun")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(fleet_run.status, None, "Fleet GetRun carries no status");
    assert_eq!(fleet_run.pending_at, "");
    let fab_reply = h
        .fleet
        .get_fab(GetFabRequest {
            node: None,
            hash_str: fleet_run.fab_hash.clone(),
            run_id,
        })
        .await
        .expect("GetFab")
        .into_inner();
    assert_eq!(fab_reply.fab.expect("fab").content, fab());
    let error = h
        .fleet
        .get_fab(GetFabRequest {
            node: None,
            hash_str: "../../etc/passwd".to_owned(),
            run_id,
        })
        .await
        .expect_err("no such FAB");
    assert_eq!(error.message(), "Found no FAB with hash: ../../etc/passwd");

    // Node → ServerApp.
    let pushed = h
        .fleet
        .push_task_res(PushTaskResRequest {
            node: None,
            task_res_list: vec![task_res(&pulled[0], node_id)],
        })
        .await
        .expect("PushTaskRes")
        .into_inner();
    assert_eq!(pushed.reconnect.expect("reconnect").reconnect, 5);
    let (result_id, code) = pushed.results.into_iter().next().expect("one result");
    assert_eq!((result_id.len(), code), (36, 0));
    let rejected = h
        .fleet
        .push_task_res(PushTaskResRequest {
            node: None,
            task_res_list: vec![task_res(&pulled[0], node_id ^ 1)],
        })
        .await
        .expect("rejected PushTaskRes is no error")
        .into_inner();
    assert_eq!(rejected.results, HashMap::from([("None".to_owned(), 0)]));
    let replies =
        h.io.pull_task_res(PullTaskResRequest {
            node: None,
            task_ids: task_ids.clone(),
            run_id,
        })
        .await
        .expect("PullTaskRes")
        .into_inner()
        .task_res_list;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].task.as_ref().expect("task").ancestry, task_ids);

    // Logs, outputs, completion, and the log stream ending with CANCELLED.
    for chunk in ["hello ", "world\n"] {
        h.io.push_logs(PushLogsRequest {
            node: Some(Node::default()),
            run_id,
            logs: vec![chunk.to_owned()],
        })
        .await
        .expect("PushLogs");
    }
    h.io.push_server_app_outputs(PushServerAppOutputsRequest {
        run_id,
        context: inputs.context.clone(),
    })
    .await
    .expect("PushServerAppOutputs");
    let mut stream = h
        .exec
        .stream_logs(StreamLogsRequest {
            run_id,
            after_timestamp: 0.0,
        })
        .await
        .expect("StreamLogs")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("first chunk in time")
        .expect("no error")
        .expect("a chunk");
    assert_eq!(first.log_output, "hello world\n");
    assert!(first.latest_timestamp > 0.0);
    h.update_status(run_id, "finished", "completed").await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("end in time")
        .expect_err("stream ends with a status");
    assert_eq!(end.code(), Code::Cancelled);

    let statuses =
        h.io.get_run_status(GetRunStatusRequest {
            node: None,
            run_ids: vec![run_id, run_id ^ 1],
        })
        .await
        .expect("GetRunStatus")
        .into_inner()
        .run_status_dict;
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[&run_id].sub_status, "completed");
    let error =
        h.io.update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: Some(RunStatus::default()),
        })
        .await
        .expect_err("finished");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert_eq!(error.message(), "Run is finished.");
    h.stop().await;
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads the pids a fake ServerApp wrote, waiting (bounded) until both are there.
async fn wait_for_pids(file: &Path) -> Vec<u32> {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(file) {
            let pids: Vec<u32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() == 2 {
                return pids;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the fake ServerApp did not start");
}

async fn wait_until_gone(pids: &[u32]) {
    for _ in 0..100 {
        if pids.iter().all(|pid| !alive(*pid)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("processes {pids:?} still alive");
}

#[tokio::test]
async fn a_serverapp_that_keeps_failing_fails_its_run_instead_of_respawning_forever() {
    let bin = tempfile::tempdir().expect("tempdir");
    let count = bin.path().join("count");
    let program = script(
        bin.path(),
        "flwr-serverapp",
        &format!("echo \"$@\" >> {}\nexit 3", count.display()),
    );
    let mut h = Harness::start(Options {
        serverapp: Some(program),
        ..Options::default()
    })
    .await;
    let run_id = h.start_run(fab()).await.expect("run id");
    let status = h
        .wait_for_status(run_id, "finished", Duration::from_secs(20))
        .await;
    assert_eq!(status.sub_status, "failed");
    assert!(
        status.details.contains("exited with status 3"),
        "{status:?}"
    );
    // Give the launcher a few more polls: no further spawns for the failed run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = std::fs::read_to_string(&count).expect("calls");
    assert_eq!(calls.lines().count(), 3, "{calls}");
    assert!(
        calls.lines().all(|line| line
            .starts_with("--run-once --serverappio-api-address 127.0.0.1:")
            && line.ends_with(" --insecure")),
        "{calls}"
    );
    h.stop().await;
}

#[tokio::test]
async fn stop_run_kills_the_serverapp_process_group() {
    let bin = tempfile::tempdir().expect("tempdir");
    let pids = bin.path().join("pids");
    // The app and a grandchild in its process group both have to go.
    let program = script(
        bin.path(),
        "flwr-serverapp",
        &format!("sleep 600 &\necho $$ $! > {}\nwait", pids.display()),
    );
    let mut h = Harness::start(Options {
        serverapp: Some(program),
        ..Options::default()
    })
    .await;
    let run_id = h.start_run(fab()).await.expect("run id");
    let pids = wait_for_pids(&pids).await;
    assert!(pids.iter().all(|pid| alive(*pid)));
    h.exec
        .stop_run(StopRunRequest { run_id })
        .await
        .expect("StopRun");
    wait_until_gone(&pids).await;
    assert_eq!(h.status(run_id).await.sub_status, "stopped");
    h.stop().await;
}

#[tokio::test]
async fn shutdown_kills_the_serverapp_process_group() {
    let bin = tempfile::tempdir().expect("tempdir");
    let pids = bin.path().join("pids");
    let program = script(
        bin.path(),
        "flwr-serverapp",
        &format!("sleep 600 &\necho $$ $! > {}\nwait", pids.display()),
    );
    let mut h = Harness::start(Options {
        serverapp: Some(program),
        ..Options::default()
    })
    .await;
    h.start_run(fab()).await.expect("run id");
    let pids = wait_for_pids(&pids).await;
    let started = std::time::Instant::now();
    h.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_until_gone(&pids).await;
}

#[tokio::test]
async fn sqlite_state_survives_a_restart_and_memory_sqlite_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("state.db").display().to_string();
    let sqlite = || Options {
        database: Some(database.clone()),
        ..Options::default()
    };
    let mut first = Harness::start(sqlite()).await;
    let run_id = first.start_run(fab()).await.expect("run id");
    first
        .exec
        .stop_run(StopRunRequest { run_id })
        .await
        .expect("StopRun");
    first.stop().await;

    let mut second = Harness::start(sqlite()).await;
    let runs = second
        .exec
        .list_runs(ListRunsRequest { run_id: None })
        .await
        .expect("ListRuns")
        .into_inner()
        .run_dict;
    let status = runs[&run_id].status.clone().expect("status");
    assert_eq!(
        (status.status.as_str(), status.sub_status.as_str()),
        ("finished", "stopped")
    );
    second.stop().await;

    // `:memory:` is one shared database: a run created through Exec is visible to ServerAppIo.
    let mut memory = Harness::start(Options {
        database: Some(":memory:".to_owned()),
        ..Options::default()
    })
    .await;
    let run_id = memory.start_run(fab()).await.expect("run id");
    assert_eq!(memory.status(run_id).await.status, "pending");
    memory.stop().await;
}

// ----- held pulls -----

/// A request carrying the hold metadata our SuperNode and SDK send.
fn held<T>(message: T, hold: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = flwr_core::hold::format_millis(hold)
        .parse()
        .expect("ASCII digits");
    request
        .metadata_mut()
        .insert(flwr_core::hold::REQUEST_HEADER, value);
    request
}

fn pull_for(node_id: u64) -> PullTaskInsRequest {
    PullTaskInsRequest {
        node: Some(Node {
            node_id,
            anonymous: false,
        }),
        task_ids: vec![],
    }
}

fn was_held<T>(response: &tonic::Response<T>) -> bool {
    response
        .metadata()
        .contains_key(flwr_core::hold::REPLY_HEADER)
}

/// Runs a call in the background, so that the test can act while the server holds it.
#[allow(clippy::disallowed_methods)] // the test owns and awaits the task
fn in_flight<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

async fn settle() {
    // Long enough for a spawned call to reach the server and park; the assertions never depend
    // on it being shorter or longer (a call that has not parked yet just finds the task).
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn held_pull_task_ins_is_answered_by_the_push(database: Option<String>) {
    let mut h = Harness::start(Options {
        database,
        no_hold_pulls: true,
        ..Options::default()
    })
    .await;
    let node_id = h.create_node().await;
    let run_id = h.running_run().await;

    // With --no-hold-pulls, an empty pull that does not ask is answered at once, without the
    // reply metadata.
    let unasked = h
        .fleet
        .pull_task_ins(pull_for(node_id))
        .await
        .expect("pull");
    assert!(!was_held(&unasked));
    assert!(unasked.into_inner().task_ins_list.is_empty());

    let mut fleet = h.fleet.clone();
    let pull = in_flight(async move {
        fleet
            .pull_task_ins(held(pull_for(node_id), Duration::from_secs(25)))
            .await
    });
    settle().await;
    assert!(!pull.is_finished(), "an empty held pull waits");
    let ins = h.push_task_ins(run_id, node_id).await;
    let response = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .expect("the push ends the hold well before its 25 s bound")
        .expect("task")
        .expect("PullTaskIns");
    assert!(was_held(&response));
    let pulled = response.into_inner().task_ins_list;
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].task_id, ins.task_id);
    h.stop().await;
}

#[tokio::test]
async fn a_held_pull_task_ins_gets_the_task_pushed_while_it_waits() {
    held_pull_task_ins_is_answered_by_the_push(None).await;
}

#[tokio::test]
async fn a_held_pull_task_ins_gets_the_task_pushed_while_it_waits_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("state.db").display().to_string();
    held_pull_task_ins_is_answered_by_the_push(Some(database)).await;
}

#[tokio::test]
async fn an_abandoned_held_pull_loses_no_task() {
    let mut h = Harness::start(Options::default()).await;
    let node_id = h.create_node().await;
    let run_id = h.running_run().await;
    for _ in 0..3 {
        let mut fleet = h.fleet.clone();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            fleet.pull_task_ins(held(pull_for(node_id), Duration::from_secs(25))),
        )
        .await;
        assert!(abandoned.is_err(), "nothing was queued: the client gave up");
    }
    let ins = h.push_task_ins(run_id, node_id).await;
    let pulled = h
        .fleet
        .pull_task_ins(pull_for(node_id))
        .await
        .expect("pull")
        .into_inner()
        .task_ins_list;
    assert_eq!(
        pulled.len(),
        1,
        "the task waits for a pull that is still there"
    );
    assert_eq!(pulled[0].task_id, ins.task_id);
    h.stop().await;
}

#[tokio::test]
async fn a_held_pull_task_res_waits_for_every_reply() {
    let mut h = Harness::start(Options::default()).await;
    let (first, second) = (h.create_node().await, h.create_node().await);
    let run_id = h.running_run().await;
    let ins = [
        h.push_task_ins(run_id, first).await,
        h.push_task_ins(run_id, second).await,
    ];
    let ids: Vec<String> = ins.iter().map(|ins| ins.task_id.clone()).collect();
    let mut io = h.io.clone();
    let request = PullTaskResRequest {
        node: None,
        task_ids: ids.clone(),
        run_id,
    };
    let pull = in_flight(async move {
        io.pull_task_res(held(request, Duration::from_secs(25)))
            .await
    });
    for (ins, node_id) in ins.iter().zip([first, second]) {
        settle().await;
        assert!(!pull.is_finished(), "a reply is still missing");
        h.fleet
            .push_task_res(PushTaskResRequest {
                node: None,
                task_res_list: vec![task_res(ins, node_id)],
            })
            .await
            .expect("PushTaskRes");
    }
    let response = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .expect("the last reply ends the hold")
        .expect("task")
        .expect("PullTaskRes");
    assert!(was_held(&response));
    let mut answered: Vec<String> = response
        .into_inner()
        .task_res_list
        .into_iter()
        .map(|res| res.task.expect("task").ancestry[0].clone())
        .collect();
    answered.sort();
    let mut expected = ids;
    expected.sort();
    assert_eq!(answered, expected);
    h.stop().await;
}

#[tokio::test]
async fn stop_run_delete_node_and_shutdown_end_held_pulls() {
    let mut h = Harness::start(Options::default()).await;
    let (node_id, other) = (h.create_node().await, h.create_node().await);
    let run_id = h.running_run().await;
    let ins = h.push_task_ins(run_id, node_id).await;
    let bound = Duration::from_secs(25);
    let ended = |what: &str| format!("{what} ends the held call well before its 25 s bound");

    // StopRun: the held PullTaskRes answers with the stopped run's status.
    let mut io = h.io.clone();
    let request = PullTaskResRequest {
        node: None,
        task_ids: vec![ins.task_id.clone()],
        run_id,
    };
    let pull = in_flight(async move { io.pull_task_res(held(request, bound)).await });
    settle().await;
    assert!(!pull.is_finished());
    assert!(
        h.exec
            .stop_run(StopRunRequest { run_id })
            .await
            .expect("StopRun")
            .into_inner()
            .success
    );
    let error = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .unwrap_or_else(|_| panic!("{}", ended("StopRun")))
        .expect("task")
        .expect_err("the run is finished");
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // DeleteNode: the node's held PullTaskIns answers, empty.
    let mut fleet = h.fleet.clone();
    let pull = in_flight(async move { fleet.pull_task_ins(held(pull_for(other), bound)).await });
    settle().await;
    assert!(!pull.is_finished());
    h.fleet
        .delete_node(DeleteNodeRequest {
            node: Some(Node {
                node_id: other,
                anonymous: false,
            }),
        })
        .await
        .expect("DeleteNode");
    let pulled = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .unwrap_or_else(|_| panic!("{}", ended("DeleteNode")))
        .expect("task")
        .expect("PullTaskIns");
    assert!(pulled.into_inner().task_ins_list.is_empty());

    // Shutdown: held calls answer at once, so the SuperLink stops well within its grace.
    let mut fleet = h.fleet.clone();
    let pull = in_flight(async move { fleet.pull_task_ins(held(pull_for(node_id), bound)).await });
    settle().await;
    assert!(!pull.is_finished());
    h.stop().await;
    let response = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .unwrap_or_else(|_| panic!("{}", ended("shutdown")))
        .expect("task")
        .expect("answered before the connection closed");
    assert!(
        !was_held(&response),
        "a hold cut by shutdown is not reported as held"
    );
}

#[tokio::test]
async fn by_default_the_pulls_of_clients_that_do_not_ask_are_held() {
    let mut h = Harness::start(Options::default()).await;
    let node_id = h.create_node().await;
    let run_id = h.running_run().await;
    let mut fleet = h.fleet.clone();
    let pull = in_flight(async move { fleet.pull_task_ins(pull_for(node_id)).await });
    settle().await;
    let ins = h.push_task_ins(run_id, node_id).await;
    let pulled = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .expect("answered")
        .expect("task")
        .expect("PullTaskIns")
        .into_inner()
        .task_ins_list;
    // Had the pull not been held, it would have come back empty before the push.
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].task_id, ins.task_id);
    // Unasked holds end at their 2.5 s bound, empty.
    let empty = tokio::time::timeout(
        Duration::from_secs(10),
        h.fleet.pull_task_ins(pull_for(node_id)),
    )
    .await
    .expect("the 2.5 s bound ends the hold")
    .expect("PullTaskIns");
    assert!(was_held(&empty));
    assert!(empty.into_inner().task_ins_list.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_restart_fails_the_runs_whose_launched_serverapp_died_with_the_superlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("state.db").display().to_string();
    // Never connects: the launcher has nothing to do for a run that is already running.
    let idle = script(dir.path(), "flwr-serverapp", "sleep 30");
    let sqlite = |serverapp: Option<PathBuf>| Options {
        database: Some(database.clone()),
        serverapp,
        ..Options::default()
    };

    // A run taken by an operator-started ServerApp (process isolation) and left running.
    let mut first = Harness::start(sqlite(None)).await;
    let run_id = first.running_run().await;
    first.stop().await;

    // Restarted in process isolation, the run waits for its external ServerApp to come back.
    let mut second = Harness::start(sqlite(None)).await;
    assert_eq!(second.status(run_id).await.status, "running");
    second.stop().await;

    // Restarted with a launcher, which owns every ServerApp: the run's died with the old
    // process, so the run is failed at start instead of staying `running` for ever.
    let mut third = Harness::start(sqlite(Some(idle))).await;
    let status = third
        .wait_for_status(run_id, "finished", Duration::from_secs(10))
        .await;
    assert_eq!(status.sub_status, "failed");
    assert_eq!(status.details, flwr_superlink::launcher::INTERRUPTED);
    third.stop().await;
}
