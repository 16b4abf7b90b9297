//! The warm ClientApp (`--clientapp-lifetime warm`) against a scripted, in-process Fleet server.
//!
//! The ClientApp is this test binary run again as a stand-in `flwr-clientapp` (the ignored test
//! `fake_clientapp`, behind a shell script that records every start): it speaks ClientAppIo as
//! the reference does — without `--token` it loops GetToken → PullClientAppInputs → reply →
//! PushClientAppOutputs, with `--token` it serves one message and exits — and reads what to do
//! from the message's group id: `ok` replies, `crash` exits 3 after pulling, `hang` never
//! replies.
//!
//! Covers: one process serving message after message, a crash mid-message answered with the
//! reference's error reply and a fresh process for the next message, a new process per run,
//! an idle exit restarted, a budget timeout replacing the process, per-message mode starting one
//! process per message, and shutdown stopping the warm process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flwr_proto::client_app_io_client::ClientAppIoClient;
use flwr_proto::fleet_server::{Fleet, FleetServer};
use flwr_proto::{
    configs_record_value, ConfigsRecord, ConfigsRecordValue, CreateNodeRequest, CreateNodeResponse,
    DeleteNodeRequest, DeleteNodeResponse, GetFabRequest, GetFabResponse, GetRunRequest,
    GetRunResponse, GetTokenRequest, Message, Metadata, Node, PingRequest, PingResponse,
    PullClientAppInputsRequest, PullTaskInsRequest, PullTaskInsResponse,
    PushClientAppOutputsRequest, PushTaskResRequest, PushTaskResResponse, RecordSet, Run, Task,
    TaskIns, TaskRes,
};
use flwr_supernode::backoff::RetryPolicy;
use flwr_supernode::signer::Unsigned;
use flwr_supernode::{ClientAppLifetime, Config, Isolation, NodeError, Tls};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// Set for the re-executed test binary that plays `flwr-clientapp`: the directory it reports to.
const FAKE_DIR_ENV: &str = "FLWR_TEST_FAKE_CLIENTAPP_DIR";
/// The command line the shell script was given.
const FAKE_ARGS_ENV: &str = "FLWR_TEST_FAKE_CLIENTAPP_ARGS";

/// Bounds on the stand-in app, so a lost one never lingers.
const FAKE_MAX_MESSAGES: usize = 50;
const FAKE_MAX_LIFETIME: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct Script {
    next_node_id: u64,
    queue: VecDeque<TaskIns>,
    pushed: Vec<TaskRes>,
    deleted: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
struct MockFleet(Arc<Mutex<Script>>);

impl MockFleet {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

#[tonic::async_trait]
impl Fleet for MockFleet {
    async fn create_node(
        &self,
        _: Request<CreateNodeRequest>,
    ) -> Result<Response<CreateNodeResponse>, Status> {
        let node_id = self.with(|s| {
            s.next_node_id += 1;
            s.next_node_id
        });
        Ok(Response::new(CreateNodeResponse {
            node: Some(Node {
                node_id,
                anonymous: false,
            }),
        }))
    }

    async fn delete_node(
        &self,
        request: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let id = request.into_inner().node.unwrap_or_default().node_id;
        self.with(|s| s.deleted.push(id));
        Ok(Response::new(DeleteNodeResponse {}))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse { success: true }))
    }

    async fn pull_task_ins(
        &self,
        request: Request<PullTaskInsRequest>,
    ) -> Result<Response<PullTaskInsResponse>, Status> {
        let id = request.into_inner().node.unwrap_or_default().node_id;
        let ins = self.with(|s| {
            let mut ins = s.queue.pop_front()?;
            if let Some(consumer) = ins.task.as_mut().and_then(|t| t.consumer.as_mut()) {
                consumer.node_id = id;
            }
            Some(ins)
        });
        Ok(Response::new(PullTaskInsResponse {
            reconnect: None,
            task_ins_list: ins.into_iter().collect(),
        }))
    }

    async fn push_task_res(
        &self,
        request: Request<PushTaskResRequest>,
    ) -> Result<Response<PushTaskResResponse>, Status> {
        let request = request.into_inner();
        self.with(|s| s.pushed.extend(request.task_res_list));
        Ok(Response::new(PushTaskResResponse {
            reconnect: None,
            results: HashMap::new(),
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        // No FAB: the stand-in app needs none.
        Ok(Response::new(GetRunResponse {
            run: Some(Run {
                run_id: request.into_inner().run_id,
                ..Run::default()
            }),
        }))
    }

    async fn get_fab(&self, _: Request<GetFabRequest>) -> Result<Response<GetFabResponse>, Status> {
        Err(Status::not_found("no FABs here"))
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// An instruction for run `run_id`; `behaviour` (the group id) tells the stand-in app what to
/// do. A short `ttl` leaves the ClientApp the SuperNode's minimum budget.
fn task_ins(task_id: &str, run_id: u64, behaviour: &str, ttl: f64) -> TaskIns {
    TaskIns {
        task_id: task_id.to_owned(),
        group_id: behaviour.to_owned(),
        run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(Node {
                node_id: 0,
                anonymous: false,
            }),
            created_at: now(),
            delivered_at: String::new(),
            pushed_at: now(),
            ttl,
            ancestry: Vec::new(),
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            error: None,
        }),
    }
}

/// The stand-in `flwr-clientapp`: a script that records its pid and arguments in `starts`,
/// then becomes this test binary running `fake_clientapp`.
fn fake_clientapp_script(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = std::env::current_exe().unwrap();
    let path = dir.join("fake-flwr-clientapp");
    let body = format!(
        "#!/bin/sh\necho \"$$ $*\" >> {starts}\n\
         {args}=\"$*\" {dir_env}={dir} exec {exe} --exact fake_clientapp --ignored --quiet \
         --test-threads 1 --nocapture\n",
        starts = dir.join("starts").display(),
        args = FAKE_ARGS_ENV,
        dir_env = FAKE_DIR_ENV,
        dir = dir.display(),
        exe = exe.display(),
    );
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The stand-in app's starts: pid and arguments, in order.
fn starts(dir: &Path) -> Vec<(i32, String)> {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (pid, args) = line.split_once(' ')?;
            Some((pid.parse().ok()?, args.to_owned()))
        })
        .collect()
}

/// Whether `pid` still runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Harness {
    fleet: MockFleet,
    shutdown: Option<oneshot::Sender<()>>,
    node: tokio::task::JoinHandle<Result<(), NodeError>>,
    server: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path, lifetime: ClientAppLifetime, queue: Vec<TaskIns>) -> Harness {
    let fleet = MockFleet::default();
    fleet.with(|s| {
        s.next_node_id = 500;
        s.queue.extend(queue);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fleet_address: SocketAddr = listener.local_addr().unwrap();
    let service = FleetServer::new(fleet.clone());
    #[allow(clippy::disallowed_methods)] // test scaffolding, aborted at the end of the test
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let io_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config {
        superlink: fleet_address.to_string().parse().unwrap(),
        tls: Tls::Insecure,
        retry: RetryPolicy::default(),
        node_config: HashMap::new(),
        isolation: Isolation::Subprocess,
        clientapp_lifetime: lifetime,
        clientappio_address: format!("127.0.0.1:{io_port}").parse().unwrap(),
        flwr_dir: Some(dir.join("home")),
        auth: None,
        clientapp_program: fake_clientapp_script(dir),
        max_message_size: flwr_proto::MAX_MESSAGE_SIZE,
    };
    let (tx, rx) = oneshot::channel::<()>();
    #[allow(clippy::disallowed_methods)] // test scaffolding, awaited by the test
    let node = tokio::spawn(flwr_supernode::run_with_signer(
        config,
        Arc::new(Unsigned),
        async move {
            let _ = rx.await;
        },
    ));
    Harness {
        fleet,
        shutdown: Some(tx),
        node,
        server,
    }
}

impl Harness {
    async fn replies(&self, count: usize) -> Vec<TaskRes> {
        eventually(&format!("{count} replies"), || {
            self.fleet.with(|s| s.pushed.len() >= count)
        })
        .await;
        self.fleet.with(|s| s.pushed.clone())
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.node)
            .await
            .expect("the node stops")
            .expect("no panic")
            .expect("a clean stop");
        self.server.abort();
    }
}

/// The pid of the stand-in app that answered `res`, or the error's reason.
fn served_by(res: &TaskRes) -> Result<i32, String> {
    let task = res.task.as_ref().unwrap();
    if let Some(error) = &task.error {
        assert_eq!(error.code, 2, "CLIENT_APP_RAISED_EXCEPTION");
        return Err(error.reason.clone());
    }
    let record = &task.recordset.as_ref().unwrap().configs["served-by"];
    match record.data["pid"].value {
        Some(configs_record_value::Value::Sint64(pid)) => Ok(i32::try_from(pid).unwrap()),
        ref other => panic!("no pid in the reply: {other:?}"),
    }
}

fn ancestry(res: &TaskRes) -> &str {
    &res.task.as_ref().unwrap().ancestry[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_warm_process_serves_message_after_message_and_stops_with_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let queue = (1..=4)
        .map(|i| task_ins(&format!("m{i}"), 7, "ok", 3600.0))
        .collect();
    let harness = start(dir.path(), ClientAppLifetime::Warm, queue).await;
    let replies = harness.replies(4).await;
    let pids: Vec<i32> = replies.iter().map(|res| served_by(res).unwrap()).collect();
    let started = starts(dir.path());
    assert_eq!(
        started.len(),
        1,
        "one process for four messages: {started:?}"
    );
    let (pid, args) = &started[0];
    assert!(pids.iter().all(|served| served == pid), "{pids:?} vs {pid}");
    assert!(!args.contains("--token"), "{args}");
    assert!(
        args.starts_with("--clientappio-api-address 127.0.0.1:") && args.contains("--insecure"),
        "{args}"
    );
    assert_eq!(
        replies.iter().map(ancestry).collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m4"]
    );
    assert!(alive(*pid));
    let fleet = harness.fleet.clone();
    harness.stop().await;
    assert!(!alive(*pid), "the warm ClientApp outlived the SuperNode");
    assert_eq!(fleet.with(|s| s.deleted.clone()), [501]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_message_gets_the_reference_error_reply_and_a_fresh_process() {
    let dir = tempfile::tempdir().unwrap();
    let queue = vec![
        task_ins("before", 7, "ok", 3600.0),
        task_ins("boom", 7, "crash", 3600.0),
        task_ins("after", 7, "ok", 3600.0),
    ];
    let harness = start(dir.path(), ClientAppLifetime::Warm, queue).await;
    let replies = harness.replies(3).await;
    assert_eq!(
        replies.iter().map(ancestry).collect::<Vec<_>>(),
        ["before", "boom", "after"]
    );
    let first = served_by(&replies[0]).unwrap();
    let reason = served_by(&replies[1]).unwrap_err();
    // What a crashed per-message ClientApp gets, with the warm command line (no token).
    assert!(
        reason.starts_with("<class 'subprocess.CalledProcessError'>:<'Command '['"),
        "{reason}"
    );
    assert!(
        reason.ends_with("' returned non-zero exit status 3.'>"),
        "{reason}"
    );
    assert!(!reason.contains("--token"), "{reason}");
    let second = served_by(&replies[2]).unwrap();
    assert_ne!(first, second, "the crashed process cannot have answered");
    let started: Vec<i32> = starts(dir.path()).iter().map(|(pid, _)| *pid).collect();
    assert_eq!(started, [first, second]);
    harness.stop().await;
    assert!(!alive(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_run_gets_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let queue = vec![
        task_ins("a1", 7, "ok", 3600.0),
        task_ins("a2", 7, "ok", 3600.0),
        task_ins("b1", 8, "ok", 3600.0),
        task_ins("b2", 8, "ok", 3600.0),
    ];
    let harness = start(dir.path(), ClientAppLifetime::Warm, queue).await;
    let replies = harness.replies(4).await;
    let pids: Vec<i32> = replies.iter().map(|res| served_by(res).unwrap()).collect();
    assert_eq!(pids[0], pids[1]);
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[0], pids[2], "run 8 must not reuse run 7's process");
    assert!(!alive(pids[0]), "run 7's process was not stopped");
    let started: Vec<i32> = starts(dir.path()).iter().map(|(pid, _)| *pid).collect();
    assert_eq!(started, [pids[0], pids[2]]);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_exit_is_restarted_and_the_next_process_serves() {
    let dir = tempfile::tempdir().unwrap();
    // The first process exits at once (see `fake_clientapp`).
    std::fs::write(dir.path().join("exit-at-start"), "1").unwrap();
    let harness = start(dir.path(), ClientAppLifetime::Warm, Vec::new()).await;
    eventually("a restart after the idle exit", || {
        starts(dir.path()).len() >= 2
    })
    .await;
    harness
        .fleet
        .with(|s| s.queue.push_back(task_ins("late", 7, "ok", 3600.0)));
    let replies = harness.replies(1).await;
    let pid = served_by(&replies[0]).unwrap();
    let started: Vec<i32> = starts(dir.path()).iter().map(|(pid, _)| *pid).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(pid, started[1]);
    harness.stop().await;
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_budget_replaces_the_process() {
    let dir = tempfile::tempdir().unwrap();
    // A TTL of 1 s: the ClientApp gets the SuperNode's minimum budget (10 s).
    let queue = vec![
        task_ins("stuck", 7, "hang", 1.0),
        task_ins("next", 7, "ok", 3600.0),
    ];
    let harness = start(dir.path(), ClientAppLifetime::Warm, queue).await;
    let replies = harness.replies(2).await;
    let reason = served_by(&replies[0]).unwrap_err();
    assert!(
        reason.starts_with("<class 'subprocess.TimeoutExpired'>:<'Command '['")
            && reason.contains("timed out after 10 seconds"),
        "{reason}"
    );
    let started: Vec<i32> = starts(dir.path()).iter().map(|(pid, _)| *pid).collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(!alive(started[0]), "the stuck process was not stopped");
    assert_eq!(served_by(&replies[1]).unwrap(), started[1]);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_mode_starts_one_process_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let queue = (1..=3)
        .map(|i| task_ins(&format!("m{i}"), 7, "ok", 3600.0))
        .collect();
    let harness = start(dir.path(), ClientAppLifetime::PerMessage, queue).await;
    let replies = harness.replies(3).await;
    let pids: Vec<i32> = replies.iter().map(|res| served_by(res).unwrap()).collect();
    let started = starts(dir.path());
    assert_eq!(started.len(), 3, "{started:?}");
    for ((pid, args), served) in started.iter().zip(&pids) {
        assert_eq!(pid, served);
        assert!(args.contains(" --token "), "{args}");
    }
    harness.stop().await;
}

/// The stand-in `flwr-clientapp`; only does something when run by the script of
/// [`fake_clientapp_script`].
#[test]
#[ignore = "the stand-in flwr-clientapp, run by the other tests"]
fn fake_clientapp() {
    let Some(dir) = std::env::var_os(FAKE_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let args = std::env::var(FAKE_ARGS_ENV).unwrap_or_default();
    let exit_at_start = dir.join("exit-at-start");
    if std::fs::remove_file(&exit_at_start).is_ok() {
        std::process::exit(5);
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    let value = |flag: &str| {
        words
            .iter()
            .position(|word| *word == flag)
            .and_then(|at| words.get(at + 1))
            .map(|value| (*value).to_owned())
    };
    let address = value("--clientappio-api-address").expect("an address");
    let token = value("--token").map(|token| token.parse::<u64>().expect("a numeric token"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        tokio::time::timeout(FAKE_MAX_LIFETIME, serve(&address, token))
            .await
            .unwrap_or(4)
    });
    std::process::exit(code);
}

/// The reference loop: GetToken until one comes (pausing after every call, as the reference
/// does, though shorter), pull, reply, push; exits 0 on a refused pull, as the reference does.
async fn serve(address: &str, mut token: Option<u64>) -> i32 {
    let run_once = token.is_some();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut client = ClientAppIoClient::new(channel);
    for _ in 0..FAKE_MAX_MESSAGES {
        let mut attempts = 0;
        while token.is_none() {
            attempts += 1;
            if attempts > 1000 {
                return 2;
            }
            match client.get_token(GetTokenRequest {}).await {
                Ok(response) => token = Some(response.into_inner().token),
                Err(status) if status.code() == Code::FailedPrecondition => {}
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(current) = token.take() else {
            return 2;
        };
        let Ok(inputs) = client
            .pull_client_app_inputs(PullClientAppInputsRequest { token: current })
            .await
        else {
            return 0;
        };
        let inputs = inputs.into_inner();
        let message = inputs.message.unwrap_or_default();
        let incoming = message.metadata.unwrap_or_default();
        match incoming.group_id.as_str() {
            "crash" => return 3,
            "hang" => tokio::time::sleep(FAKE_MAX_LIFETIME).await,
            _ => {}
        }
        let pid = i64::from(std::process::id());
        let served_by = ConfigsRecord {
            data: HashMap::from([(
                "pid".to_owned(),
                ConfigsRecordValue {
                    value: Some(configs_record_value::Value::Sint64(pid)),
                },
            )]),
        };
        let created_at = now();
        let reply = Message {
            metadata: Some(Metadata {
                run_id: incoming.run_id,
                message_id: String::new(),
                src_node_id: incoming.dst_node_id,
                dst_node_id: incoming.src_node_id,
                reply_to_message: incoming.message_id.clone(),
                group_id: incoming.group_id.clone(),
                ttl: incoming.ttl - (created_at - incoming.created_at),
                message_type: incoming.message_type.clone(),
                created_at,
            }),
            content: Some(RecordSet {
                configs: HashMap::from([("served-by".to_owned(), served_by)]),
                ..RecordSet::default()
            }),
            error: None,
        };
        let pushed = client
            .push_client_app_outputs(PushClientAppOutputsRequest {
                token: current,
                message: Some(reply),
                context: inputs.context,
            })
            .await;
        if pushed.is_err() {
            return 0;
        }
        if run_once {
            return 0;
        }
    }
    0
}
