//! The ClientApp runner against an in-process ClientAppIo server that behaves like the
//! reference SuperNode's servicer (BEHAVIOR.md §3.1): call order, token handling, reply
//! metadata, context updates, error replies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flwr::client::{ClientApp, ClientAppOptions, ClientAppRegistry};
use flwr::{
    AppError, ConfigsRecordValue, Context, Message, MessageError, Metadata, MetricsRecordValue,
    Payload, RecordSet,
};
use flwr_proto as proto;
use flwr_proto::client_app_io_server::{ClientAppIo, ClientAppIoServer};
use tonic::{Request, Response, Status};

/// Inputs the mock SuperNode hands out, one message at a time.
#[derive(Clone)]
struct Inputs {
    message: proto::Message,
    context: proto::Context,
    fab: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// `GetToken` calls to refuse before handing out the first token ("nothing yet").
    not_ready: usize,
    /// Pulls to refuse as a warm SuperNode does when a held pull ends without a message: the
    /// token is forgotten and the message waits for the next one.
    refused_pulls: usize,
    queue: VecDeque<Inputs>,
    current: Option<(u64, Inputs, bool)>,
    next_token: u64,
    calls: Vec<String>,
    outputs: Vec<(proto::Message, proto::Context)>,
}

#[derive(Clone, Default)]
struct MockSuperNode {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl ClientAppIo for MockSuperNode {
    async fn get_token(
        &self,
        _: Request<proto::GetTokenRequest>,
    ) -> Result<Response<proto::GetTokenResponse>, Status> {
        let mut state = self.state.lock().expect("lock");
        state.calls.push("GetToken".into());
        if state.not_ready > 0 {
            state.not_ready -= 1;
            return Err(Status::failed_precondition("No inputs available."));
        }
        if state.current.is_some() {
            return Err(Status::failed_precondition(
                "Token already returned. A token can be returned only once.",
            ));
        }
        let Some(inputs) = state.queue.pop_front() else {
            return Err(Status::failed_precondition("No inputs available."));
        };
        state.next_token += 7;
        let token = state.next_token;
        state.current = Some((token, inputs, true));
        Ok(Response::new(proto::GetTokenResponse { token }))
    }

    async fn pull_client_app_inputs(
        &self,
        request: Request<proto::PullClientAppInputsRequest>,
    ) -> Result<Response<proto::PullClientAppInputsResponse>, Status> {
        let mut state = self.state.lock().expect("lock");
        state.calls.push("PullClientAppInputs".into());
        let token = request.into_inner().token;
        if state.refused_pulls > 0 {
            state.refused_pulls -= 1;
            if let Some((_, inputs, _)) = state.current.take() {
                state.queue.push_front(inputs);
            }
            return Err(Status::failed_precondition("No inputs available."));
        }
        let Some((expected, inputs, _)) = state.current.clone() else {
            return Err(Status::failed_precondition("No inputs available."));
        };
        if token != expected {
            return Err(Status::invalid_argument(
                "Mismatch between ClientApp and SuperNode token",
            ));
        }
        Ok(Response::new(proto::PullClientAppInputsResponse {
            message: Some(inputs.message),
            context: Some(inputs.context),
            run: Some(proto::Run {
                run_id: 9,
                fab_id: "test/mock".into(),
                fab_version: "1.0.0".into(),
                ..Default::default()
            }),
            fab: Some(proto::Fab {
                hash_str: "hash".into(),
                content: inputs.fab,
            }),
        }))
    }

    async fn push_client_app_outputs(
        &self,
        request: Request<proto::PushClientAppOutputsRequest>,
    ) -> Result<Response<proto::PushClientAppOutputsResponse>, Status> {
        let mut state = self.state.lock().expect("lock");
        state.calls.push("PushClientAppOutputs".into());
        let request = request.into_inner();
        let Some((expected, _, _)) = state.current.take() else {
            return Err(Status::failed_precondition("No inputs available."));
        };
        if request.token != expected {
            return Err(Status::invalid_argument(
                "Mismatch between ClientApp and SuperNode token",
            ));
        }
        state.outputs.push((
            request.message.expect("message"),
            request.context.expect("context"),
        ));
        Ok(Response::new(proto::PushClientAppOutputsResponse {
            status: Some(proto::ClientAppOutputStatus {
                code: proto::ClientAppOutputCode::Success as i32,
                message: "Success".into(),
            }),
        }))
    }
}

/// Counts messages in `context.state` and fails on message type `explode`.
struct Counter;

impl ClientApp for Counter {
    fn handle(&mut self, message: &Message, context: &mut Context) -> Result<RecordSet, AppError> {
        let record = context
            .state
            .metrics_records
            .entry("seen".into())
            .or_default();
        let seen = match record.get("count") {
            Some(MetricsRecordValue::Sint64(n)) => *n,
            _ => 0,
        };
        record.insert("count".into(), MetricsRecordValue::Sint64(seen + 1));
        if message.metadata.message_type == "explode" {
            return Err("boom".into());
        }
        let mut reply = RecordSet::new();
        reply.configs_records.insert(
            "echo".into(),
            [(
                "type".to_owned(),
                ConfigsRecordValue::String(message.metadata.message_type.clone()),
            )]
            .into(),
        );
        Ok(reply)
    }
}

fn inputs(id: &str, message_type: &str, component: &str, created_at: f64) -> Inputs {
    let message = Message {
        metadata: Metadata {
            run_id: 9,
            message_id: id.into(),
            src_node_id: 0,
            dst_node_id: 77,
            reply_to_message: String::new(),
            group_id: "1".into(),
            ttl: 3600.0,
            message_type: message_type.into(),
            created_at,
        },
        payload: Payload::Content(RecordSet::new()),
    };
    let context = Context {
        run_id: 9,
        node_id: 77,
        ..Context::default()
    };
    Inputs {
        message: message.into(),
        context: context.into(),
        fab: common::fab("mock.server:app", component, "rounds = 1"),
    }
}

#[tokio::test]
async fn long_running_app_polls_for_tokens_and_replies_like_the_reference() {
    let mock = MockSuperNode::default();
    let created_at = flwr::now() - 10.0;
    {
        let mut state = mock.state.lock().expect("lock");
        state.not_ready = 2;
        state.queue.extend([
            inputs("m-1", "train", "mock.client:app", created_at),
            inputs("m-2", "explode", "mock.client:app", created_at),
            inputs("m-3", "train", "other.client:app", created_at),
        ]);
    }
    let (address, _stop) = common::serve(
        tonic::transport::Server::builder().add_service(ClientAppIoServer::new(mock.clone())),
    )
    .await;

    let mut apps = ClientAppRegistry::new().with("mock.client:app", Counter);
    let options = ClientAppOptions {
        token_poll_interval: Duration::from_millis(20),
        max_messages: Some(3),
        ..ClientAppOptions::new(address.to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), options.run(&mut apps))
        .await
        .expect("finishes")
        .expect("runs");

    let state = mock.state.lock().expect("lock");
    assert_eq!(
        state.calls[..5],
        [
            "GetToken",
            "GetToken",
            "GetToken",
            "PullClientAppInputs",
            "PushClientAppOutputs"
        ]
    );
    assert_eq!(state.outputs.len(), 3);

    // A successful reply: create_reply's metadata and the updated context.
    let (reply, context) = &state.outputs[0];
    let reply = Message::try_from(reply.clone()).expect("reply");
    let m = &reply.metadata;
    assert_eq!((m.run_id, m.message_id.as_str()), (9, ""));
    assert_eq!((m.src_node_id, m.dst_node_id), (77, 0));
    assert_eq!(m.reply_to_message, "m-1");
    assert_eq!(
        (m.group_id.as_str(), m.message_type.as_str()),
        ("1", "train")
    );
    assert!(m.created_at > created_at);
    assert!((m.ttl - (3600.0 - (m.created_at - created_at))).abs() < 1e-6);
    assert_eq!(
        reply.content().expect("content").configs_records["echo"]["type"],
        ConfigsRecordValue::String("train".into())
    );
    let context = Context::try_from(context.clone()).expect("context");
    assert_eq!(
        context.state.metrics_records["seen"]["count"],
        MetricsRecordValue::Sint64(1)
    );

    // An app error: code 2 with the Python-style reason; the context is left unchanged.
    let (reply, context) = &state.outputs[1];
    let reply = Message::try_from(reply.clone()).expect("reply");
    assert_eq!(
        reply.error(),
        Some(&MessageError {
            code: MessageError::CLIENT_APP_RAISED_EXCEPTION,
            reason: "<class 'AppError'>:<'boom'>".into(),
        })
    );
    assert_eq!(reply.metadata.reply_to_message, "m-2");
    let context = Context::try_from(context.clone()).expect("context");
    assert!(context.state.is_empty());

    // No app for the FAB's component: the reference's load error.
    let reply = Message::try_from(state.outputs[2].0.clone()).expect("reply");
    assert_eq!(
        reply.error(),
        Some(&MessageError {
            code: MessageError::LOAD_CLIENT_APP_EXCEPTION,
            reason: MessageError::LOAD_CLIENT_APP_REASON.into(),
        })
    );
}

#[tokio::test]
async fn a_polling_app_asks_for_a_new_token_when_its_pull_finds_no_message() {
    let mock = MockSuperNode::default();
    {
        let mut state = mock.state.lock().expect("lock");
        state.refused_pulls = 1;
        state
            .queue
            .push_back(inputs("m-1", "train", "mock.client:app", flwr::now()));
    }
    let (address, _stop) = common::serve(
        tonic::transport::Server::builder().add_service(ClientAppIoServer::new(mock.clone())),
    )
    .await;
    let mut apps = ClientAppRegistry::new().with("mock.client:app", Counter);
    let options = ClientAppOptions {
        token_poll_interval: Duration::from_millis(20),
        max_messages: Some(1),
        ..ClientAppOptions::new(address.to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), options.run(&mut apps))
        .await
        .expect("finishes")
        .expect("a refused pull does not end a polling app");
    let state = mock.state.lock().expect("lock");
    assert_eq!(
        state.calls,
        [
            "GetToken",
            "PullClientAppInputs",
            "GetToken",
            "PullClientAppInputs",
            "PushClientAppOutputs"
        ]
    );
    assert_eq!(state.outputs.len(), 1);
}

#[tokio::test]
async fn given_token_handles_one_message_without_get_token() {
    let mock = MockSuperNode::default();
    {
        let mut state = mock.state.lock().expect("lock");
        let inputs = inputs("m-1", "train", "any:app", flwr::now());
        state.current = Some((12345, inputs, true));
    }
    let (address, _stop) = common::serve(
        tonic::transport::Server::builder().add_service(ClientAppIoServer::new(mock.clone())),
    )
    .await;
    let mut app = Counter;
    tokio::time::timeout(
        Duration::from_secs(30),
        flwr::client::run_clientapp(&mut app, &address.to_string(), Some(12345)),
    )
    .await
    .expect("finishes")
    .expect("runs");
    let state = mock.state.lock().expect("lock");
    assert_eq!(state.calls, ["PullClientAppInputs", "PushClientAppOutputs"]);
}

#[tokio::test]
async fn wrong_token_ends_the_runner_with_the_status() {
    let mock = MockSuperNode::default();
    {
        let mut state = mock.state.lock().expect("lock");
        let inputs = inputs("m-1", "train", "any:app", flwr::now());
        state.current = Some((1, inputs, true));
    }
    let (address, _stop) = common::serve(
        tonic::transport::Server::builder().add_service(ClientAppIoServer::new(mock.clone())),
    )
    .await;
    let mut app = Counter;
    let error = flwr::client::run_clientapp(&mut app, &address.to_string(), Some(2))
        .await
        .expect_err("token mismatch");
    assert!(
        error
            .to_string()
            .contains("Mismatch between ClientApp and SuperNode token"),
        "{error}"
    );
}
