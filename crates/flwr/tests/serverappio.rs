//! The ServerApp runner, the Grid and FedAvg against an in-process ServerAppIo server that
//! answers like the reference SuperLink with two Python `NumPyClient` nodes behind it:
//! the `flwr-serverapp` call sequence, TaskIns shapes, aggregation, final status, and the
//! failed and stopped paths.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flwr::compat::{EvaluateIns, EvaluateRes, FitIns, FitRes, Status};
use flwr::server::{run_serverapp, BoxFuture, FedAvg, Grid, LogTee, ServerApp, ServerAppOptions};
use flwr::{AppError, Array, Config, Context, Message, Payload, Scalar};
use flwr_proto as proto;
use flwr_proto::server_app_io_server::{ServerAppIo, ServerAppIoServer};
use tonic::{Request, Response, Status as GrpcStatus};

const RUN_ID: u64 = 5;
const NODES: [u64; 2] = [11, 22];

#[derive(Default)]
struct State {
    /// `PullServerAppInputs` calls answered empty before the run is handed out.
    not_pending: usize,
    pending: bool,
    calls: Vec<String>,
    task_ins: HashMap<String, proto::TaskIns>,
    pushed: Vec<proto::TaskIns>,
    statuses: Vec<proto::RunStatus>,
    outputs: Option<proto::Context>,
    logs: Vec<String>,
    /// Answer `PullTaskRes` with PERMISSION_DENIED (the run was stopped).
    stopped: bool,
}

#[derive(Clone, Default)]
struct MockSuperLink {
    state: Arc<Mutex<State>>,
}

impl MockSuperLink {
    fn call(&self, name: &str) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().expect("lock");
        state.calls.push(name.to_owned());
        state
    }
}

fn run() -> proto::Run {
    proto::Run {
        run_id: RUN_ID,
        fab_id: "test/mock".into(),
        fab_version: "1.0.0".into(),
        fab_hash: "hash".into(),
        override_config: HashMap::from([(
            "num-server-rounds".to_owned(),
            proto::Scalar::from(Scalar::Sint64(2)),
        )]),
        status: Some(proto::RunStatus {
            status: "starting".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a Python NumPyClient on `node` answers: model `[value]` trained on `examples`.
fn reply_to(ins: &proto::TaskIns) -> proto::TaskRes {
    let task = ins.task.clone().expect("task");
    let node = task.consumer.expect("consumer").node_id;
    let (value, examples) = if node == NODES[0] { (1.0, 1) } else { (4.0, 3) };
    let content = match task.task_type.as_str() {
        "train" => FitRes {
            status: Status::success(),
            parameters: vec![Array::from_f64(&[1, 1], &[value]).expect("array")],
            num_examples: examples,
            metrics: Config::from([("train_loss".to_owned(), Scalar::Double(value))]),
        }
        .into_record_set(),
        _ => EvaluateRes {
            status: Status::success(),
            loss: value,
            num_examples: examples,
            metrics: Config::from([("accuracy".to_owned(), Scalar::Double(value / 4.0))]),
        }
        .into_record_set(),
    };
    proto::TaskRes {
        task_id: format!("res-{}", ins.task_id),
        group_id: ins.group_id.clone(),
        run_id: ins.run_id,
        task: Some(proto::Task {
            producer: Some(proto::Node {
                node_id: node,
                anonymous: false,
            }),
            consumer: Some(proto::Node {
                node_id: 0,
                anonymous: true,
            }),
            created_at: flwr::now(),
            ttl: task.ttl,
            ancestry: vec![ins.task_id.clone()],
            task_type: task.task_type,
            recordset: Some(content.into()),
            ..Default::default()
        }),
    }
}

#[tonic::async_trait]
impl ServerAppIo for MockSuperLink {
    async fn create_run(
        &self,
        _: Request<proto::CreateRunRequest>,
    ) -> Result<Response<proto::CreateRunResponse>, GrpcStatus> {
        Err(GrpcStatus::unimplemented("not used"))
    }

    async fn get_nodes(
        &self,
        request: Request<proto::GetNodesRequest>,
    ) -> Result<Response<proto::GetNodesResponse>, GrpcStatus> {
        let _state = self.call("GetNodes");
        assert_eq!(request.into_inner().run_id, RUN_ID);
        let nodes = NODES
            .iter()
            .map(|&node_id| proto::Node {
                node_id,
                anonymous: false,
            })
            .collect();
        Ok(Response::new(proto::GetNodesResponse { nodes }))
    }

    async fn push_task_ins(
        &self,
        request: Request<proto::PushTaskInsRequest>,
    ) -> Result<Response<proto::PushTaskInsResponse>, GrpcStatus> {
        let mut state = self.call("PushTaskIns");
        let request = request.into_inner();
        let mut task_ids = Vec::new();
        for mut ins in request.task_ins_list {
            state.pushed.push(ins.clone());
            let id = format!("ins-{}", state.pushed.len());
            ins.task_id.clone_from(&id);
            state.task_ins.insert(id.clone(), ins);
            task_ids.push(id);
        }
        Ok(Response::new(proto::PushTaskInsResponse { task_ids }))
    }

    async fn pull_task_res(
        &self,
        request: Request<proto::PullTaskResRequest>,
    ) -> Result<Response<proto::PullTaskResResponse>, GrpcStatus> {
        let mut state = self.call("PullTaskRes");
        if state.stopped {
            return Err(GrpcStatus::permission_denied(
                "Run is finished. Stopped by user.",
            ));
        }
        let request = request.into_inner();
        assert_eq!(
            request.node,
            Some(proto::Node {
                node_id: 0,
                anonymous: true
            })
        );
        let task_res_list = request
            .task_ids
            .iter()
            .filter_map(|id| state.task_ins.remove(id))
            .map(|ins| reply_to(&ins))
            .collect();
        Ok(Response::new(proto::PullTaskResResponse { task_res_list }))
    }

    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::GetRunResponse>, GrpcStatus> {
        let _state = self.call("GetRun");
        let request = request.into_inner();
        assert_eq!(request.node, None);
        Ok(Response::new(proto::GetRunResponse {
            run: (request.run_id == RUN_ID).then(run),
        }))
    }

    async fn get_fab(
        &self,
        _: Request<proto::GetFabRequest>,
    ) -> Result<Response<proto::GetFabResponse>, GrpcStatus> {
        Err(GrpcStatus::unimplemented("not used"))
    }

    async fn pull_server_app_inputs(
        &self,
        _: Request<proto::PullServerAppInputsRequest>,
    ) -> Result<Response<proto::PullServerAppInputsResponse>, GrpcStatus> {
        let mut state = self.call("PullServerAppInputs");
        if state.not_pending > 0 || !state.pending {
            state.not_pending = state.not_pending.saturating_sub(1);
            return Ok(Response::new(proto::PullServerAppInputsResponse::default()));
        }
        state.pending = false;
        Ok(Response::new(proto::PullServerAppInputsResponse {
            context: Some(proto::Context {
                run_id: RUN_ID,
                state: Some(proto::RecordSet::default()),
                ..Default::default()
            }),
            run: Some(run()),
            fab: Some(proto::Fab {
                hash_str: "hash".into(),
                content: common::fab(
                    "mock.server:app",
                    "mock.client:app",
                    "num-server-rounds = 3\nfraction = 0.5",
                ),
            }),
        }))
    }

    async fn push_server_app_outputs(
        &self,
        request: Request<proto::PushServerAppOutputsRequest>,
    ) -> Result<Response<proto::PushServerAppOutputsResponse>, GrpcStatus> {
        let mut state = self.call("PushServerAppOutputs");
        let request = request.into_inner();
        assert_eq!(request.run_id, RUN_ID);
        state.outputs = request.context;
        Ok(Response::new(proto::PushServerAppOutputsResponse {}))
    }

    async fn update_run_status(
        &self,
        request: Request<proto::UpdateRunStatusRequest>,
    ) -> Result<Response<proto::UpdateRunStatusResponse>, GrpcStatus> {
        let mut state = self.call("UpdateRunStatus");
        let request = request.into_inner();
        assert_eq!(request.run_id, RUN_ID);
        state.statuses.push(request.run_status.expect("status"));
        Ok(Response::new(proto::UpdateRunStatusResponse {}))
    }

    async fn get_run_status(
        &self,
        _: Request<proto::GetRunStatusRequest>,
    ) -> Result<Response<proto::GetRunStatusResponse>, GrpcStatus> {
        Err(GrpcStatus::unimplemented("not used"))
    }

    async fn push_logs(
        &self,
        request: Request<proto::PushLogsRequest>,
    ) -> Result<Response<proto::PushLogsResponse>, GrpcStatus> {
        let mut state = self.state.lock().expect("lock");
        state.logs.extend(request.into_inner().logs);
        Ok(Response::new(proto::PushLogsResponse {}))
    }
}

/// FedAvg from `[0.0]` for `num-server-rounds`; leaves the model in `context.state`.
struct Averaging {
    fail: bool,
}

impl ServerApp for Averaging {
    fn run<'a>(
        &'a mut self,
        grid: &'a mut Grid,
        context: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), AppError>> {
        Box::pin(async move {
            if self.fail {
                return Err(AppError::new("no luck"));
            }
            let rounds = context.run_config["num-server-rounds"]
                .as_u64()
                .expect("rounds");
            let mut strategy = FedAvg {
                initial_parameters: Some(vec![Array::from_f64(&[1, 1], &[0.0])?]),
                ..FedAvg::default()
            };
            let outcome = strategy.run(grid, rounds).await?;
            assert_eq!(outcome.history.evaluate_loss(1), Some(3.25));
            assert_eq!(outcome.history.fit_metric("train_loss", 2), Some(3.25));
            assert_eq!(outcome.history.evaluate_metric("accuracy", 2), Some(0.8125));
            context.state.parameters_records.insert(
                "final".into(),
                outcome.parameters.into_iter().map(|a| ("0", a)).collect(),
            );
            tracing::info!("averaging done");
            Ok(())
        })
    }
}

fn options(address: std::net::SocketAddr) -> ServerAppOptions {
    ServerAppOptions {
        run_once: true,
        input_poll_interval: Duration::from_millis(20),
        reply_poll_interval: Duration::from_millis(20),
        logs: Some(LogTee::new()),
        ..ServerAppOptions::new(address.to_string())
    }
}

async fn start(mock: &MockSuperLink) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    common::serve(
        tonic::transport::Server::builder().add_service(ServerAppIoServer::new(mock.clone())),
    )
    .await
}

#[tokio::test]
async fn serverapp_follows_the_flwr_serverapp_sequence() {
    let mock = MockSuperLink::default();
    {
        let mut state = mock.state.lock().expect("lock");
        state.pending = true;
        state.not_pending = 2;
    }
    let (address, _stop) = start(&mock).await;
    let mut app = Averaging { fail: false };
    tokio::time::timeout(
        Duration::from_secs(30),
        run_serverapp(&mut app, &options(address)),
    )
    .await
    .expect("finishes")
    .expect("runs");

    let state = mock.state.lock().expect("lock");
    assert_eq!(
        state.calls[..6],
        [
            "PullServerAppInputs",
            "PullServerAppInputs",
            "PullServerAppInputs",
            "GetRun",
            "UpdateRunStatus",
            "GetNodes"
        ]
    );
    assert_eq!(
        state.calls[state.calls.len() - 2..],
        ["PushServerAppOutputs", "UpdateRunStatus"]
    );
    assert_eq!(
        state.statuses,
        [
            proto::RunStatus {
                status: "running".into(),
                ..Default::default()
            },
            proto::RunStatus {
                status: "finished".into(),
                sub_status: "completed".into(),
                details: String::new(),
            }
        ]
    );

    // 2 rounds × (train + evaluate) × 2 nodes, shaped like the reference driver's TaskIns.
    assert_eq!(state.pushed.len(), 8);
    let now = flwr::now();
    for ins in &state.pushed {
        assert_eq!((ins.task_id.as_str(), ins.run_id), ("", RUN_ID));
        let task = ins.task.as_ref().expect("task");
        assert_eq!(
            task.producer,
            Some(proto::Node {
                node_id: 0,
                anonymous: true
            })
        );
        let consumer = task.consumer.as_ref().expect("consumer");
        assert!(NODES.contains(&consumer.node_id) && !consumer.anonymous);
        assert_eq!(task.ttl, 3600.0);
        assert!(task.ancestry.is_empty());
        assert!((now - task.created_at).abs() < 60.0);
        assert!(task.error.is_none());
        let message = Message::try_from_task_res(proto::TaskRes {
            task: Some(task.clone()),
            ..Default::default()
        })
        .expect("message");
        let Payload::Content(content) = &message.payload else {
            panic!("content");
        };
        match task.task_type.as_str() {
            "train" => assert!(FitIns::from_record_set(content).is_ok()),
            "evaluate" => assert!(EvaluateIns::from_record_set(content).is_ok()),
            other => panic!("unexpected task type {other}"),
        }
    }
    let groups: Vec<&str> = state.pushed.iter().map(|i| i.group_id.as_str()).collect();
    assert_eq!(groups, ["1", "1", "1", "1", "2", "2", "2", "2"]);

    // The run config: FAB defaults with the run's override; the app's state came back.
    let context = Context::try_from(state.outputs.clone().expect("outputs")).expect("context");
    assert_eq!(context.run_config["num-server-rounds"], Scalar::Sint64(2));
    assert_eq!(context.run_config["fraction"], Scalar::Double(0.5));
    let model = &context.state.parameters_records["final"];
    assert_eq!(
        model.get("0").expect("model").to_f64().expect("f64"),
        [3.25]
    );
}

#[tokio::test]
async fn failing_app_marks_the_run_failed() {
    let mock = MockSuperLink::default();
    mock.state.lock().expect("lock").pending = true;
    let (address, _stop) = start(&mock).await;
    let mut app = Averaging { fail: true };
    run_serverapp(&mut app, &options(address))
        .await
        .expect("runs");
    let state = mock.state.lock().expect("lock");
    assert_eq!(
        state.statuses.last(),
        Some(&proto::RunStatus {
            status: "finished".into(),
            sub_status: "failed".into(),
            details: "no luck".into(),
        })
    );
    assert!(state.outputs.is_none());
}

#[tokio::test]
async fn stopped_run_gets_no_final_status() {
    let mock = MockSuperLink::default();
    {
        let mut state = mock.state.lock().expect("lock");
        state.pending = true;
        state.stopped = true;
    }
    let (address, _stop) = start(&mock).await;
    let mut app = Averaging { fail: false };
    run_serverapp(&mut app, &options(address))
        .await
        .expect("runs");
    let state = mock.state.lock().expect("lock");
    assert_eq!(state.statuses.len(), 1, "{:?}", state.statuses);
    assert_eq!(state.statuses[0].status, "running");
}
