//! SuperNode authentication on the Fleet API (spec AUTH.md §7), as a service wrapping the
//! Fleet server.
//!
//! The token is an HMAC over the *canonical re-encoding of the request body*, so it cannot be
//! checked in a tonic interceptor (which sees metadata only) and should not be checked on the
//! decoded struct (prost forgets unknown fields and `-0.0`). [`FleetAuth`] therefore buffers
//! each unary request, verifies it from its wire bytes, and hands the unchanged bytes on to the
//! Fleet handlers, which learn who called through an [`AuthenticatedNode`] request extension.
//!
//! Differences from the reference, all on the refusing side:
//!
//! - the shared secret is derived once per allowed key and cached, never per request (the
//!   reference runs an ECDH for every call, chosen by whoever knows a listed public key);
//! - every refusal, including undecodable headers and curve mismatches, is
//!   `UNAUTHENTICATED "Access denied"`; the reason and the key's fingerprint go to the log only;
//! - `PushTaskRes` binds every TaskRes producer to the caller, not only the first;
//! - the allow-list can be replaced at run time ([`NodeAuthenticator::replace_allow_list`]),
//!   which also drops the cached secrets of removed keys.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes};
use flwr_auth::{AllowList, PrivateKey, PublicKey, SharedSecret};
use flwr_proto::{
    canonical, DeleteNodeRequest, GetFabRequest, GetRunRequest, PingRequest, PullTaskInsRequest,
    PushTaskResRequest,
};
use flwr_state::LinkState;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use prost::Message as _;
use tonic::{body::BoxBody, server::NamedService, Status};
use tower_service::Service;

use crate::service::fleet::AuthenticatedNode;

/// The SuperLink's side of node authentication: its key pair, the allow-list and the cache of
/// shared secrets.
pub struct NodeAuthenticator {
    private_key: PrivateKey,
    public_key_header: HeaderValue,
    allowed: RwLock<Arc<AllowList>>,
    /// One derived secret per allowed key: ECDH happens once per key, not per request.
    // A std mutex: held only for a map lookup or insert, never across an await.
    secrets: Mutex<HashMap<Vec<u8>, SharedSecret>>,
}

impl std::fmt::Debug for NodeAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately without the private key or any secret.
        f.debug_struct("NodeAuthenticator")
            .field("public_key", &self.private_key.public_key().fingerprint())
            .field("allowed_keys", &self.allowed_keys())
            .finish_non_exhaustive()
    }
}

impl NodeAuthenticator {
    /// An authenticator for the SuperLink key `private_key` admitting the keys of `allowed`.
    ///
    /// # Errors
    ///
    /// Never in practice: the header value is base64 text.
    pub fn new(
        private_key: PrivateKey,
        allowed: AllowList,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let public_key_header = HeaderValue::from_str(&private_key.public_key().header_value())?;
        Ok(Self {
            private_key,
            public_key_header,
            allowed: RwLock::new(Arc::new(allowed)),
            secrets: Mutex::new(HashMap::new()),
        })
    }

    /// Number of keys currently admitted.
    pub fn allowed_keys(&self) -> usize {
        self.allow_list().len()
    }

    /// Replaces the allow-list; requests with a removed key are refused from now on.
    pub fn replace_allow_list(&self, allowed: AllowList) {
        if let Ok(mut secrets) = self.secrets.lock() {
            secrets.retain(|pem, _| allowed.contains(pem));
        }
        if let Ok(mut current) = self.allowed.write() {
            *current = Arc::new(allowed);
        }
    }

    fn allow_list(&self) -> Arc<AllowList> {
        match self.allowed.read() {
            Ok(list) => Arc::clone(&list),
            // A panic while swapping the list leaves the old one, which is still a valid list.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn secret_for(&self, pem: &[u8]) -> Result<SharedSecret, Refusal> {
        if let Some(secret) = self.secrets.lock().ok().and_then(|s| s.get(pem).cloned()) {
            return Ok(secret);
        }
        let peer =
            PublicKey::from_spki_pem(pem).map_err(|_| Refusal::new("unparsable public key"))?;
        let secret = SharedSecret::derive(&self.private_key, &peer)
            .map_err(|_| Refusal::new("cannot derive a shared secret (curve mismatch?)"))?;
        if let Ok(mut secrets) = self.secrets.lock() {
            // Only cache for keys still allowed, so a concurrent removal is not undone.
            if self.allow_list().contains(pem) {
                secrets.insert(pem.to_vec(), secret.clone());
            }
        }
        Ok(secret)
    }
}

/// Why a request was refused; logged, never sent.
#[derive(Debug)]
struct Refusal {
    reason: &'static str,
}

impl Refusal {
    fn new(reason: &'static str) -> Self {
        Self { reason }
    }
}

/// The Fleet service `S` behind node authentication.
#[derive(Debug, Clone)]
pub struct FleetAuth<S> {
    inner: S,
    auth: Arc<NodeAuthenticator>,
    state: Arc<dyn LinkState>,
}

impl<S> FleetAuth<S> {
    /// Wraps `inner` (a `FleetServer`) so every call is authenticated against `auth`, with node
    /// bindings looked up in `state`.
    pub fn new(inner: S, auth: Arc<NodeAuthenticator>, state: Arc<dyn LinkState>) -> Self {
        Self { inner, auth, state }
    }
}

impl<S: NamedService> NamedService for FleetAuth<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<BoxBody>> for FleetAuth<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        let state = Arc::clone(&self.state);
        Box::pin(authenticate(inner, auth, state, request))
    }
}

async fn authenticate<S>(
    mut inner: S,
    auth: Arc<NodeAuthenticator>,
    state: Arc<dyn LinkState>,
    request: Request<BoxBody>,
) -> Result<Response<BoxBody>, Infallible>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
{
    let (mut parts, body) = request.into_parts();
    let method = parts
        .uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let pem = match header_bytes(&parts.headers, "public-key") {
        Some(pem) if auth.allow_list().contains(&pem) => pem,
        pem => {
            return Ok(deny(
                &method,
                pem.as_deref(),
                Refusal::new("public key not allowed"),
            ))
        }
    };

    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(status) => return Ok(status.into_http()),
    };
    let Some(message) = grpc_message(&body) else {
        return Ok(Status::internal("Exception deserializing request!").into_http());
    };

    // No token on CreateNode: knowing a listed key is enough, as in the reference.
    if method != "CreateNode" {
        if let Err(refusal) = verify(&auth, &state, &parts.headers, &method, &pem, message).await {
            return Ok(deny(&method, Some(&pem), refusal));
        }
    }

    parts
        .extensions
        .insert(AuthenticatedNode { public_key: pem });
    let request = Request::from_parts(parts, tonic::body::boxed(http_body_util::Full::new(body)));
    let mut response = inner.call(request).await?;
    if method == "CreateNode" {
        // The SuperNode derives its secret from this header (initial metadata, not trailers).
        response
            .headers_mut()
            .insert("public-key", auth.public_key_header.clone());
    }
    Ok(response)
}

/// Checks the token over the canonical request bytes and the binding of node ids in the
/// request to the caller's key; returns the caller's node id.
async fn verify(
    auth: &NodeAuthenticator,
    state: &Arc<dyn LinkState>,
    headers: &HeaderMap,
    method: &str,
    pem: &[u8],
    message: &[u8],
) -> Result<u64, Refusal> {
    let type_name = request_type(method).ok_or(Refusal::new("unknown Fleet method"))?;
    let token = header_bytes(headers, "auth-token")
        .ok_or(Refusal::new("missing or undecodable auth-token"))?;
    // The sender signed its own deterministic encoding; re-encode what arrived the same way.
    let canonical = canonical::canonicalize(type_name, message)
        .map_err(|_| Refusal::new("request does not parse"))?;
    if !auth.secret_for(pem)?.verify(&canonical, &token) {
        return Err(Refusal::new("auth-token does not match"));
    }
    let binding = Binding::of(method, message)?;
    let state = Arc::clone(state);
    let pem = pem.to_vec();
    tokio::task::spawn_blocking(move || binding.check(state.as_ref(), &pem))
        .await
        .map_err(|_| Refusal::new("node lookup failed"))?
}

/// What a request claims about its sender, to be checked against the key's node id.
#[derive(Debug)]
enum Binding {
    /// `request.node.node_id` (DeleteNode, Ping, PullTaskIns, GetFab).
    Node(u64),
    /// The producer of every TaskRes (PushTaskRes).
    Producers(Vec<u64>),
    /// The node must be online and the run must exist (GetRun).
    Run(u64),
}

impl Binding {
    fn of(method: &str, message: &[u8]) -> Result<Self, Refusal> {
        let bad = |_| Refusal::new("request does not parse");
        let node = |node: Option<flwr_proto::Node>| Self::Node(node.unwrap_or_default().node_id);
        Ok(match method {
            "DeleteNode" => node(DeleteNodeRequest::decode(message).map_err(bad)?.node),
            "Ping" => node(PingRequest::decode(message).map_err(bad)?.node),
            "PullTaskIns" => node(PullTaskInsRequest::decode(message).map_err(bad)?.node),
            "GetFab" => node(GetFabRequest::decode(message).map_err(bad)?.node),
            "GetRun" => Self::Run(GetRunRequest::decode(message).map_err(bad)?.run_id),
            "PushTaskRes" => {
                let request = PushTaskResRequest::decode(message).map_err(bad)?;
                let producers: Vec<u64> = request
                    .task_res_list
                    .iter()
                    .map(|res| {
                        let producer = res.task.as_ref().and_then(|task| task.producer.as_ref());
                        producer.map_or(0, |p| p.node_id)
                    })
                    .collect();
                if producers.is_empty() {
                    return Err(Refusal::new("PushTaskRes without a TaskRes"));
                }
                Self::Producers(producers)
            }
            _ => return Err(Refusal::new("unknown Fleet method")),
        })
    }

    fn check(self, state: &dyn LinkState, pem: &[u8]) -> Result<u64, Refusal> {
        let id = state
            .node_id_for_public_key(pem)
            .map_err(|_| Refusal::new("node lookup failed"))?
            .ok_or(Refusal::new("no node registered for this key"))?;
        let bound = match self {
            Self::Node(node_id) => node_id == id,
            Self::Producers(producers) => producers.iter().all(|&node_id| node_id == id),
            Self::Run(run_id) => state
                .online_nodes(run_id)
                .is_ok_and(|nodes| nodes.contains(&id)),
        };
        if bound {
            Ok(id)
        } else {
            Err(Refusal::new(
                "node id in the request is not bound to this key",
            ))
        }
    }
}

fn request_type(method: &str) -> Option<&'static str> {
    Some(match method {
        "DeleteNode" => "flwr.proto.DeleteNodeRequest",
        "Ping" => "flwr.proto.PingRequest",
        "PullTaskIns" => "flwr.proto.PullTaskInsRequest",
        "PushTaskRes" => "flwr.proto.PushTaskResRequest",
        "GetRun" => "flwr.proto.GetRunRequest",
        "GetFab" => "flwr.proto.GetFabRequest",
        _ => return None,
    })
}

/// The first value of a metadata header, decoded like Python's `urlsafe_b64decode`.
fn header_bytes(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let value = headers.get(name)?.to_str().ok()?;
    flwr_auth::header::decode(value).ok()
}

/// The message of a gRPC unary request body: one uncompressed length-prefixed frame.
fn grpc_message(body: &Bytes) -> Option<&[u8]> {
    let mut frame = body.as_ref();
    if frame.len() < 5 || frame.get_u8() != 0 {
        return None;
    }
    let len = usize::try_from(frame.get_u32()).ok()?;
    (frame.len() == len).then_some(frame)
}

fn deny(method: &str, pem: Option<&[u8]>, refusal: Refusal) -> Response<BoxBody> {
    let fingerprint = pem
        .and_then(|pem| PublicKey::from_spki_pem(pem).ok())
        .map_or_else(|| "-".to_owned(), |key| key.fingerprint());
    tracing::warn!(method, key = %fingerprint, reason = refusal.reason, "refused Fleet request");
    Status::unauthenticated("Access denied").into_http()
}

/// How often the allow-list file is looked at; a removed key is refused within this time
/// plus one request.
const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps `auth`'s allow-list in step with the CSV file at `path` until `shutdown` resolves.
///
/// A file that no longer parses (or cannot be read) is reported and ignored: the previous list
/// stays in force, so a half-written edit never locks every node out.
pub async fn watch_allow_list(
    path: PathBuf,
    auth: Arc<NodeAuthenticator>,
    shutdown: impl Future<Output = ()>,
) {
    let mut last = tokio::fs::read(&path).await.ok();
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let content = match tokio::fs::read(&path).await {
            Ok(content) => content,
            Err(error) => {
                if last.take().is_some() {
                    tracing::error!(file = %path.display(), %error, "cannot read --auth-list-public-keys; keeping the previous list");
                }
                continue;
            }
        };
        if last.as_ref() == Some(&content) {
            continue;
        }
        last = Some(content.clone());
        let parsed = std::str::from_utf8(&content)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(|text| AllowList::parse(text).map_err(|e| e.to_string()));
        match parsed {
            Ok(list) => {
                let keys = list.len();
                auth.replace_allow_list(list);
                tracing::info!(file = %path.display(), keys, "reloaded --auth-list-public-keys");
            }
            Err(error) => tracing::error!(
                file = %path.display(),
                %error,
                "--auth-list-public-keys no longer parses; keeping the previous list"
            ),
        }
    }
}
