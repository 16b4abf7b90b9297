//! gRPC health checking (`grpc.health.v1.Health`) for probes and load balancers.
//!
//! One [`Health`] per process: every API server adds [`Health::service`] to its router, so a
//! probe can ask any port, and an optional plaintext port serves it alone for deployments
//! whose APIs sit behind TLS. The overall status (service `""`) and each named service are
//! `NOT_SERVING` until [`Health::set_serving`] (once the servers are up) and again from
//! [`Health::set_not_serving`] (as soon as shutdown begins, before in-flight calls drain), so a
//! load balancer stops sending new work while the old finishes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::BoxBody;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower_service::Service;

/// The health status of a process's gRPC services.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    server: HealthGrpc,
    services: Vec<&'static str>,
}

impl Health {
    /// Health for the overall server and the gRPC services named `services` (their full
    /// names, e.g. `flwr.proto.Fleet`), all `NOT_SERVING` for now.
    pub async fn new(services: &[&'static str]) -> Self {
        let (reporter, server) = tonic_health::server::health_reporter();
        let mut health = Self {
            reporter,
            server: HealthGrpc::new(server),
            services: services.to_vec(),
        };
        health.set(ServingStatus::NotServing).await;
        health
    }

    /// The `grpc.health.v1.Health` service, to add to a tonic router.
    pub fn service(&self) -> HealthGrpc {
        self.server.clone()
    }

    /// Reports every service, and the server as a whole, as `SERVING`.
    pub async fn set_serving(&self) {
        self.clone().set(ServingStatus::Serving).await;
    }

    /// Reports every service, and the server as a whole, as `NOT_SERVING`.
    pub async fn set_not_serving(&self) {
        self.clone().set(ServingStatus::NotServing).await;
    }

    async fn set(&mut self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for service in &self.services {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Call =
    dyn Fn(Request<BoxBody>) -> BoxFuture<Result<Response<BoxBody>, Infallible>> + Send + Sync;

/// The `grpc.health.v1.Health` server. `tonic_health` returns its server as an opaque type,
/// which a struct cannot name; this wrapper holds it behind a function instead.
#[derive(Clone)]
pub struct HealthGrpc(Arc<Call>);

impl std::fmt::Debug for HealthGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthGrpc")
    }
}

impl HealthGrpc {
    fn new<S>(server: S) -> Self
    where
        S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // The generated server is always ready and cheap to clone (its handler is shared).
        Self(Arc::new(move |request| {
            let mut server = server.clone();
            Box::pin(server.call(request))
        }))
    }
}

impl NamedService for HealthGrpc {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl Service<Request<BoxBody>> for HealthGrpc {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        (self.0)(request)
    }
}
