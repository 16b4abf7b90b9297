//! Prometheus metrics: one registry per process, a service wrapper that counts gRPC requests,
//! and a small HTTP/1 server for `GET /metrics`.
//!
//! * [`Metrics`]: the process's [`Registry`] plus the hooks that refresh scrape-time gauges
//!   (node counts, runs, open connections) just before each scrape, so that nothing on the
//!   request path has to keep them up to date.
//! * [`GrpcMetrics`]: requests by API, method and code (`flwr_grpc_requests_total`), their
//!   latency (`flwr_grpc_request_duration_seconds`) and the body bytes per API, recorded by
//!   [`GrpcMetrics::wrap`] around any tonic service. The code is the `grpc-status` of the
//!   response headers (trailers-only answers, which is how tonic sends every error) or of the
//!   trailers at the end of the body; a body dropped before its trailers counts as
//!   `CANCELLED`. Methods outside the list given to `wrap` count as `other`, so a client
//!   inventing paths cannot create series.
//! * [`serve`]: the exposition server, bounded like the gRPC ports: a cap on connections, a
//!   deadline for request headers and for whole connections; it ends when its token is
//!   cancelled.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tower_service::Service;

/// The content type of the exposition (`prometheus-client` writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrape connections served at once; more are closed at once (Prometheus uses one).
pub const MAX_CONNECTIONS: usize = 16;
/// Time a scraper has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one scrape connection, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A scrape-time refresh: reads the current value of some gauges (e.g. from the state store).
type Refresh = Box<dyn Fn() + Send + Sync>;

/// The metrics of one process: its registry and the gauges to refresh before each scrape.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    refresh: Vec<Refresh>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("refresh_hooks", &self.refresh.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The registry, to register metrics in while the process starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Runs `refresh` before every scrape. It may block (a SQLite count): scrapes run it on
    /// the blocking pool, never on the async workers.
    pub fn on_scrape(&mut self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refresh.push(Box::new(refresh));
    }

    /// Refreshes the scrape-time gauges and renders the registry as OpenMetrics text. Blocks
    /// as long as the refresh hooks do.
    ///
    /// # Errors
    ///
    /// Only if a metric cannot be written (never for the metric types used here).
    pub fn render(&self) -> Result<String, fmt::Error> {
        for refresh in &self.refresh {
            refresh();
        }
        let mut text = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    api: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to ~52 s (a factor of 2 each): Pings take well under a
/// millisecond, held pulls seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The method label of requests outside the wrapped service's known methods.
pub const OTHER_METHOD: &str = "other";

/// Request counts, latencies and body bytes of the gRPC APIs of a process.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<MethodLabels>,
    received: Family<ApiLabels, Counter>,
    sent: Family<ApiLabels, Counter>,
}

impl GrpcMetrics {
    /// Registers the gRPC metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            received: Family::default(),
            sent: Family::default(),
        };
        registry.register(
            "flwr_grpc_requests",
            "gRPC requests answered, by API, method and gRPC status code",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "flwr_grpc_request_duration",
            "Time from a request's headers to the end of its response, by API and method",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "flwr_grpc_received",
            "Request body bytes received (gRPC frames, before decompression), by API",
            Unit::Bytes,
            metrics.received.clone(),
        );
        registry.register_with_unit(
            "flwr_grpc_sent",
            "Response body bytes sent (gRPC frames), by API",
            Unit::Bytes,
            metrics.sent.clone(),
        );
        metrics
    }

    /// Wraps `inner`, the server of API `api` whose methods are `methods` (the last path
    /// segments), so that its requests are counted.
    pub fn wrap<S>(
        &self,
        api: &'static str,
        methods: &'static [&'static str],
        inner: S,
    ) -> Grpc<S> {
        let handles = methods
            .iter()
            .copied()
            .chain(std::iter::once(OTHER_METHOD))
            .map(|method| MethodHandles {
                method,
                duration: self
                    .duration
                    .get_or_create(&MethodLabels { api, method })
                    .clone(),
                codes: std::array::from_fn(|_| OnceLock::new()),
            })
            .collect();
        Grpc {
            inner,
            shared: Arc::new(Shared {
                api,
                methods: handles,
                requests: self.requests.clone(),
                received: self.received.get_or_create(&ApiLabels { api }).clone(),
                sent: self.sent.get_or_create(&ApiLabels { api }).clone(),
            }),
        }
    }
}

/// gRPC status codes are 0 to 16.
const CODES: usize = 17;
/// Where codes outside 0–16 are counted.
const UNKNOWN_CODE: i32 = 2;

/// A method's metric handles, looked up once so that a request touches no map: the duration
/// histogram, and the request counter of each code, created in the family on first use (so
/// only codes that happened are exposed).
#[derive(Debug)]
struct MethodHandles {
    method: &'static str,
    duration: Histogram,
    codes: [OnceLock<Counter>; CODES],
}

#[derive(Debug)]
struct Shared {
    api: &'static str,
    /// The known methods, then [`OTHER_METHOD`] last.
    methods: Vec<MethodHandles>,
    requests: Family<RequestLabels, Counter>,
    received: Counter,
    sent: Counter,
}

impl Shared {
    fn method(&self, path: &str) -> usize {
        let name = path.rsplit('/').next().unwrap_or_default();
        let other = self.methods.len() - 1;
        self.methods[..other]
            .iter()
            .position(|handles| handles.method == name)
            .unwrap_or(other)
    }

    fn complete(&self, method: usize, started: Instant, code: i32) {
        let handles = &self.methods[method];
        handles.duration.observe(started.elapsed().as_secs_f64());
        let code = usize::try_from(code)
            .ok()
            .filter(|code| *code < CODES)
            .unwrap_or(UNKNOWN_CODE as usize);
        handles.codes[code]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        api: self.api,
                        method: handles.method,
                        code: code_name(code as i32),
                    })
                    .clone()
            })
            .inc();
    }
}

/// A tonic service whose requests are counted (see [`GrpcMetrics::wrap`]).
#[derive(Debug, Clone)]
pub struct Grpc<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: NamedService> NamedService for Grpc<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<BoxBody>> for Grpc<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        let started = Instant::now();
        let shared = Arc::clone(&self.shared);
        let method = shared.method(request.uri().path());
        let request = request.map(|body| {
            tonic::body::boxed(Counted {
                inner: body,
                bytes: shared.received.clone(),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            // Trailers-only: the status is in the headers and the body carries nothing.
            let pending = match status_code(&parts.headers) {
                Some(code) => {
                    shared.complete(method, started, code);
                    None
                }
                None => Some(Pending { method, started }),
            };
            let body = Observed {
                inner: body,
                shared,
                pending,
            };
            Ok(Response::from_parts(parts, tonic::body::boxed(body)))
        })
    }
}

/// A request body that adds its data bytes to a counter.
struct Counted {
    inner: BoxBody,
    bytes: Counter,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request whose status has not been seen yet.
struct Pending {
    method: usize,
    started: Instant,
}

/// A response body that counts its bytes and records the request once its status is known.
struct Observed {
    inner: BoxBody,
    shared: Arc<Shared>,
    pending: Option<Pending>,
}

impl Observed {
    fn complete(&mut self, code: i32) {
        if let Some(pending) = self.pending.take() {
            self.shared.complete(pending.method, pending.started, code);
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.shared.sent.inc_by(data.len() as u64);
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.complete(status_code(trailers).unwrap_or(UNKNOWN_CODE));
                }
            }
            Poll::Ready(Some(Err(status))) => this.complete(status.code() as i32),
            // A gRPC response always ends with a status; one without is not a success.
            Poll::Ready(None) => this.complete(UNKNOWN_CODE),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // The client went away (or the server is stopping) before the status was sent.
        self.complete(tonic::Code::Cancelled as i32);
    }
}

/// The code of a `grpc-status` header, if there is one.
fn status_code(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.parse::<i32>().ok());
    Some(code.unwrap_or(UNKNOWN_CODE))
}

/// The canonical name of a gRPC status code (grpc/doc/statuscodes.md).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Serves `GET /metrics` from `metrics` on `listener` until `stop` is cancelled; open scrape
/// connections are closed then. Logs the address first; accept errors are logged and retried
/// after a pause.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!("Serving Prometheus metrics on http://{address}/metrics");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropping the set (when this function returns) aborts the connections still open.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "metrics: accept failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!("metrics: too many scrape connections; closing a new one");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |request| answer(request, Arc::clone(&metrics)));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

async fn answer<B>(
    request: Request<B>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        if let Ok(value) = http::HeaderValue::from_str(content_type) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET /metrics\n"),
        );
    }
    // The refresh hooks may block on the state store.
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, Bytes::from(text)),
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            Bytes::from_static(b"metrics could not be rendered\n"),
        ),
    }
}

/// Binds the metrics port. Separate from [`serve`] so that a taken port is a start-up error.
///
/// # Errors
///
/// The OS refused the address.
pub async fn bind(address: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    #[derive(Clone)]
    struct Echo(Option<tonic::Code>);

    impl NamedService for Echo {
        const NAME: &'static str = "test.Echo";
    }

    impl Service<Request<BoxBody>> for Echo {
        type Response = Response<BoxBody>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Response<BoxBody>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
            let failure = self.0;
            Box::pin(async move {
                let body = request.into_body().collect().await.map(|b| b.to_bytes());
                let received = body.unwrap_or_default();
                if let Some(code) = failure {
                    return Ok(tonic::Status::new(code, "no").into_http());
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = vec![
                    Ok::<_, tonic::Status>(Frame::data(received)),
                    Ok(Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures_stream(frames));
                Ok(Response::new(tonic::body::boxed(body)))
            })
        }
    }

    fn futures_stream(
        frames: Vec<Result<Frame<Bytes>, tonic::Status>>,
    ) -> tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, tonic::Status>>> {
        tokio_stream::iter(frames)
    }

    fn request(path: &str, body: &'static [u8]) -> Request<BoxBody> {
        let mut request = Request::new(tonic::body::boxed(Full::new(Bytes::from_static(body))));
        *request.uri_mut() = path.parse().expect("uri");
        request
    }

    fn render(metrics: &Metrics) -> String {
        metrics.render().expect("render")
    }

    #[tokio::test]
    async fn requests_are_counted_by_method_and_code_from_headers_or_trailers() {
        let mut metrics = Metrics::new();
        let grpc = GrpcMetrics::register(metrics.registry_mut());
        let mut ok = grpc.wrap("Test", &["Ping"], Echo(None));
        let mut denied = grpc.wrap("Test", &["Ping"], Echo(Some(tonic::Code::Unauthenticated)));

        let response = ok
            .call(request("/test.Echo/Ping", b"hello"))
            .await
            .expect("call");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes().as_ref(), b"hello");
        let _ = denied
            .call(request("/test.Echo/Ping", b""))
            .await
            .expect("call");
        // Unknown methods share one label; a body dropped unread counts as cancelled.
        let response = ok
            .call(request("/test.Echo/Invented", b"x"))
            .await
            .expect("call");
        drop(response);

        let text = render(&metrics);
        for line in [
            r#"flwr_grpc_requests_total{api="Test",method="Ping",code="OK"} 1"#,
            r#"flwr_grpc_requests_total{api="Test",method="Ping",code="UNAUTHENTICATED"} 1"#,
            r#"flwr_grpc_requests_total{api="Test",method="other",code="CANCELLED"} 1"#,
            r#"flwr_grpc_request_duration_seconds_count{api="Test",method="Ping"} 2"#,
            r#"flwr_grpc_received_bytes_total{api="Test"} 6"#,
            r#"flwr_grpc_sent_bytes_total{api="Test"} 5"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("Invented"));
    }

    #[tokio::test]
    async fn the_server_answers_metrics_and_refuses_other_paths() {
        let mut metrics = Metrics::new();
        let gauge = Gauge::<i64>::default();
        metrics
            .registry_mut()
            .register("flwr_test_value", "a test gauge", gauge.clone());
        metrics.on_scrape(move || {
            gauge.set(42);
        });
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(metrics), stop.clone()));

        let (status, body) = http_get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("flwr_test_value 42"), "{body}");
        let (status, _) = http_get(address, "/other").await;
        assert_eq!(status, 404);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stopped")
            .expect("no panic");
    }

    /// A bare HTTP/1.0 GET: the status code and the body.
    async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let response = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("answered in time");
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}
