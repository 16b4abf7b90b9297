//! Hardening against a misbehaving or half-dead SuperLink, and against being killed: call
//! deadlines, UNAUTHENTICATED retries, cache eviction of stopped runs, and ClientApps that die
//! with a SIGKILLed `flower-supernode`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flwr_proto::fleet_client::FleetClient;
use flwr_proto::fleet_server::{Fleet as FleetService, FleetServer};
use flwr_proto::{
    CreateNodeRequest, CreateNodeResponse, DeleteNodeRequest, DeleteNodeResponse, GetFabRequest,
    GetFabResponse, GetRunRequest, GetRunResponse, Node, PingRequest, PingResponse,
    PullTaskInsRequest, PullTaskInsResponse, PushTaskResRequest, PushTaskResResponse, RecordSet,
    Run, Task, TaskIns,
};
use flwr_supernode::backoff::RetryPolicy;
use flwr_supernode::fleet::{CallError, Deadlines, Fleet};
use flwr_supernode::signer::Unsigned;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const RUN_ID: u64 = 7;

#[derive(Debug, Default)]
struct Script {
    /// PullTaskIns calls that never answer before the others are served.
    hanging_pulls: usize,
    /// CreateNode calls refused with UNAUTHENTICATED first (`usize::MAX`: always).
    refusals: usize,
    create_calls: usize,
    pull_calls: usize,
    get_run_calls: usize,
    queue: VecDeque<TaskIns>,
    /// Task ids whose reply is refused with PERMISSION_DENIED (the run was stopped).
    denied_replies: Vec<String>,
    pushed: usize,
}

#[derive(Clone, Debug, Default)]
struct Mock(Arc<Mutex<Script>>);

impl Mock {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

#[tonic::async_trait]
impl FleetService for Mock {
    async fn create_node(
        &self,
        _: Request<CreateNodeRequest>,
    ) -> Result<Response<CreateNodeResponse>, Status> {
        let refuse = self.with(|s| {
            s.create_calls += 1;
            s.create_calls <= s.refusals
        });
        if refuse {
            return Err(Status::unauthenticated("Access denied"));
        }
        Ok(Response::new(CreateNodeResponse {
            node: Some(Node {
                node_id: 1,
                anonymous: false,
            }),
        }))
    }

    async fn delete_node(
        &self,
        _: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        Ok(Response::new(DeleteNodeResponse {}))
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse { success: true }))
    }

    async fn pull_task_ins(
        &self,
        _: Request<PullTaskInsRequest>,
    ) -> Result<Response<PullTaskInsResponse>, Status> {
        let (hang, ins) = self.with(|s| {
            s.pull_calls += 1;
            if s.pull_calls <= s.hanging_pulls {
                (true, None)
            } else {
                (false, s.queue.pop_front())
            }
        });
        if hang {
            std::future::pending::<()>().await;
        }
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
        let ancestry = request
            .task_res_list
            .first()
            .and_then(|res| res.task.as_ref())
            .map(|task| task.ancestry.clone())
            .unwrap_or_default();
        let denied = self.with(|s| {
            s.pushed += 1;
            ancestry.iter().any(|id| s.denied_replies.contains(id))
        });
        if denied {
            return Err(Status::permission_denied("Run is not running"));
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
        self.with(|s| s.get_run_calls += 1);
        Ok(Response::new(GetRunResponse {
            run: Some(Run {
                run_id,
                ..Run::default()
            }),
        }))
    }

    async fn get_fab(&self, _: Request<GetFabRequest>) -> Result<Response<GetFabResponse>, Status> {
        Err(Status::not_found("no FAB"))
    }
}

fn task_ins(task_id: &str) -> TaskIns {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    TaskIns {
        task_id: task_id.to_owned(),
        group_id: "1".to_owned(),
        run_id: RUN_ID,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(Node {
                node_id: 1,
                anonymous: false,
            }),
            created_at: now,
            pushed_at: now,
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
    }
}

/// Serves `mock` on a free loopback port until the returned handle is aborted.
async fn serve(mock: Mock) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    #[allow(clippy::disallowed_methods)] // test scaffolding, aborted at the end of the test
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(FleetServer::new(mock))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    (address, server)
}

fn client(address: SocketAddr) -> Fleet {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    Fleet::from_client(
        FleetClient::new(channel),
        Arc::new(Unsigned),
        RetryPolicy::default(),
        CancellationToken::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_call_is_abandoned_at_its_deadline_and_retried() {
    let mock = Mock::default();
    mock.with(|s| {
        s.hanging_pulls = 1;
        s.queue.push_back(task_ins("after-the-hang"));
    });
    let (address, server) = serve(mock.clone()).await;
    let short = Deadlines {
        download: Duration::from_millis(300),
        pull_hold: Duration::from_millis(100),
        ..Deadlines::default()
    };
    let fleet = client(address).with_deadlines(short);
    let node = Node {
        node_id: 1,
        anonymous: false,
    };
    let pulled = tokio::time::timeout(Duration::from_secs(30), fleet.pull_task_ins(&node))
        .await
        .expect("the hung PullTaskIns was never abandoned")
        .expect("the retry succeeds");
    assert_eq!(
        pulled.task_ins.map(|ins| ins.task_id).as_deref(),
        Some("after-the-hang")
    );
    assert_eq!(mock.with(|s| s.pull_calls), 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_is_retried_a_few_times_then_ends_with_one_clear_error() {
    // A SuperLink rewriting its allow-list refuses a listed key twice, then lets it in.
    let mock = Mock::default();
    mock.with(|s| s.refusals = 2);
    let (address, server) = serve(mock.clone()).await;
    let node = tokio::time::timeout(Duration::from_secs(30), client(address).create_node())
        .await
        .expect("bounded")
        .expect("registered after two refusals");
    assert_eq!(node.node_id, 1);
    assert_eq!(mock.with(|s| s.create_calls), 3);

    // A key that stays refused: four answers, then one error naming the cause.
    let mock = Mock::default();
    mock.with(|s| s.refusals = usize::MAX);
    let (address, other) = serve(mock.clone()).await;
    let error = tokio::time::timeout(Duration::from_secs(30), client(address).create_node())
        .await
        .expect("bounded")
        .expect_err("refused for good");
    assert!(
        matches!(error, CallError::Unauthenticated { refusals: 4, .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("Access denied") && text.contains("allow-list"),
        "{text}"
    );
    assert_eq!(mock.with(|s| s.create_calls), 4);
    server.abort();
    other.abort();
}

fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_is_fetched_again_rather_than_cached_forever() {
    let home = tempfile::tempdir().unwrap();
    let mock = Mock::default();
    mock.with(|s| {
        s.queue
            .extend([task_ins("a"), task_ins("b"), task_ins("c")]);
        s.denied_replies.push("b".to_owned());
    });
    let (address, server) = serve(mock.clone()).await;
    // The app exits at once without outputs: each message gets an error reply, which is enough
    // to drive PushTaskRes.
    let program = script(home.path(), "fake-clientapp", "exit 0");
    let config = flwr_supernode::Config {
        superlink: address.to_string().parse().unwrap(),
        tls: flwr_supernode::Tls::Insecure,
        retry: RetryPolicy::default(),
        node_config: HashMap::new(),
        isolation: flwr_supernode::Isolation::Subprocess,
        clientapp_lifetime: flwr_supernode::ClientAppLifetime::PerMessage,
        clientappio_address: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        flwr_dir: Some(home.path().to_path_buf()),
        auth: None,
        clientapp_program: program,
        max_message_size: flwr_proto::MAX_MESSAGE_SIZE,
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    #[allow(clippy::disallowed_methods)] // test scaffolding, awaited by the test
    let node = tokio::spawn(flwr_supernode::run_with_signer(
        config,
        Arc::new(Unsigned),
        async move { stopped.cancelled().await },
    ));
    wait_until("three replies", || mock.with(|s| s.pushed >= 3)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), node)
        .await
        .expect("node stops")
        .expect("no panic")
        .expect("clean stop");
    // "a" fetched the run; "b"'s reply was refused (run stopped), so "c" fetches it again.
    assert_eq!(mock.with(|s| s.get_run_calls), 2);
    server.abort();
}

/// Whether `pid` still runs (a zombie waiting for PID 1 to reap it counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clientapp_dies_with_a_killed_supernode() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("clientapp.pid");
    script(
        dir.path(),
        "flwr-clientapp",
        &format!("echo $$ > {}\nexec sleep 300", pidfile.display()),
    );
    let mock = Mock::default();
    mock.with(|s| s.queue.push_back(task_ins("slow")));
    let (address, server) = serve(mock.clone()).await;
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut supernode = Command::new(env!("CARGO_BIN_EXE_flower-supernode"))
        .args(["--insecure", "--superlink", &address.to_string()])
        .arg("--clientappio-api-address")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--flwr-dir")
        .arg(dir.path().join("home"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flower-supernode");
    let read_pid = || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_pid().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clientapp = read_pid();
    // SIGKILL: the SuperNode gets no chance to stop its ClientApp itself.
    let _ = supernode.kill();
    let _ = supernode.wait();
    server.abort();
    let clientapp = clientapp.expect("the SuperNode never started flwr-clientapp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(clientapp) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let survived = alive(clientapp);
    if survived {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(clientapp),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!survived, "flwr-clientapp outlived the SIGKILLed SuperNode");
}
