//! SuperNode authentication on the Fleet API (spec AUTH.md §7), as a service wrapping the
//! Fleet server.
//!
//! The token is an HMAC over the *canonical re-encoding of the request body*, so it cannot be
//! checked in a tonic interceptor (which sees metadata only) and should not be checked on the
//! decoded struct (prost forgets unknown fields and `-0.0`). [`FleetAuth`] therefore reads each
//! unary request body once, verifies the token over the canonical encoding of those bytes, and
//! decodes them once, array payloads as slices of that one buffer; the Fleet handler takes the
//! decoded request from the request extensions (`Decoded`). The caller's key
//! travels in an [`AuthenticatedNode`] request extension; the Fleet handlers check that the
//! node ids a request names are bound to that key, on the typed request, inside the same
//! state call that serves it (no second lookup).
//!
//! What the body read bounds, before any work is spent on the content:
//!
//! - the key must be on the allow-list before a byte of the body is read;
//! - the gRPC frame header announces the length: a length over the message-size limit is
//!   refused with `RESOURCE_EXHAUSTED` once the first five bytes are in;
//! - the body must arrive within [`BODY_DEADLINE_BASE`] plus one second per MiB;
//! - verifying a large body runs on the blocking pool, at most [`LARGE_VERIFICATIONS`] at a
//!   time, so it cannot stall the async workers that serve every other request.
//!
//! Differences from the reference, all on the refusing side:
//!
//! - the shared secret is derived once per allowed key and cached, never per request (the
//!   reference runs an ECDH for every call, chosen by whoever knows a listed public key);
//! - every refusal, including undecodable headers and curve mismatches, is
//!   `UNAUTHENTICATED "Access denied"`; the reason and the key's fingerprint go to the log only,
//!   at most one line per second;
//! - `PushTaskRes` binds every TaskRes producer to the caller, not only the first;
//! - the allow-list can be replaced at run time ([`NodeAuthenticator::replace_allow_list`]),
//!   which also drops the cached secrets of removed keys.
//!
//! # Modes and what they stop
//!
//! `--node-auth-mode compatible` (the default) is Flower 1.14's scheme, byte for byte, so Python
//! SuperNodes work: the token is `HMAC(secret, canonical request)` and nothing else. It proves
//! that whoever sent the request once held the node's key, not that they hold it now: a token
//! seen once can be sent again, forever, and for another method whose request has the same bytes
//! (a captured `PullTaskIns` token is a valid `DeleteNode` token of the same node). Only TLS keeps
//! tokens from being seen; tokens are never logged.
//!
//! `--node-auth-mode hardened` ([`NodeAuthenticator::with_hardened_mode`]) is for our SuperNodes
//! started with the same flag; it refuses every 1.14 token (Python SuperNodes cannot use it). The
//! token also covers the gRPC method, the node's clock and a per-process counter
//! ([`flwr_auth::hardened`] has the construction and the full threat model), and each request:
//!
//! - must carry `flwr-auth-time` and `flwr-auth-counter` (refusal `legacy_token`);
//! - must have a time within `--node-auth-max-clock-skew` of ours when its headers arrive, before
//!   the body is read (`clock_skew`);
//! - after its MAC verified, must have a counter its key's anti-replay window has not admitted
//!   (`replayed`). One window per allowed key, 160 bytes, created on the key's first hardened
//!   request and dropped with the key when the allow-list is reloaded.
//!
//! That stops replays to this SuperLink process, the reuse of a token for another method, and
//! any use of a captured request after the skew. It does not stop, within the skew, a replay to
//! another SuperLink replica sharing the database (each process has its own windows), to this one
//! after a restart, or after the key was removed and re-added; nor a registration by whoever
//! knows a listed public key, because `CreateNode` stays tokenless in both modes (the SuperNode
//! learns the SuperLink's key from its answer, so it has nothing to sign with before). TLS remains
//! what keeps requests and tokens secret.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use flwr_auth::hardened::{self, Admission, Binding, ClockError, ReplayError, ReplayWindow};
use flwr_auth::{AllowList, Curve, PrivateKey, PublicKey, SharedSecret};
use flwr_proto::canonical::MessageType;
use flwr_proto::FleetRpc;
use flwr_proto::{
    CreateNodeRequest, DeleteNodeRequest, GetFabRequest, GetRunRequest, PingRequest,
    PullTaskInsRequest, PushTaskResRequest,
};
use flwr_runtime::RateLimited;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::{body::BoxBody, server::NamedService, Status};
use tower_service::Service;

use crate::service::fleet::{AuthenticatedNode, Decoded, FleetHandler};
use crate::service::{respond_held, HoldRequest};

/// A gRPC frame holding an empty message: what tonic decodes when the request was decoded here.
const EMPTY_FRAME: &[u8] = &[0, 0, 0, 0, 0];

/// Bodies larger than this are verified on the blocking pool.
const LARGE_BODY: usize = 1 << 20;
/// Large bodies verified at once; more wait their turn.
pub const LARGE_VERIFICATIONS: usize = 2;
/// Time allowed for any request body, on top of one second per MiB it announces.
pub const BODY_DEADLINE_BASE: Duration = Duration::from_secs(10);
/// At most one refusal line per this interval; the rest are counted into the next line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The SuperLink's side of node authentication: its key pair, the allow-list and the cache of
/// shared secrets.
pub struct NodeAuthenticator {
    private_key: PrivateKey,
    public_key_header: HeaderValue,
    /// The allowed keys (PEM SPKI bytes), hashed: every request looks its key up, and in the
    /// list's sorted set a lookup among 50 000 keys sharing a 60-byte PEM prefix cost 16 long
    /// comparisons.
    allowed: RwLock<Arc<HashSet<Vec<u8>>>>,
    /// One derived secret per allowed key: ECDH happens once per key, not per request.
    // A std mutex: held only for a map lookup or insert, never across an await.
    secrets: Mutex<HashMap<Vec<u8>, SharedSecret>>,
    large_verifications: Arc<Semaphore>,
    refusal_log: Mutex<RefusalLog>,
    /// Refusals by reason, counted whether or not metrics are exported (an atomic add).
    refusals: Family<RefusalLabels, Counter>,
    /// Allow-list reloads by result.
    reloads: Family<ReloadLabels, Counter>,
    /// `Some` in hardened mode.
    hardening: Option<Hardening>,
}

/// The hardened mode's settings and state.
#[derive(Debug)]
struct Hardening {
    /// `--node-auth-max-clock-skew`, in milliseconds.
    max_skew_ms: u64,
    /// One anti-replay window per key that sent a hardened request; only allowed keys get one.
    // A std mutex: held for one lookup and a few word operations, never across an await.
    windows: Mutex<HashMap<Vec<u8>, ReplayWindow>>,
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
            allowed: RwLock::new(Arc::new(key_set(&allowed))),
            secrets: Mutex::new(HashMap::new()),
            large_verifications: Arc::new(Semaphore::new(LARGE_VERIFICATIONS)),
            refusal_log: Mutex::new(RefusalLog {
                limit: RateLimited::new(REFUSAL_LOG_INTERVAL),
                held_back: [0; RefusalReason::ALL.len()],
            }),
            refusals: Family::default(),
            reloads: Family::default(),
            hardening: None,
        })
    }

    /// Switches to the hardened mode (`--node-auth-mode hardened`): only tokens bound to the
    /// method, a time within `max_clock_skew` of ours and an unused counter are accepted; 1.14
    /// tokens are refused. See the module docs.
    #[must_use]
    pub fn with_hardened_mode(mut self, max_clock_skew: Duration) -> Self {
        self.hardening = Some(Hardening {
            max_skew_ms: u64::try_from(max_clock_skew.as_millis()).unwrap_or(u64::MAX),
            windows: Mutex::new(HashMap::new()),
        });
        self
    }

    /// Whether 1.14 tokens are refused in favour of hardened ones.
    pub fn is_hardened(&self) -> bool {
        self.hardening.is_some()
    }

    /// Refused requests by reason (`flwr_superlink_node_auth_refusals_total`), with every
    /// reason present from the start so that rates work before the first refusal.
    pub(crate) fn refusal_counts(&self) -> Family<RefusalLabels, Counter> {
        for reason in RefusalReason::ALL {
            let _ = self.refusals.get_or_create(&RefusalLabels {
                reason: reason.label(),
            });
        }
        self.refusals.clone()
    }

    /// Allow-list reloads by result (`flwr_superlink_allow_list_reloads_total`).
    pub(crate) fn reload_counts(&self) -> Family<ReloadLabels, Counter> {
        for result in [RELOAD_OK, RELOAD_REJECTED] {
            let _ = self.reloads.get_or_create(&ReloadLabels { result });
        }
        self.reloads.clone()
    }

    fn count_reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The curve of the SuperLink's key; every admitted key must be on it.
    pub fn curve(&self) -> Curve {
        self.private_key.curve()
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
        let keys = Arc::new(key_set(&allowed));
        match self.allowed.write() {
            Ok(mut current) => *current = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        // After the swap: a window created meanwhile for a removed key is dropped here, and
        // none can be created after it (`admit` checks the new list under the windows' lock).
        if let Some(hardening) = &self.hardening {
            if let Ok(mut windows) = hardening.windows.lock() {
                windows.retain(|pem, _| allowed.contains(pem));
            }
        }
    }

    fn allow_list(&self) -> Arc<HashSet<Vec<u8>>> {
        match self.allowed.read() {
            Ok(list) => Arc::clone(&list),
            // A panic while swapping the list leaves the old one, which is still a valid list.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn is_allowed(&self, pem: &[u8]) -> bool {
        match self.allowed.read() {
            Ok(list) => list.contains(pem),
            Err(poisoned) => poisoned.into_inner().contains(pem),
        }
    }

    fn has_secret(&self, pem: &[u8]) -> bool {
        self.secrets.lock().is_ok_and(|s| s.contains_key(pem))
    }

    fn secret_for(&self, pem: &[u8]) -> Result<SharedSecret, Refusal> {
        if let Some(secret) = self.secrets.lock().ok().and_then(|s| s.get(pem).cloned()) {
            return Ok(secret);
        }
        let peer = PublicKey::from_spki_pem(pem)
            .map_err(|_| Refusal::new(RefusalReason::KeyUnusable, "unparsable public key"))?;
        let secret = SharedSecret::derive(&self.private_key, &peer).map_err(|_| {
            Refusal::new(
                RefusalReason::KeyUnusable,
                "cannot derive a shared secret (curve mismatch?)",
            )
        })?;
        if let Ok(mut secrets) = self.secrets.lock() {
            // Only cache for keys still allowed, so a concurrent removal is not undone.
            if self.is_allowed(pem) {
                secrets.insert(pem.to_vec(), secret.clone());
            }
        }
        Ok(secret)
    }

    /// Admits the verified hardened request `stamp` of `pem` into the key's anti-replay window.
    fn admit(&self, hardening: &Hardening, pem: &[u8], stamp: Stamp) -> Result<(), Refusal> {
        let mut windows = hardening
            .windows
            .lock()
            .map_err(|_| Refusal::new(RefusalReason::Internal, "replay windows unavailable"))?;
        let admitted = match windows.get_mut(pem) {
            Some(window) => window.admit(
                stamp.counter,
                stamp.time_ms,
                stamp.received_ms,
                hardening.max_skew_ms,
            ),
            // A window only for a key still allowed, so that their number stays bounded by the
            // list and a concurrent removal is not undone.
            None if self.is_allowed(pem) => {
                let mut window = ReplayWindow::new();
                let admitted = window.admit(
                    stamp.counter,
                    stamp.time_ms,
                    stamp.received_ms,
                    hardening.max_skew_ms,
                );
                windows.insert(pem.to_vec(), window);
                admitted
            }
            None => {
                return Err(Refusal::new(
                    RefusalReason::NotAllowed,
                    "public key removed from the allow-list",
                ))
            }
        };
        drop(windows);
        match admitted {
            Ok(Admission::Ahead | Admission::Late) => Ok(()),
            Ok(Admission::Resynchronized { previous_highest }) => {
                // Rare and only possible with the node's key: not rate-limited.
                let key = PublicKey::from_spki_pem(pem)
                    .map_or_else(|_| "-".to_owned(), |key| key.fingerprint());
                tracing::warn!(
                    key = %key,
                    counter = stamp.counter,
                    previous_highest,
                    "node-auth counter went back (SuperNode restarted with its clock behind?); \
                     its replay window starts over"
                );
                Ok(())
            }
            Err(error) => Err(Refusal::new(
                RefusalReason::Replayed,
                match error {
                    ReplayError::Duplicate => "counter already used: a replayed request",
                    ReplayError::TooOld { .. } => {
                        "counter too far behind the node's latest: a replayed or very late request"
                    }
                    ReplayError::BeforeResync => {
                        "request began before the node's replay window started over"
                    }
                    _ => "counter refused by the replay window",
                },
            )),
        }
    }

    /// Counts a refused request and logs it, at most once per [`REFUSAL_LOG_INTERVAL`]:
    /// whoever can reach the port can trigger refusals at will.
    pub(crate) fn log_refusal(
        &self,
        method: &str,
        pem: Option<&[u8]>,
        kind: RefusalReason,
        reason: &str,
    ) {
        self.refusals
            .get_or_create(&RefusalLabels {
                reason: kind.label(),
            })
            .inc();
        let held_back = match self.refusal_log.lock() {
            Ok(mut log) => log.admit(kind),
            Err(_) => None,
        };
        let Some((held_back, by_reason)) = held_back else {
            return;
        };
        let fingerprint = pem
            .and_then(|pem| PublicKey::from_spki_pem(pem).ok())
            .map_or_else(|| "-".to_owned(), |key| key.fingerprint());
        tracing::warn!(
            method,
            key = %fingerprint,
            reason,
            kind = kind.label(),
            refusals_not_logged = held_back,
            not_logged_by_reason = %by_reason,
            "refused Fleet request"
        );
    }
}

/// The refusal log's rate limit and, per reason, the refusals it held back since the last line.
#[derive(Debug)]
struct RefusalLog {
    limit: RateLimited,
    held_back: [u64; RefusalReason::ALL.len()],
}

impl RefusalLog {
    /// `Some((held back, "reason=count …"))` when this refusal is to be logged; otherwise
    /// counts it under its reason.
    fn admit(&mut self, kind: RefusalReason) -> Option<(u64, String)> {
        let Some(held_back) = self.limit.check() else {
            if let Some(count) = RefusalReason::ALL
                .iter()
                .position(|reason| *reason == kind)
                .and_then(|index| self.held_back.get_mut(index))
            {
                *count = count.saturating_add(1);
            }
            return None;
        };
        let summary: Vec<String> = RefusalReason::ALL
            .iter()
            .zip(std::mem::take(&mut self.held_back))
            .filter(|(_, count)| *count > 0)
            .map(|(reason, count)| format!("{}={count}", reason.label()))
            .collect();
        Some((held_back, summary.join(" ")))
    }
}

/// The keys of `list` as a hash set.
fn key_set(list: &AllowList) -> HashSet<Vec<u8>> {
    list.iter().map(<[u8]>::to_vec).collect()
}

/// Why a request was refused; logged, never sent.
#[derive(Debug)]
struct Refusal {
    kind: RefusalReason,
    reason: &'static str,
}

impl Refusal {
    fn new(kind: RefusalReason, reason: &'static str) -> Self {
        Self { kind, reason }
    }
}

/// The fixed set of refusal reasons that label `flwr_superlink_node_auth_refusals_total`; the
/// log line carries the precise reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalReason {
    /// The request does not parse, or names no TaskRes where one is needed.
    BadRequest,
    /// The `auth-token` is missing, undecodable or does not match, or a hardened header is
    /// malformed.
    BadToken,
    /// Hardened mode: the request's time is further from ours than the allowed clock skew.
    ClockSkew,
    /// The server could not complete the check (shutting down, a failed task).
    Internal,
    /// The listed key cannot be used (unparsable, or on another curve).
    KeyUnusable,
    /// Hardened mode: a Flower 1.14 token (no `flwr-auth-time`/`flwr-auth-counter`).
    LegacyToken,
    /// The `public-key` is missing or not on the allow-list.
    NotAllowed,
    /// The node ids in the request are not the ones bound to the caller's key.
    NotBound,
    /// Hardened mode: the counter was used before, or is too old for the replay window.
    Replayed,
    /// The path names no Fleet method.
    UnknownMethod,
}

impl RefusalReason {
    const ALL: [Self; 10] = [
        Self::BadRequest,
        Self::BadToken,
        Self::ClockSkew,
        Self::Internal,
        Self::KeyUnusable,
        Self::LegacyToken,
        Self::NotAllowed,
        Self::NotBound,
        Self::Replayed,
        Self::UnknownMethod,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadToken => "bad_token",
            Self::ClockSkew => "clock_skew",
            Self::Internal => "internal",
            Self::KeyUnusable => "key_unusable",
            Self::LegacyToken => "legacy_token",
            Self::NotAllowed => "not_allowed",
            Self::NotBound => "not_bound",
            Self::Replayed => "replayed",
            Self::UnknownMethod => "unknown_method",
        }
    }
}

/// The label of `flwr_superlink_node_auth_refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    reason: &'static str,
}

/// The label of `flwr_superlink_allow_list_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    result: &'static str,
}

const RELOAD_OK: &str = "ok";
const RELOAD_REJECTED: &str = "rejected";

/// The Fleet service `S` behind node authentication.
#[derive(Debug, Clone)]
pub struct FleetAuth<S> {
    inner: S,
    auth: Arc<NodeAuthenticator>,
    max_message_size: usize,
    /// Serves authenticated PullTaskIns itself, with responses that share the stored payloads.
    pulls: Option<Arc<FleetHandler>>,
}

impl<S> FleetAuth<S> {
    /// Wraps `inner` (a `FleetServer`) so every call is authenticated against `auth`; request
    /// bodies over `max_message_size` bytes are refused before they are read.
    pub fn new(inner: S, auth: Arc<NodeAuthenticator>, max_message_size: usize) -> Self {
        Self {
            inner,
            auth,
            max_message_size,
            pulls: None,
        }
    }

    /// Answers authenticated PullTaskIns with `handler` directly instead of through `inner`,
    /// encoding each response in chunks that share the TaskIns payloads: tonic would copy
    /// every delivered model into a response buffer of its own (one per pulling node).
    #[must_use]
    pub fn serving_pulls(mut self, handler: Arc<FleetHandler>) -> Self {
        self.pulls = Some(handler);
        self
    }
}

impl<S: NamedService> NamedService for FleetAuth<S> {
    const NAME: &'static str = S::NAME;
}

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
    type Future = BoxFuture<'static, Result<Response<BoxBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        let pulls = self.pulls.clone();
        Box::pin(authenticate(
            inner,
            auth,
            pulls,
            self.max_message_size,
            request,
        ))
    }
}

/// What the layer needs of each Fleet method beyond its name and path: the request type its
/// token signs.
trait RequestType {
    /// Decodes `message` as this method's request into `extensions` ([`Decoded`]); false if it
    /// does not decode.
    fn decode_into(self, message: Bytes, extensions: &mut http::Extensions) -> bool;
    /// The schema handle of the request type, resolved once per process.
    fn request_type(self) -> Option<MessageType>;
}

impl RequestType for FleetRpc {
    fn decode_into(self, message: Bytes, extensions: &mut http::Extensions) -> bool {
        fn put<T>(message: Bytes, extensions: &mut http::Extensions) -> bool
        where
            T: prost::Message + Default + Clone + Send + Sync + 'static,
        {
            match T::decode(message) {
                Ok(request) => {
                    extensions.insert(Decoded(request));
                    true
                }
                Err(_) => false,
            }
        }
        match self {
            Self::CreateNode => put::<CreateNodeRequest>(message, extensions),
            Self::DeleteNode => put::<DeleteNodeRequest>(message, extensions),
            Self::GetFab => put::<GetFabRequest>(message, extensions),
            Self::GetRun => put::<GetRunRequest>(message, extensions),
            Self::Ping => put::<PingRequest>(message, extensions),
            Self::PullTaskIns => put::<PullTaskInsRequest>(message, extensions),
            Self::PushTaskRes => put::<PushTaskResRequest>(message, extensions),
        }
    }

    fn request_type(self) -> Option<MessageType> {
        // In `FleetRpc` declaration order.
        static TYPES: OnceLock<Option<[MessageType; 7]>> = OnceLock::new();
        let types = TYPES.get_or_init(|| {
            Some([
                MessageType::of::<CreateNodeRequest>().ok()?,
                MessageType::of::<DeleteNodeRequest>().ok()?,
                MessageType::of::<GetFabRequest>().ok()?,
                MessageType::of::<GetRunRequest>().ok()?,
                MessageType::of::<PingRequest>().ok()?,
                MessageType::of::<PullTaskInsRequest>().ok()?,
                MessageType::of::<PushTaskResRequest>().ok()?,
            ])
        });
        types.as_ref().map(|types| types[self as usize])
    }
}

async fn authenticate<S>(
    mut inner: S,
    auth: Arc<NodeAuthenticator>,
    pulls: Option<Arc<FleetHandler>>,
    max_message_size: usize,
    request: Request<BoxBody>,
) -> Result<Response<BoxBody>, Infallible>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
{
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some(method) = FleetRpc::from_path(path) else {
        auth.log_refusal(
            path,
            None,
            RefusalReason::UnknownMethod,
            "unknown Fleet method",
        );
        return Ok(access_denied());
    };
    let pem = match header_bytes(&parts.headers, "public-key") {
        Some(pem) if auth.is_allowed(&pem) => pem,
        pem => {
            auth.log_refusal(
                method.name(),
                pem.as_deref(),
                RefusalReason::NotAllowed,
                "public key not allowed",
            );
            return Ok(access_denied());
        }
    };

    // Hardened mode: the headers and the time are checked as they arrive, before the body is
    // read, so that neither a 1.14 token nor a stale request costs a body read, and a large body
    // that takes long to upload is not refused for it.
    let stamp = match &auth.hardening {
        Some(hardening) if method != FleetRpc::CreateNode => {
            match read_stamp(&parts.headers, hardening.max_skew_ms) {
                Ok(stamp) => Some(stamp),
                Err(refusal) => {
                    auth.log_refusal(method.name(), Some(&pem), refusal.kind, refusal.reason);
                    return Ok(access_denied());
                }
            }
        }
        _ => None,
    };

    let framed = match read_message(body, max_message_size).await {
        Ok(framed) => framed,
        Err(error) => return Ok(error.into_status(max_message_size).into_http()),
    };

    // No token on CreateNode: knowing a listed key is enough, as in the reference. The
    // secret is derived now, off the async workers, so that a node's first authenticated
    // request does not pay for an ECDH (nor do the requests queued behind it).
    if method == FleetRpc::CreateNode {
        if !auth.has_secret(&pem) {
            let (warm, key) = (Arc::clone(&auth), pem.clone());
            let _ = tokio::task::spawn_blocking(move || warm.secret_for(&key)).await;
        }
    } else {
        let message = framed.slice(5..);
        if let Err(refusal) = verify(&auth, &parts.headers, method, &pem, message, stamp).await {
            auth.log_refusal(method.name(), Some(&pem), refusal.kind, refusal.reason);
            return Ok(access_denied());
        }
    }

    parts.extensions.insert(AuthenticatedNode {
        public_key: pem,
        authenticator: Arc::clone(&auth),
    });
    // The verified bytes are decoded here, once, as slices of the received buffer, and the
    // handler takes that request from the extensions: tonic would otherwise copy the whole body
    // into its own buffer to decode it again. Tonic is left an empty frame to decode. Should the
    // decode fail, tonic gets the bytes and answers as it always does.
    let body = if method.decode_into(framed.slice(5..), &mut parts.extensions) {
        Bytes::from_static(EMPTY_FRAME)
    } else {
        framed
    };
    if let Some(handler) = pulls.filter(|_| method == FleetRpc::PullTaskIns) {
        if let Some(Decoded(request)) = parts.extensions.remove::<Decoded<PullTaskInsRequest>>() {
            let caller = parts.extensions.remove::<AuthenticatedNode>();
            let hold = HoldRequest::from_metadata(&MetadataMap::from_headers(parts.headers));
            let answer = respond_held(handler.pull_task_ins(request, caller, hold).await);
            return Ok(crate::shared_response::shared_response(
                answer,
                max_message_size,
            ));
        }
    }
    let request = Request::from_parts(parts, tonic::body::boxed(Full::new(body)));
    let mut response = inner.call(request).await?;
    if method == FleetRpc::CreateNode {
        // The SuperNode derives its secret from this header (initial metadata, not trailers).
        response
            .headers_mut()
            .insert("public-key", auth.public_key_header.clone());
    }
    Ok(response)
}

/// The refusal reason of a request without hardened headers, in hardened mode.
const LEGACY_TOKEN: &str = "1.14 token refused: hardened node auth requires \
                            flwr-auth-time/flwr-auth-counter (our SuperNode with \
                            --node-auth-mode hardened)";

/// The hardened headers of a request whose time passed the skew check.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    /// `flwr-auth-time`: the node's clock, unix ms.
    time_ms: u64,
    /// `flwr-auth-counter`.
    counter: u64,
    /// Our clock when the headers arrived, unix ms: the time check's and the window's "now".
    received_ms: u64,
}

/// Reads `flwr-auth-time` and `flwr-auth-counter` and checks the time against our clock.
fn read_stamp(headers: &HeaderMap, max_skew_ms: u64) -> Result<Stamp, Refusal> {
    let time = headers.get(hardened::TIME_HEADER);
    let counter = headers.get(hardened::COUNTER_HEADER);
    let (time, counter) = match (time, counter) {
        (Some(time), Some(counter)) => (time, counter),
        (None, None) => return Err(Refusal::new(RefusalReason::LegacyToken, LEGACY_TOKEN)),
        _ => {
            return Err(Refusal::new(
                RefusalReason::BadToken,
                "flwr-auth-time or flwr-auth-counter missing",
            ))
        }
    };
    let decimal = |value: &HeaderValue| value.to_str().ok().and_then(hardened::parse_decimal);
    let (Some(time_ms), Some(counter)) = (decimal(time), decimal(counter)) else {
        return Err(Refusal::new(
            RefusalReason::BadToken,
            "flwr-auth-time or flwr-auth-counter is not a decimal number",
        ));
    };
    let received_ms = unix_millis();
    hardened::check_time(time_ms, received_ms, max_skew_ms).map_err(|error| {
        Refusal::new(
            RefusalReason::ClockSkew,
            match error {
                ClockError::Ahead { .. } => {
                    "flwr-auth-time is ahead of the SuperLink's clock by more than \
                     --node-auth-max-clock-skew (the SuperNode's clock is off?)"
                }
                _ => {
                    "flwr-auth-time is behind the SuperLink's clock by more than \
                     --node-auth-max-clock-skew (a late or replayed request, or a clock off)"
                }
            },
        )
    })?;
    Ok(Stamp {
        time_ms,
        counter,
        received_ms,
    })
}

/// Our wall clock in unix milliseconds (0 before 1970, which refuses every hardened request
/// rather than accept any).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Checks the token over the canonical encoding of `message` (bound to `stamp` and the method
/// in hardened mode, whose window then admits the counter); a large message is verified on the
/// blocking pool, a bounded number at a time.
async fn verify(
    auth: &Arc<NodeAuthenticator>,
    headers: &HeaderMap,
    method: FleetRpc,
    pem: &[u8],
    message: Bytes,
    stamp: Option<Stamp>,
) -> Result<(), Refusal> {
    let token = header_bytes(headers, "auth-token").ok_or(Refusal::new(
        RefusalReason::BadToken,
        "missing or undecodable auth-token",
    ))?;
    let secret = auth.secret_for(pem)?;
    let request_type = method.request_type().ok_or(Refusal::new(
        RefusalReason::Internal,
        "request type missing from the schema",
    ))?;
    let check = move |message: &[u8]| -> Result<(), Refusal> {
        // The sender signed its own deterministic encoding; re-encode what arrived the same way,
        // straight into the MAC: the canonical bytes are never materialized.
        let mut mac = match stamp {
            None => secret.mac(),
            Some(stamp) => {
                let binding = Binding::new(method.path(), stamp.time_ms, stamp.counter)
                    .map_err(|_| Refusal::new(RefusalReason::Internal, "unusable method path"))?;
                secret.bound_mac(&binding)
            }
        };
        request_type
            .canonicalize_into(message, &mut |bytes: &[u8]| mac.update(bytes))
            .map_err(|_| Refusal::new(RefusalReason::BadRequest, "request does not parse"))?;
        if mac.verify(&token) {
            Ok(())
        } else {
            Err(Refusal::new(
                RefusalReason::BadToken,
                "auth-token does not match",
            ))
        }
    };
    if message.len() <= LARGE_BODY {
        check(&message)?;
    } else {
        let _slot = Arc::clone(&auth.large_verifications)
            .acquire_owned()
            .await
            .map_err(|_| Refusal::new(RefusalReason::Internal, "shutting down"))?;
        tokio::task::spawn_blocking(move || check(&message))
            .await
            .map_err(|_| {
                Refusal::new(RefusalReason::Internal, "verification did not complete")
            })??;
    }
    // Only a request whose MAC verified may use up a counter: anyone else could otherwise burn
    // a node's counters ahead of it.
    match (stamp, &auth.hardening) {
        (Some(stamp), Some(hardening)) => auth.admit(hardening, pem, stamp),
        _ => Ok(()),
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The frame announces more than the limit.
    TooLarge(u64),
    /// Not one uncompressed gRPC frame.
    Malformed,
    /// The body did not arrive in time.
    TimedOut,
    /// The transport failed (boxed: a `Status` is large and this error is returned often).
    Transport(Box<Status>),
}

impl BodyError {
    pub(crate) fn into_status(self, limit: usize) -> Status {
        match self {
            Self::TooLarge(length) => Status::resource_exhausted(format!(
                "request message of {length} bytes exceeds the SuperLink's limit of {limit} bytes \
                 ({})",
                flwr_proto::MESSAGE_SIZE_FLAG
            )),
            Self::Malformed => Status::internal("Exception deserializing request!"),
            Self::TimedOut => Status::deadline_exceeded("request body did not arrive in time"),
            Self::Transport(status) => *status,
        }
    }
}

/// Reads the one frame of a unary gRPC request body (5-byte header and message), refusing an
/// announced length over `limit` as soon as the header is in, within [`BODY_DEADLINE_BASE`]
/// plus a second per announced MiB. A body that arrives in one chunk is not copied.
pub(crate) async fn read_message(mut body: BoxBody, limit: usize) -> Result<Bytes, BodyError> {
    let started = tokio::time::Instant::now();
    let mut deadline = started + BODY_DEADLINE_BASE;
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut expected: Option<usize> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(status))) => return Err(BodyError::Transport(Box::new(status))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing for a unary request
        };
        if data.is_empty() {
            continue;
        }
        // The first chunk is kept as is; only a second chunk makes us copy into one buffer.
        match (&mut first, &mut joined) {
            (None, None) => first = Some(data),
            (Some(head), None) => {
                let mut buffer = BytesMut::with_capacity(head.len() + data.len());
                buffer.extend_from_slice(head);
                buffer.extend_from_slice(&data);
                first = None;
                joined = Some(buffer);
            }
            (_, Some(buffer)) => buffer.extend_from_slice(&data),
        }
        let received: &[u8] = match (&first, &joined) {
            (Some(head), _) => head,
            (_, Some(buffer)) => buffer,
            (None, None) => &[],
        };
        if expected.is_none() && received.len() >= 5 {
            let length = frame_length(received)?;
            if length > limit as u64 {
                return Err(BodyError::TooLarge(length));
            }
            let length = usize::try_from(length).map_err(|_| BodyError::Malformed)?;
            deadline = started + BODY_DEADLINE_BASE + Duration::from_secs((length >> 20) as u64);
            expected = Some(length);
        }
        if let Some(length) = expected {
            if received.len() > 5 + length {
                return Err(BodyError::Malformed); // a second message in a unary call
            }
        }
    }
    let framed = match (first, joined) {
        (Some(head), _) => head,
        (_, Some(buffer)) => buffer.freeze(),
        (None, None) => Bytes::new(),
    };
    match expected {
        Some(length) if framed.len() == 5 + length => Ok(framed),
        _ => Err(BodyError::Malformed),
    }
}

/// The announced message length of an uncompressed gRPC frame starting `bytes`.
fn frame_length(bytes: &[u8]) -> Result<u64, BodyError> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u64::from(u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => Err(BodyError::Malformed),
    }
}

fn access_denied() -> Response<BoxBody> {
    Status::unauthenticated("Access denied").into_http()
}

/// The first value of a metadata header, decoded like Python's `urlsafe_b64decode`.
fn header_bytes(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let value = headers.get(name)?.to_str().ok()?;
    flwr_auth::header::decode(value).ok()
}

/// How often the allow-list file is looked at. A change is applied once the file read the same
/// on two consecutive looks, so a removed key is refused within two intervals plus one request.
const RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// Why an allow-list file cannot be used, at start-up or on reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllowListError {
    /// A line does not hold a usable key (position in the message).
    #[error(transparent)]
    Csv(#[from] flwr_auth::CsvError),
    /// The file lists no key. The reference starts anyway and refuses every SuperNode; on
    /// reload an empty file is far more often a file caught mid-write than a wish to lock
    /// every node out, so it is refused in both places.
    #[error("lists no public keys, so every SuperNode would be refused")]
    Empty,
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text")]
    NotUtf8,
}

/// Parses an allow-list file under the start-up rules: UTF-8 CSV (AUTH.md §3), every key on
/// `curve` (the SuperLink key's), at least one key.
///
/// # Errors
///
/// See [`AllowListError`].
pub fn parse_allow_list(content: &[u8], curve: Curve) -> Result<AllowList, AllowListError> {
    let text = std::str::from_utf8(content).map_err(|_| AllowListError::NotUtf8)?;
    let list = AllowList::parse_for_curve(text, curve)?;
    if list.is_empty() {
        return Err(AllowListError::Empty);
    }
    Ok(list)
}

/// What one look at the allow-list file calls for.
#[derive(Debug)]
enum ReloadStep {
    /// Apply this list.
    Apply(AllowList),
    /// Nothing to do: unchanged since it was last judged, or still changing.
    Keep,
    /// The file cannot be read (first look after it became unreadable).
    Unreadable(std::io::Error),
    /// The settled file is unusable; the previous list stays.
    Refuse(AllowListError),
}

/// The reload decision, without I/O or clock: fed one read of the file per interval.
///
/// A file is judged only once it has stopped changing, i.e. two consecutive reads, one
/// interval apart, returned the same bytes. An editor that writes in place (truncate, then
/// write) is otherwise caught with half a list, which parses and would lock the missing nodes
/// out. Replacing the file atomically (write a temporary file, rename it over) avoids that
/// window altogether.
#[derive(Debug)]
struct Reloader {
    curve: Curve,
    /// The content last judged (applied or refused), to judge each version once.
    judged: Option<Vec<u8>>,
    /// The previous read, if it differed from `judged`: the candidate waiting to settle.
    candidate: Option<Vec<u8>>,
    /// Whether the last read failed, so an unreadable file is reported once.
    unreadable: bool,
}

impl Reloader {
    /// A reloader whose list currently in force was parsed from `initial`.
    fn new(curve: Curve, initial: Option<Vec<u8>>) -> Self {
        Self {
            curve,
            judged: initial,
            candidate: None,
            unreadable: false,
        }
    }

    fn observe(&mut self, read: std::io::Result<Vec<u8>>) -> ReloadStep {
        let content = match read {
            Ok(content) => content,
            Err(error) => {
                self.candidate = None;
                if std::mem::replace(&mut self.unreadable, true) {
                    return ReloadStep::Keep;
                }
                return ReloadStep::Unreadable(error);
            }
        };
        self.unreadable = false;
        if self.judged.as_ref() == Some(&content) {
            self.candidate = None;
            return ReloadStep::Keep;
        }
        if self.candidate.as_ref() != Some(&content) {
            // New or still changing: wait for the next look to see the same bytes.
            self.candidate = Some(content);
            return ReloadStep::Keep;
        }
        self.candidate = None;
        let step = match parse_allow_list(&content, self.curve) {
            Ok(list) => ReloadStep::Apply(list),
            Err(error) => ReloadStep::Refuse(error),
        };
        self.judged = Some(content);
        step
    }
}

/// Keeps `auth`'s allow-list in step with the CSV file at `path` until `shutdown` resolves.
///
/// A changed file is applied only when it has stopped changing (the same content on two reads
/// 250 ms apart) and parses under the start-up rules ([`parse_allow_list`]); anything else is
/// logged and the previous list stays in force, so a half-written or emptied file never locks
/// every node out.
pub async fn watch_allow_list(
    path: PathBuf,
    auth: Arc<NodeAuthenticator>,
    shutdown: impl Future<Output = ()>,
) {
    let mut reloader = Reloader::new(auth.curve(), tokio::fs::read(&path).await.ok());
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match reloader.observe(tokio::fs::read(&path).await) {
            ReloadStep::Keep => {}
            ReloadStep::Apply(list) => {
                let keys = list.len();
                auth.replace_allow_list(list);
                auth.count_reload(RELOAD_OK);
                tracing::info!(file = %path.display(), keys, "reloaded --auth-list-public-keys");
            }
            ReloadStep::Unreadable(error) => {
                auth.count_reload(RELOAD_REJECTED);
                tracing::error!(
                    file = %path.display(),
                    %error,
                    "cannot read --auth-list-public-keys; keeping the previous list"
                );
            }
            ReloadStep::Refuse(error) => {
                auth.count_reload(RELOAD_REJECTED);
                tracing::error!(
                    file = %path.display(),
                    %error,
                    "--auth-list-public-keys no longer parses; keeping the previous list"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_line(name: &str) -> String {
        let path = format!(
            "{}/../../testdata/vectors/keys/{name}.pub",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path)
            .expect("vector")
            .trim_end()
            .to_owned()
    }

    #[test]
    fn hardened_headers_are_read_strictly_and_the_time_checked() {
        let headers = |pairs: &[(&'static str, String)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).expect("ascii"));
            }
            map
        };
        let now = unix_millis();
        let time = |ms: u64| (hardened::TIME_HEADER, ms.to_string());
        let counter = |value: &str| (hardened::COUNTER_HEADER, value.to_owned());
        let stamp = read_stamp(&headers(&[time(now), counter("7")]), 30_000).expect("valid");
        assert_eq!((stamp.time_ms, stamp.counter), (now, 7));
        assert!(stamp.received_ms >= now);
        let kind = |pairs: &[(&'static str, String)]| {
            read_stamp(&headers(pairs), 30_000)
                .map(|_| ())
                .map_err(|refusal| refusal.kind)
        };
        assert_eq!(kind(&[]), Err(RefusalReason::LegacyToken));
        assert_eq!(kind(&[time(now)]), Err(RefusalReason::BadToken));
        assert_eq!(kind(&[counter("1")]), Err(RefusalReason::BadToken));
        for bad in ["", "+1", "01", "1.0", "18446744073709551616"] {
            assert_eq!(
                kind(&[time(now), counter(bad)]),
                Err(RefusalReason::BadToken),
                "{bad:?}"
            );
        }
        assert_eq!(
            kind(&[time(now - 60_000), counter("1")]),
            Err(RefusalReason::ClockSkew)
        );
        assert_eq!(
            kind(&[time(now + 60_000), counter("1")]),
            Err(RefusalReason::ClockSkew)
        );
    }

    #[test]
    fn the_refusal_log_summarizes_what_it_held_back_by_reason() {
        let mut log = RefusalLog {
            limit: RateLimited::new(Duration::from_secs(3600)),
            held_back: [0; RefusalReason::ALL.len()],
        };
        assert_eq!(log.admit(RefusalReason::BadToken), Some((0, String::new())));
        for kind in [
            RefusalReason::NotAllowed,
            RefusalReason::BadToken,
            RefusalReason::NotAllowed,
        ] {
            assert_eq!(log.admit(kind), None, "within the interval");
        }
        assert_eq!(log.held_back.iter().sum::<u64>(), 3);
        // The interval is over (a fresh limiter with none, whose own total restarts at 0); the
        // per-reason counts are the log's.
        log.limit = RateLimited::new(Duration::ZERO);
        assert_eq!(
            log.admit(RefusalReason::Internal),
            Some((0, "bad_token=1 not_allowed=2".to_owned()))
        );
        assert_eq!(log.held_back, [0; RefusalReason::ALL.len()]);
    }

    #[test]
    fn a_changed_file_is_applied_only_after_reading_the_same_twice() {
        let one = format!("{}\n", key_line("supernode_p384_derived"));
        let two = format!("{one}{}\n", key_line("stranger_p384_derived"));
        let mut reloader = Reloader::new(Curve::P384, Some(two.clone().into_bytes()));
        assert!(matches!(
            reloader.observe(Ok(two.clone().into_bytes())),
            ReloadStep::Keep
        ));
        // Half of the rewrite is on disk: seen once, not applied.
        assert!(matches!(
            reloader.observe(Ok(one.clone().into_bytes())),
            ReloadStep::Keep
        ));
        // The rest arrives before the next look: still changing.
        let three = format!("{two}{}\n", key_line("supernode_p384_sshkeygen"));
        assert!(matches!(
            reloader.observe(Ok(three.clone().into_bytes())),
            ReloadStep::Keep
        ));
        // Settled: applied once.
        match reloader.observe(Ok(three.clone().into_bytes())) {
            ReloadStep::Apply(list) => assert_eq!(list.len(), 3),
            other => panic!("expected the settled list, got {other:?}"),
        }
        assert!(matches!(
            reloader.observe(Ok(three.into_bytes())),
            ReloadStep::Keep
        ));
    }

    #[test]
    fn an_empty_or_wrong_curve_file_is_refused_at_reload() {
        let listed = format!("{}\n", key_line("supernode_p384_derived"));
        let mut reloader = Reloader::new(Curve::P384, Some(listed.into_bytes()));
        // Emptied (e.g. truncated by an editor that then crashed): refused once settled.
        assert!(matches!(reloader.observe(Ok(Vec::new())), ReloadStep::Keep));
        assert!(matches!(
            reloader.observe(Ok(Vec::new())),
            ReloadStep::Refuse(AllowListError::Empty)
        ));
        assert!(matches!(reloader.observe(Ok(Vec::new())), ReloadStep::Keep));
        let p256 = format!("{}\n", key_line("supernode_p256_derived"));
        assert!(matches!(
            reloader.observe(Ok(p256.clone().into_bytes())),
            ReloadStep::Keep
        ));
        match reloader.observe(Ok(p256.into_bytes())) {
            ReloadStep::Refuse(error) => {
                assert!(
                    error.to_string().starts_with("line 1, column 1: "),
                    "{error}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_unreadable_file_is_reported_once() {
        let mut reloader = Reloader::new(Curve::P384, None);
        let gone = || Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(matches!(
            reloader.observe(gone()),
            ReloadStep::Unreadable(_)
        ));
        assert!(matches!(reloader.observe(gone()), ReloadStep::Keep));
    }

    // A request body's stream items are `Result<Frame, Status>` by tonic's definition.
    #[allow(clippy::result_large_err)]
    fn body(chunks: Vec<Vec<u8>>) -> BoxBody {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(http_body::Frame::data(Bytes::from(chunk))));
        tonic::body::boxed(http_body_util::StreamBody::new(futures::stream::iter(
            frames.collect::<Vec<_>>(),
        )))
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[tokio::test]
    async fn a_message_in_any_chunking_is_read_whole() {
        let message: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let whole = framed(&message);
        for split in [
            vec![whole.len()],
            vec![1, whole.len()],
            vec![3, 7, 5000, whole.len()],
        ] {
            let mut chunks = Vec::new();
            let mut start = 0;
            for end in split {
                chunks.push(whole[start..end].to_vec());
                start = end;
            }
            let read = read_message(body(chunks), 1 << 20).await.expect("read");
            assert_eq!(read.as_ref(), whole.as_slice());
        }
    }

    #[tokio::test]
    async fn an_announced_length_over_the_limit_is_refused_from_the_header_alone() {
        // The header promises 1 GiB; only the header and a few bytes ever exist.
        let mut chunks = vec![vec![0, 0x40, 0, 0, 0], vec![1, 2, 3]];
        chunks.extend(std::iter::repeat_with(|| vec![0u8; 16]).take(4));
        let error = read_message(body(chunks), 1 << 20)
            .await
            .expect_err("refused");
        assert!(matches!(error, BodyError::TooLarge(length) if length == 1 << 30));
        let status = error.into_status(1 << 20);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn truncated_compressed_or_trailing_bodies_are_malformed() {
        let mut long = framed(b"abc");
        long.push(0);
        let mut compressed = framed(b"abc");
        compressed[0] = 1;
        for chunks in [
            vec![vec![0, 0, 0, 0, 9, 1]],
            vec![long],
            vec![compressed],
            vec![],
        ] {
            let error = read_message(body(chunks), 1 << 20)
                .await
                .expect_err("refused");
            assert!(matches!(error, BodyError::Malformed), "{error:?}");
        }
    }
}
