//! Responses that share the payloads they carry instead of copying them.
//!
//! Tonic encodes every response into one buffer of its own: a TaskIns or TaskRes carrying a
//! model is copied once per response, so four nodes pulling a 128 MiB model at once cost
//! 512 MiB on top of the stored copy. The pulls that carry models (Fleet `PullTaskIns`, answered
//! by the auth layer, and ServerAppIo `PullTaskRes`, answered by [`SharedPullTaskRes`]) are sent
//! instead as gRPC frames whose large `bytes` fields are the stored buffers themselves
//! ([`flwr_proto::shared`]). Everything else about the call is tonic's: the same handler, status
//! codes, metadata and trailers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use flwr_proto::PullTaskResRequest;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::Full;
use prost::Message as _;
use tonic::body::BoxBody;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;
use tower_service::Service;

use crate::fleet_auth::read_message;
use crate::service::serverappio::ServerAppIoService;
use crate::service::{respond_held, HoldRequest};

/// The ServerAppIo method answered here.
const PULL_TASK_RES: &str = "/flwr.proto.ServerAppIo/PullTaskRes";

/// The ServerAppIo server `S`, with `PullTaskRes` answered by the same handler in chunks that
/// share the replies' payloads.
#[derive(Debug, Clone)]
pub struct SharedPullTaskRes<S> {
    inner: S,
    service: Arc<ServerAppIoService>,
    max_message_size: usize,
}

impl<S> SharedPullTaskRes<S> {
    /// Wraps `inner` (a `ServerAppIoServer` over `service`); messages over `max_message_size`
    /// bytes are refused, in either direction, as by `inner`.
    pub fn new(inner: S, service: Arc<ServerAppIoService>, max_message_size: usize) -> Self {
        Self {
            inner,
            service,
            max_message_size,
        }
    }
}

impl<S: NamedService> NamedService for SharedPullTaskRes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<BoxBody>> for SharedPullTaskRes<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path() != PULL_TASK_RES {
            return Box::pin(inner.call(request));
        }
        let service = Arc::clone(&self.service);
        let limit = self.max_message_size;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let framed = match read_message(body, limit).await {
                Ok(framed) => framed,
                Err(error) => return Ok(error.into_status(limit).into_http()),
            };
            let Ok(pull) = PullTaskResRequest::decode(framed.slice(5..)) else {
                // Tonic answers what does not decode, as it always has.
                let request = Request::from_parts(parts, tonic::body::boxed(Full::new(framed)));
                return inner.call(request).await;
            };
            let hold = HoldRequest::from_metadata(&MetadataMap::from_headers(parts.headers));
            let answer = respond_held(service.pull_task_res_held(pull, hold).await);
            Ok(shared_response(answer, limit))
        })
    }
}

/// A unary gRPC response whose message is sent in chunks that share its large payloads
/// ([`flwr_proto::shared`]) rather than encoded into one buffer, as tonic would.
pub(crate) fn shared_response<M: prost::Message>(
    answer: Result<tonic::Response<M>, Status>,
    limit: usize,
) -> Response<BoxBody> {
    let response = match answer {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, message, _) = response.into_parts();
    let length = message.encoded_len();
    let prefix = match u32::try_from(length) {
        Ok(prefix) if length <= limit => prefix,
        // Tonic's answer to a response over its encoding limit.
        _ => {
            return Status::out_of_range(format!(
                "Error, encoded message length too large: found {length} bytes, the limit is: \
                 {limit} bytes"
            ))
            .into_http()
        }
    };
    let mut header = [0_u8; 5];
    header[1..].copy_from_slice(&prefix.to_be_bytes());
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    frames.push_back(Frame::data(Bytes::copy_from_slice(&header)));
    frames.extend(
        flwr_proto::shared::encode_shared(&message)
            .into_iter()
            .map(Frame::data),
    );
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    frames.push_back(Frame::trailers(trailers));
    let mut http = Response::new(tonic::body::boxed(Frames(frames)));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    http
}

/// A response body of frames ready to send.
#[derive(Debug)]
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use flwr_proto::{Array, ParametersRecord, PullTaskInsResponse, RecordSet, Task, TaskIns};
    use http_body_util::BodyExt as _;

    use super::*;

    fn with_model(data: Bytes) -> PullTaskInsResponse {
        PullTaskInsResponse {
            reconnect: None,
            task_ins_list: vec![TaskIns {
                task_id: "t".to_owned(),
                task: Some(Task {
                    recordset: Some(RecordSet {
                        parameters: std::collections::HashMap::from([(
                            "model".to_owned(),
                            ParametersRecord {
                                data_keys: vec!["w".to_owned()],
                                data_values: vec![Array {
                                    data,
                                    ..Array::default()
                                }],
                            },
                        )]),
                        ..RecordSet::default()
                    }),
                    ..Task::default()
                }),
                ..TaskIns::default()
            }],
        }
    }

    #[tokio::test]
    async fn a_shared_response_is_the_grpc_frame_tonic_would_send() {
        let message = with_model(Bytes::from(vec![3_u8; 1 << 20]));
        let mut metadata = tonic::Response::new(message.clone());
        metadata.metadata_mut().insert(
            "flwr-held-ms",
            tonic::metadata::MetadataValue::from_static("5"),
        );
        let response = shared_response(Ok(metadata), 4 << 20);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["flwr-held-ms"], "5");
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        let body = collected.to_bytes();
        let encoded = message.encode_to_vec();
        assert_eq!(body[0], 0);
        assert_eq!(
            &body[1..5],
            &u32::try_from(encoded.len()).unwrap().to_be_bytes()
        );
        assert_eq!(&body[5..], encoded.as_slice());
    }

    #[tokio::test]
    async fn over_the_limit_and_errors_are_answered_as_tonic_does() {
        let message = with_model(Bytes::from(vec![3_u8; 1 << 20]));
        let response = shared_response(Ok(tonic::Response::new(message)), 1 << 20);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert!(
            status.message().contains("the limit is: 1048576 bytes"),
            "{status:?}"
        );
        let denied: Result<tonic::Response<PullTaskInsResponse>, Status> =
            Err(Status::permission_denied("no"));
        let response = shared_response(denied, 1 << 20);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
