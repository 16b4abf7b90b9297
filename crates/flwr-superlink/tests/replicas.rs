//! Several `flower-superlink` processes on one PostgreSQL database are one SuperLink (issue
//! #15): any replica serves any call, a TaskIns is delivered once however the pulls are spread,
//! a held pull on one replica wakes for a push through another, every replica serves every FAB
//! and run, and a run whose launching replica dies is taken over by another.
//!
//! Each test gets its own database on one throwaway PostgreSQL cluster per test binary
//! (`flwr_testkit::postgres`, which needs Debian's `postgresql` package; the test command
//! installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flwr_proto::exec_client::ExecClient;
use flwr_proto::fleet_client::FleetClient;
use flwr_proto::server_app_io_client::ServerAppIoClient;
use flwr_proto::{
    CreateNodeRequest, CreateRunRequest, Fab, GetFabRequest, ListRunsRequest, Node,
    PullServerAppInputsRequest, PullTaskInsRequest, PushTaskInsRequest, RecordSet, RunStatus,
    StartRunRequest, StopRunRequest, Task, TaskIns, UpdateRunStatusRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");
/// Bound on a replica's start (migrations, first connections).
const START_LIMIT: Duration = Duration::from_secs(30);

const PYPROJECT: &str = r#"
[project]
name = "replicaapp"
version = "1.0.0"

[tool.flwr.app]
publisher = "flwrlabs"

[tool.flwr.app.components]
serverapp = "replicaapp.server_app:app"
clientapp = "replicaapp.client_app:app"
"#;

/// Stands in for `flwr-serverapp`: records that this replica launched it, then waits to be
/// killed (with its replica, by the parent-death signal).
const FAKE_SERVERAPP: &str = r#"#!/bin/sh
echo $$ >> "$(dirname "$0")/launches"
exec sleep 300
"#;

/// A database of its own on the test binary's cluster.
fn database(name: &str) -> String {
    flwr_testkit::postgres::TempPostgres::shared()
        .and_then(|cluster| cluster.create_database(name))
        .unwrap_or_else(|error| panic!("PostgreSQL for the replica tests: {error}"))
}

/// One `flower-superlink` process, killed (SIGKILL) and reaped on drop.
struct Replica {
    name: &'static str,
    dir: PathBuf,
    child: Option<Child>,
    /// Fleet, ServerAppIo, Exec.
    ports: [u16; 3],
}

impl Replica {
    async fn start(
        name: &'static str,
        root: &Path,
        database: &str,
        isolation: &str,
        extra: &[&str],
    ) -> Self {
        let dir = root.join(name);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let fake = bin.join("flwr-serverapp");
        std::fs::write(&fake, FAKE_SERVERAPP).expect("write the fake flwr-serverapp");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("superlink.log"))
            .expect("log file");
        let ports = flwr_testkit::free_ports::<3>().expect("ports");
        let [fleet, serverappio, exec] = ports;
        let child = Command::new(BINARY)
            .args([
                "--insecure",
                "--isolation",
                isolation,
                "--database",
                database,
            ])
            .args(extra)
            .arg("--storage-dir")
            .arg(dir.join("ffs"))
            .arg("--fleet-api-address")
            .arg(format!("127.0.0.1:{fleet}"))
            .arg("--serverappio-api-address")
            .arg(format!("127.0.0.1:{serverappio}"))
            .arg("--exec-api-address")
            .arg(format!("127.0.0.1:{exec}"))
            .env("PATH", path)
            .env("FLWR_HOME", dir.join("home"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn flower-superlink");
        let mut replica = Self {
            name,
            dir,
            child: Some(child),
            ports,
        };
        replica.wait_listening().await;
        replica
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "replica {} exited at start ({status}): {}",
                    self.name,
                    self.log()
                );
            }
            let mut listening = true;
            for port in self.ports {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    listening = false;
                    break;
                }
            }
            if listening {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} did not listen within {START_LIMIT:?}: {}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("superlink.log")).unwrap_or_default()
    }

    fn channel(&self, index: usize) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.ports[index]))
            .expect("uri")
            .connect_lazy()
    }

    fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::new(self.channel(0))
    }

    fn io(&self) -> ServerAppIoClient<Channel> {
        ServerAppIoClient::new(self.channel(1))
    }

    fn exec(&self) -> ExecClient<Channel> {
        ExecClient::new(self.channel(2))
    }

    /// How many ServerApps this replica has launched.
    fn launches(&self) -> usize {
        std::fs::read_to_string(self.dir.join("bin").join("launches"))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    /// SIGKILL: no chance to release anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node(node_id: u64) -> Option<Node> {
    Some(Node {
        node_id,
        anonymous: node_id == 0,
    })
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
            producer: node(0),
            consumer: node(node_id),
            created_at: now(),
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

fn pull_for(node_id: u64) -> PullTaskInsRequest {
    PullTaskInsRequest {
        node: node(node_id),
        task_ids: vec![],
    }
}

fn status(status: &str, sub_status: &str) -> Option<RunStatus> {
    Some(RunStatus {
        status: status.to_owned(),
        sub_status: sub_status.to_owned(),
        details: String::new(),
    })
}

fn fab() -> Vec<u8> {
    flwr_core::FabBuilder::new(PYPROJECT)
        .file("replicaapp/server_app.py", "")
        .build()
        .expect("FAB")
}

async fn create_node(replica: &Replica) -> u64 {
    replica
        .fleet()
        .create_node(CreateNodeRequest {
            ping_interval: 60.0,
        })
        .await
        .expect("CreateNode")
        .into_inner()
        .node
        .expect("node")
        .node_id
}

/// A run created through `replica`'s ServerAppIo and brought to `running` there, as a
/// ServerApp of `--isolation process` would.
async fn running_run(replica: &Replica) -> u64 {
    let mut io = replica.io();
    let run_id = io
        .create_run(CreateRunRequest::default())
        .await
        .expect("CreateRun")
        .into_inner()
        .run_id;
    for (name, sub) in [("starting", ""), ("running", "")] {
        io.update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: status(name, sub),
        })
        .await
        .expect("UpdateRunStatus");
    }
    run_id
}

async fn push(replica: &Replica, ins: Vec<TaskIns>) -> Vec<String> {
    let run_id = ins.first().map_or(0, |ins| ins.run_id);
    replica
        .io()
        .push_task_ins(PushTaskInsRequest {
            task_ins_list: ins,
            run_id,
        })
        .await
        .expect("PushTaskIns")
        .into_inner()
        .task_ids
}

async fn run_status(replica: &Replica, run_id: u64) -> Option<String> {
    let runs = replica
        .exec()
        .list_runs(ListRunsRequest {
            run_id: Some(run_id),
        })
        .await
        .ok()?
        .into_inner()
        .run_dict;
    let status = runs.get(&run_id)?.status.clone()?;
    Some(format!("{}:{}", status.status, status.sub_status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ins_is_delivered_once_when_both_replicas_serve_pulls() {
    let url = database("delivered_once");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Replica::start("a", dir.path(), &url, "process", &["--no-hold-pulls"]).await;
    let b = Replica::start("b", dir.path(), &url, "process", &["--no-hold-pulls"]).await;
    let node_id = create_node(&a).await;
    let run_id = running_run(&b).await;
    const TASKS: usize = 120;
    let mut pushed = Vec::new();
    for _ in 0..TASKS / 20 {
        pushed.extend(push(&a, (0..20).map(|_| task_ins(run_id, node_id)).collect()).await);
    }
    assert_eq!(pushed.len(), TASKS);

    // Four pullers, two per replica, race for the node's queue.
    let mut pullers = Vec::new();
    for replica in [&a, &b, &a, &b] {
        let mut fleet = replica.fleet();
        #[allow(clippy::disallowed_methods)]
        pullers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut empty = 0;
            for _ in 0..2 * TASKS {
                let pulled = fleet
                    .pull_task_ins(pull_for(node_id))
                    .await
                    .expect("PullTaskIns")
                    .into_inner()
                    .task_ins_list;
                if pulled.is_empty() {
                    empty += 1;
                    if empty >= 3 {
                        break;
                    }
                    continue;
                }
                got.extend(pulled.into_iter().map(|ins| ins.task_id));
            }
            got
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_puller = Vec::new();
    for puller in pullers {
        let got = tokio::time::timeout(Duration::from_secs(60), puller)
            .await
            .expect("the pullers finish")
            .expect("puller");
        per_puller.push(got.len());
        for id in got {
            *seen.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        seen.len(),
        TASKS,
        "every TaskIns delivered (per puller {per_puller:?})"
    );
    for id in &pushed {
        assert!(seen.contains_key(id), "TaskIns {id} never delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_pull_on_one_replica_wakes_for_a_push_through_the_other() {
    let url = database("held_across");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Replica::start("a", dir.path(), &url, "process", &[]).await;
    let b = Replica::start("b", dir.path(), &url, "process", &[]).await;
    let node_id = create_node(&a).await;
    let run_id = running_run(&a).await;

    let mut fleet = b.fleet();
    let mut request = tonic::Request::new(pull_for(node_id));
    request.metadata_mut().insert(
        flwr_core::hold::REQUEST_HEADER,
        flwr_core::hold::format_millis(Duration::from_secs(25))
            .parse()
            .expect("metadata"),
    );
    #[allow(clippy::disallowed_methods)]
    let pull = tokio::spawn(async move { fleet.pull_task_ins(request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pull.is_finished(), "an empty held pull waits");
    let ids = push(&a, vec![task_ins(run_id, node_id)]).await;
    // Without the cross-replica wake-up the hold would end empty at its 25 s bound.
    let pulled = tokio::time::timeout(Duration::from_secs(30), pull)
        .await
        .expect("the hold ends within its bound")
        .expect("task")
        .expect("PullTaskIns")
        .into_inner()
        .task_ins_list;
    assert_eq!(
        pulled
            .iter()
            .map(|ins| ins.task_id.clone())
            .collect::<Vec<_>>(),
        ids,
        "the push through replica a ended the pull held on replica b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_every_fab_and_run() {
    let url = database("fab_and_runs");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Replica::start("a", dir.path(), &url, "process", &[]).await;
    let b = Replica::start("b", dir.path(), &url, "process", &[]).await;
    let content = fab();
    let run_id = a
        .exec()
        .start_run(StartRunRequest {
            fab: Some(Fab {
                hash_str: String::new(),
                content: content.clone(),
            }),
            ..StartRunRequest::default()
        })
        .await
        .expect("StartRun")
        .into_inner()
        .run_id
        .expect("a run id");
    // `flwr ls` through the other replica.
    assert_eq!(
        run_status(&b, run_id).await.as_deref(),
        Some("pending:"),
        "replica b lists the run started on replica a"
    );
    // The ServerApp of `--isolation process` may talk to either replica.
    let inputs = b
        .io()
        .pull_server_app_inputs(PullServerAppInputsRequest {})
        .await
        .expect("PullServerAppInputs on b")
        .into_inner();
    assert_eq!(inputs.run.map(|run| run.run_id), Some(run_id));
    assert_eq!(inputs.fab.map(|fab| fab.content), Some(content.clone()));
    let hash = flwr_state::ffs::fab_hash(&content);
    a.io()
        .update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: status("running", ""),
        })
        .await
        .expect("running");
    let node_id = create_node(&a).await;
    let got = b
        .fleet()
        .get_fab(GetFabRequest {
            node: node(node_id),
            hash_str: hash.clone(),
            run_id,
        })
        .await
        .expect("GetFab on b")
        .into_inner()
        .fab
        .expect("fab");
    assert_eq!(got.content, content);
    // `flwr stop` through the replica that did not start it.
    let stopped = b
        .exec()
        .stop_run(StopRunRequest { run_id })
        .await
        .expect("StopRun")
        .into_inner()
        .success;
    assert!(stopped);
    assert_eq!(
        run_status(&a, run_id).await.as_deref(),
        Some("finished:stopped")
    );
}

/// Waits (bounded) until `condition` holds, checking every 100 ms.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_launched_once_and_taken_over_when_its_replica_dies() {
    let url = database("takeover");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Replica::start("a", dir.path(), &url, "subprocess", &[]).await;
    let mut b = Replica::start("b", dir.path(), &url, "subprocess", &[]).await;
    let run_id = b
        .exec()
        .start_run(StartRunRequest {
            fab: Some(Fab {
                hash_str: String::new(),
                content: fab(),
            }),
            ..StartRunRequest::default()
        })
        .await
        .expect("StartRun")
        .into_inner()
        .run_id
        .expect("a run id");
    assert!(
        eventually(Duration::from_secs(10), || a.launches() + b.launches() > 0).await,
        "no replica launched the run's ServerApp"
    );
    // Several lease periods: the other replica must not launch it as well.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (a.launches() + b.launches()),
        1,
        "exactly one replica launches a run (a: {}, b: {})",
        a.launches(),
        b.launches()
    );
    let (owner, other) = if a.launches() == 1 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Play the launched ServerApp on the owner: take the run, run it, queue a task.
    let inputs = owner
        .io()
        .pull_server_app_inputs(PullServerAppInputsRequest {})
        .await
        .expect("PullServerAppInputs")
        .into_inner();
    assert_eq!(inputs.run.map(|run| run.run_id), Some(run_id));
    owner
        .io()
        .update_run_status(UpdateRunStatusRequest {
            run_id,
            run_status: status("running", ""),
        })
        .await
        .expect("running");
    let node_id = create_node(other).await;
    push(owner, vec![task_ins(run_id, node_id)]).await;

    let killed = Instant::now();
    owner.kill();
    assert!(
        eventually(Duration::from_secs(15), || other.launches() == 1).await,
        "replica {} never took over the run: {}",
        other.name,
        other.log()
    );
    let takeover = killed.elapsed();
    println!(
        "takeover: {:.1} s from SIGKILL to the new ServerApp",
        takeover.as_secs_f64()
    );
    assert!(
        other.log().contains(&format!("took over run {run_id}")),
        "the takeover is logged"
    );
    assert_eq!(
        run_status(other, run_id).await.as_deref(),
        Some("pending:"),
        "the run starts again from the beginning"
    );
    let left = other
        .fleet()
        .pull_task_ins(pull_for(node_id))
        .await
        .expect("PullTaskIns")
        .into_inner()
        .task_ins_list;
    assert!(left.is_empty(), "the dead ServerApp's tasks are gone");
    // The restarted ServerApp gets the run on its own replica.
    let inputs = other
        .io()
        .pull_server_app_inputs(PullServerAppInputsRequest {})
        .await
        .expect("PullServerAppInputs after the takeover")
        .into_inner();
    assert_eq!(inputs.run.map(|run| run.run_id), Some(run_id));
}
