//! The node loop against a scripted, in-process Fleet server (a mock control plane), with the
//! test itself playing the external ClientApp over ClientAppIo (`--isolation process`).
//!
//! Covers: registration, the exact TaskRes shape, per-run context, FAB fetched once per hash and
//! installed, re-registration when the SuperLink forgets the node, PERMISSION_DENIED abandoning a
//! message, giving up on a non-retried status, and DeleteNode on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flwr_proto::client_app_io_client::ClientAppIoClient;
use flwr_proto::fleet_server::{Fleet, FleetServer};
use flwr_proto::{
    configs_record_value, scalar, ConfigsRecord, ConfigsRecordValue, CreateNodeRequest,
    CreateNodeResponse, DeleteNodeRequest, DeleteNodeResponse, Fab, GetFabRequest, GetFabResponse,
    GetRunRequest, GetRunResponse, GetTokenRequest, Message, Metadata, Node, PingRequest,
    PingResponse, PullClientAppInputsRequest, PullTaskInsRequest, PullTaskInsResponse,
    PushClientAppOutputsRequest, PushTaskResRequest, PushTaskResResponse, RecordSet, Run, Scalar,
    Task, TaskIns,
};
use flwr_supernode::backoff::RetryPolicy;
use flwr_supernode::signer::Unsigned;
use flwr_supernode::{ClientAppLifetime, Config, Isolation, NodeError, Tls};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

const RUN_ID: u64 = 77;
const DENIED_RUN_ID: u64 = 78;

#[derive(Debug, Default)]
struct Script {
    next_node_id: u64,
    /// Node ids whose pings answer `success=false` (the SuperLink "forgot" them).
    forgotten: HashSet<u64>,
    created: Vec<u64>,
    deleted: Vec<u64>,
    pulled_by: Vec<u64>,
    pings: Vec<u64>,
    queue: VecDeque<TaskIns>,
    pushed: Vec<PushTaskResRequest>,
    fab: Vec<u8>,
    get_fab_calls: usize,
    get_run_calls: usize,
    /// When set, PushTaskRes fails with this code.
    push_failure: Option<Code>,
}

#[derive(Clone, Debug)]
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
            s.created.push(s.next_node_id);
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

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let request = request.into_inner();
        assert_eq!(request.ping_interval, 30.0);
        let id = request.node.unwrap_or_default().node_id;
        let success = self.with(|s| {
            s.pings.push(id);
            !s.forgotten.contains(&id)
        });
        Ok(Response::new(PingResponse { success }))
    }

    async fn pull_task_ins(
        &self,
        request: Request<PullTaskInsRequest>,
    ) -> Result<Response<PullTaskInsResponse>, Status> {
        let id = request.into_inner().node.unwrap_or_default().node_id;
        let ins = self.with(|s| {
            s.pulled_by.push(id);
            if s.forgotten.contains(&id) {
                return None;
            }
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
        let failure = self.with(|s| {
            s.pushed.push(request.into_inner());
            s.push_failure
        });
        if let Some(code) = failure {
            return Err(Status::new(code, "Exception calling application: 77"));
        }
        Ok(Response::new(PushTaskResResponse {
            reconnect: None,
            results: HashMap::new(),
        }))
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        let run_id = request.into_inner().run_id;
        let hash = self.with(|s| {
            s.get_run_calls += 1;
            flwr_core::fab::hash(&s.fab)
        });
        if run_id == DENIED_RUN_ID {
            return Err(Status::permission_denied("Run is finished."));
        }
        Ok(Response::new(GetRunResponse {
            run: Some(Run {
                run_id,
                fab_id: String::new(),
                fab_version: String::new(),
                override_config: HashMap::from([
                    ("local-epochs".to_owned(), sint(5)),
                    ("not-in-app".to_owned(), sint(1)),
                ]),
                fab_hash: hash,
                ..Run::default()
            }),
        }))
    }

    async fn get_fab(
        &self,
        request: Request<GetFabRequest>,
    ) -> Result<Response<GetFabResponse>, Status> {
        let request = request.into_inner();
        let content = self.with(|s| {
            s.get_fab_calls += 1;
            s.fab.clone()
        });
        assert_eq!(request.hash_str, flwr_core::fab::hash(&content));
        Ok(Response::new(GetFabResponse {
            fab: Some(Fab {
                hash_str: request.hash_str,
                content,
            }),
        }))
    }
}

fn sint(v: i64) -> Scalar {
    Scalar {
        scalar: Some(scalar::Scalar::Sint64(v)),
    }
}

/// A FAB like `flwr build` makes: pyproject.toml, the app files, `.info/CONTENT`.
fn fab() -> Vec<u8> {
    let pyproject = "[project]\nname = \"mockapp\"\nversion = \"1.2.3\"\n\n\
        [tool.flwr.app]\npublisher = \"tester\"\n\n\
        [tool.flwr.app.components]\nserverapp = \"app:server\"\nclientapp = \"app:client\"\n\n\
        [tool.flwr.app.config]\nlocal-epochs = 1\nlr = 0.5\n";
    flwr_core::FabBuilder::new(pyproject)
        .file("app.py", "client = None\n")
        .build()
        .unwrap()
}

fn task_ins(task_id: &str, run_id: u64, round: &str) -> TaskIns {
    let config = ConfigsRecord {
        data: HashMap::from([(
            "round".to_owned(),
            ConfigsRecordValue {
                value: Some(configs_record_value::Value::String(round.to_owned())),
            },
        )]),
    };
    TaskIns {
        task_id: task_id.to_owned(),
        group_id: round.to_owned(),
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
            ttl: 3600.0,
            ancestry: Vec::new(),
            task_type: "train".to_owned(),
            recordset: Some(RecordSet {
                configs: HashMap::from([("config".to_owned(), config)]),
                ..RecordSet::default()
            }),
            error: None,
        }),
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

struct Harness {
    fleet: MockFleet,
    io_address: String,
    shutdown: Option<oneshot::Sender<()>>,
    node: tokio::task::JoinHandle<Result<(), NodeError>>,
    _server: tokio::task::JoinHandle<()>,
}

async fn start(script: Script, home: &Path, retry: RetryPolicy) -> Harness {
    start_with(
        script,
        home,
        retry,
        Isolation::Process,
        ClientAppLifetime::PerMessage,
        "flwr-clientapp".into(),
    )
    .await
}

async fn start_with(
    script: Script,
    home: &Path,
    retry: RetryPolicy,
    isolation: Isolation,
    clientapp_lifetime: ClientAppLifetime,
    clientapp_program: std::path::PathBuf,
) -> Harness {
    let fleet = MockFleet(Arc::new(Mutex::new(script)));
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
    let io_address = format!("127.0.0.1:{io_port}");
    let config = Config {
        superlink: fleet_address.to_string().parse().unwrap(),
        tls: Tls::Insecure,
        retry,
        node_config: HashMap::from([("partition-id".to_owned(), sint(1))]),
        isolation,
        clientapp_lifetime,
        clientappio_address: io_address.parse().unwrap(),
        flwr_dir: Some(home.to_path_buf()),
        auth: None,
        clientapp_program,
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
        io_address,
        shutdown: Some(tx),
        node,
        _server: server,
    }
}

impl Harness {
    /// Plays one round of an external `flwr-clientapp`: GetToken (polling), pull, reply.
    async fn serve_one_message(&self, bump_state: bool) -> (Message, flwr_proto::Context, Run) {
        let mut client = None;
        for _ in 0..100 {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.io_address))
                    .unwrap();
            match endpoint.connect().await {
                Ok(channel) => {
                    client = Some(ClientAppIoClient::new(channel));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut client = client.expect("ClientAppIo server never came up");
        let mut token = None;
        for _ in 0..200 {
            match client.get_token(GetTokenRequest {}).await {
                Ok(response) => {
                    token = Some(response.into_inner().token);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::FailedPrecondition);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let token = token.expect("no message arrived");
        let inputs = client
            .pull_client_app_inputs(PullClientAppInputsRequest { token })
            .await
            .unwrap()
            .into_inner();
        let message = inputs.message.unwrap();
        let mut context = inputs.context.unwrap();
        let run = inputs.run.unwrap();
        assert!(inputs.fab.is_some(), "the FAB is always sent");
        let incoming = message.metadata.clone().unwrap();
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
            content: Some(RecordSet::default()),
            error: None,
        };
        let seen_context = context.clone();
        if bump_state {
            let state = context.state.get_or_insert_with(RecordSet::default);
            let count = state.configs.len();
            state
                .configs
                .insert(format!("visit-{count}"), ConfigsRecord::default());
        }
        let status = client
            .push_client_app_outputs(PushClientAppOutputsRequest {
                token,
                message: Some(reply),
                context: Some(context),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.message, "Success");
        (message, seen_context, run)
    }

    async fn wait_until(&self, what: &str, condition: impl Fn(&Script) -> bool) {
        for _ in 0..300 {
            if self.fleet.with(|s| condition(s)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}: {:#?}",
            self.fleet.0.lock().unwrap()
        );
    }

    async fn stop(mut self) -> Result<(), NodeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.node)
            .await
            .expect("node did not stop")
            .expect("node task panicked")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_replies_context_and_shutdown() {
    let home = tempfile::tempdir().unwrap();
    let script = Script {
        next_node_id: 1000,
        fab: fab(),
        queue: VecDeque::from([
            task_ins("ins-1", RUN_ID, "1"),
            task_ins("ins-denied", DENIED_RUN_ID, "1"),
            task_ins("ins-2", RUN_ID, "2"),
        ]),
        ..Script::default()
    };
    let harness = start(script, home.path(), RetryPolicy::default()).await;

    let (message, context, run) = harness.serve_one_message(true).await;
    let metadata = message.metadata.unwrap();
    assert_eq!(metadata.message_id, "ins-1");
    assert_eq!(metadata.dst_node_id, 1001);
    assert_eq!(context.node_id, 1001);
    assert_eq!(context.run_id, RUN_ID);
    assert_eq!(context.node_config.get("partition-id"), Some(&sint(1)));
    // run_config = app defaults with known overrides applied, unknown ones dropped.
    assert_eq!(context.run_config.get("local-epochs"), Some(&sint(5)));
    assert!(context.run_config.contains_key("lr"));
    assert!(!context.run_config.contains_key("not-in-app"));
    assert_eq!(run.fab_id, "tester/mockapp");
    assert_eq!(run.fab_version, "1.2.3");

    // The denied run's message is abandoned; the next one of the good run is served, with the
    // state the app left in the context last time.
    let (message, context, _) = harness.serve_one_message(false).await;
    assert_eq!(message.metadata.unwrap().message_id, "ins-2");
    assert!(context.state.unwrap().configs.contains_key("visit-0"));

    harness
        .wait_until("two replies", |s| s.pushed.len() == 2)
        .await;
    let (pushed, fab_calls, run_calls) = harness
        .fleet
        .with(|s| (s.pushed.clone(), s.get_fab_calls, s.get_run_calls));
    assert_eq!(fab_calls, 1, "FAB fetched once per hash");
    // Run 77 once (cached), run 78 once (denied, not cached).
    assert_eq!(run_calls, 2);
    for (request, ins_id) in pushed.iter().zip(["ins-1", "ins-2"]) {
        assert_eq!(request.node.unwrap().node_id, 1001);
        assert_eq!(request.task_res_list.len(), 1);
        let res = &request.task_res_list[0];
        assert_eq!(res.task_id, "");
        assert_eq!(res.run_id, RUN_ID);
        let task = res.task.as_ref().unwrap();
        assert_eq!(
            task.producer,
            Some(Node {
                node_id: 1001,
                anonymous: false
            })
        );
        assert_eq!(
            task.consumer,
            Some(Node {
                node_id: 0,
                anonymous: true
            })
        );
        assert_eq!(task.ancestry, vec![ins_id.to_owned()]);
        assert_eq!(task.task_type, "train");
        assert!(task.ttl > 3500.0 && task.ttl <= 3600.0);
        assert!(task.recordset.is_some() && task.error.is_none());
    }
    // The FAB was installed where flwr-clientapp looks for it.
    let installed = home.path().join("apps").join(format!(
        "tester.mockapp.1.2.3.{}",
        &flwr_core::fab::hash(&fab())[..8]
    ));
    assert!(installed.join("app.py").is_file(), "{installed:?}");

    harness.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_node_on_shutdown() {
    let home = tempfile::tempdir().unwrap();
    let script = Script {
        next_node_id: 5,
        fab: fab(),
        ..Script::default()
    };
    let harness = start(script, home.path(), RetryPolicy::default()).await;
    harness
        .wait_until("registration and a ping", |s| !s.pings.is_empty())
        .await;
    let fleet = harness.fleet.clone();
    harness.stop().await.unwrap();
    assert_eq!(fleet.with(|s| s.deleted.clone()), vec![6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_node_registers_again() {
    let home = tempfile::tempdir().unwrap();
    let script = Script {
        next_node_id: 10,
        // Node 11 is "forgotten" as soon as it registers, as after a SuperLink restart with
        // in-memory state.
        forgotten: HashSet::from([11]),
        fab: fab(),
        queue: VecDeque::from([task_ins("after-restart", RUN_ID, "1")]),
        ..Script::default()
    };
    let harness = start(script, home.path(), RetryPolicy::default()).await;
    let (message, context, _) = harness.serve_one_message(false).await;
    assert_eq!(message.metadata.unwrap().dst_node_id, 12);
    assert_eq!(context.node_id, 12);
    harness
        .wait_until("the reply", |s| s.pushed.len() == 1)
        .await;
    let fleet = harness.fleet.clone();
    harness.stop().await.unwrap();
    fleet.with(|s| {
        assert_eq!(s.created, vec![11, 12]);
        assert_eq!(s.pushed[0].node.unwrap().node_id, 12);
        assert_eq!(s.deleted, vec![12]);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retried_status_gives_up_without_delete_node() {
    let home = tempfile::tempdir().unwrap();
    let script = Script {
        next_node_id: 20,
        fab: fab(),
        queue: VecDeque::from([task_ins("doomed", RUN_ID, "1")]),
        push_failure: Some(Code::Unknown),
        ..Script::default()
    };
    let harness = start(script, home.path(), RetryPolicy::default()).await;
    harness.serve_one_message(false).await;
    // Keep the shutdown sender alive: dropping it would count as a shutdown request.
    let Harness {
        fleet,
        node,
        shutdown: _keep_running,
        ..
    } = harness;
    let outcome = tokio::time::timeout(Duration::from_secs(20), node)
        .await
        .expect("node did not give up")
        .expect("node task panicked");
    let error = outcome.expect_err("UNKNOWN on PushTaskRes must end the node");
    let text = anyhow_like(&error);
    assert!(text.contains("PushTaskRes failed: Unknown"), "{text}");
    assert!(
        fleet.with(|s| s.deleted.is_empty()),
        "no DeleteNode after giving up"
    );
}

/// A stand-in for `flwr-clientapp` that records its arguments and then runs `body`.
fn fake_clientapp(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("fake-flwr-clientapp");
    let args = dir.join("args");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"$@\" >> {}\n{body}\n", args.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_clientapp_gets_the_reference_error_reply() {
    let home = tempfile::tempdir().unwrap();
    let program = fake_clientapp(home.path(), "exit 1");
    let script = Script {
        next_node_id: 30,
        fab: fab(),
        queue: VecDeque::from([
            task_ins("crash-1", RUN_ID, "1"),
            task_ins("crash-2", RUN_ID, "2"),
        ]),
        ..Script::default()
    };
    let harness = start_with(
        script,
        home.path(),
        RetryPolicy::default(),
        Isolation::Subprocess,
        ClientAppLifetime::PerMessage,
        program,
    )
    .await;
    // Both messages are answered: a crash does not wedge the ClientAppIo state.
    harness
        .wait_until("two error replies", |s| s.pushed.len() == 2)
        .await;
    let pushed = harness.fleet.with(|s| s.pushed.clone());
    let io_address = harness.io_address.clone();
    harness.stop().await.unwrap();
    for request in &pushed {
        let task = request.task_res_list[0].task.clone().unwrap();
        assert!(task.recordset.is_none());
        let error = task.error.unwrap();
        assert_eq!(error.code, 2);
        assert!(
            error
                .reason
                .starts_with("<class 'subprocess.CalledProcessError'>:<'Command '["),
            "{}",
            error.reason
        );
        assert!(
            error
                .reason
                .ends_with("' returned non-zero exit status 1.'>"),
            "{}",
            error.reason
        );
    }
    let args = std::fs::read_to_string(home.path().join("args")).unwrap();
    let first = args.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("--clientappio-api-address {io_address} --token ")),
        "{first}"
    );
    assert!(first.contains(" --insecure --flwr-dir "), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_running_clientapp() {
    let home = tempfile::tempdir().unwrap();
    let marker = home.path().join("still-running");
    // The app would outlive the test by far; its own child would leave a marker after 5 s.
    let body = format!("(sleep 5; touch {}) &\nsleep 600", marker.display());
    let program = fake_clientapp(home.path(), &body);
    let script = Script {
        next_node_id: 40,
        fab: fab(),
        queue: VecDeque::from([task_ins("slow", RUN_ID, "1")]),
        ..Script::default()
    };
    let harness = start_with(
        script,
        home.path(),
        RetryPolicy::default(),
        Isolation::Subprocess,
        ClientAppLifetime::PerMessage,
        program,
    )
    .await;
    for _ in 0..200 {
        if home.path().join("args").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        home.path().join("args").exists(),
        "the ClientApp never started"
    );
    let fleet = harness.fleet.clone();
    let stopping = std::time::Instant::now();
    harness.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );
    fleet.with(|s| {
        assert!(
            s.pushed.is_empty(),
            "an abandoned message must not be answered"
        );
        assert_eq!(s.deleted, vec![41]);
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !marker.exists(),
        "the ClientApp's process group survived the shutdown"
    );
}

/// `{:#}`-style rendering of an error and its sources, like the binary prints.
fn anyhow_like(error: &NodeError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
