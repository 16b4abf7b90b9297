//! The Fleet API (`flwr.proto.Fleet`, BEHAVIOR.md §4.2): how SuperNodes register, heartbeat,
//! pull instructions and push results.
//!
//! # Where node authentication plugs in
//!
//! [`FleetHandler`] holds the behaviour as plain async fns over decoded requests plus an
//! optional [`AuthenticatedNode`]; [`FleetService`] is a thin tonic adapter. The token (AUTH.md
//! §7) is an HMAC over the canonical re-encoding of the *received bytes*, which only exist
//! before tonic decodes them, so [`crate::fleet_auth::FleetAuth`] checks it around the
//! `FleetServer` and inserts an [`AuthenticatedNode`] and the request it decoded (`Decoded`)
//! into the request extensions. What the
//! token cannot tell — whether the node ids the request names belong to that key — is checked
//! here, on the typed request, in the same state call that serves it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flwr_proto::fleet_server::Fleet;
use flwr_proto::{
    CreateNodeRequest, CreateNodeResponse, DeleteNodeRequest, DeleteNodeResponse, Fab,
    GetFabRequest, GetFabResponse, GetRunRequest, GetRunResponse, Node, PingRequest, PingResponse,
    PullTaskInsRequest, PullTaskInsResponse, PushTaskResRequest, PushTaskResResponse, Reconnect,
    Run,
};
use flwr_state::{Guard, LinkState};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::fleet_auth::{NodeAuthenticator, RefusalReason};
use crate::service::{fab_content, guarded_run, respond, respond_held, Held, HoldRequest, Stores};
use crate::wakeups::{Subscription, Topic, Wake};

/// `PushTaskResResponse.reconnect`: the reference always sends 5 (clients ignore it).
const RECONNECT_SECONDS: u64 = 5;

/// The longest `ping_interval` a node may claim, in seconds. The reference SuperNode sends 30
/// (BEHAVIOR.md §2.2, §2.3); a day leaves room for slow custom heartbeats while bounding how
/// long a node that died stays "online".
pub const MAX_PING_INTERVAL_SECONDS: f64 = 24.0 * 60.0 * 60.0;

/// `ping_interval` as a usable liveness extension: finite, positive and at most
/// [`MAX_PING_INTERVAL_SECONDS`]. The reference stores whatever arrives, so a negative value
/// takes a node offline, `inf` keeps it online forever and `NaN` breaks the SQLite store.
fn checked_ping_interval(method: &str, ping_interval: f64) -> Result<f64, Error> {
    if ping_interval.is_finite()
        && ping_interval > 0.0
        && ping_interval <= MAX_PING_INTERVAL_SECONDS
    {
        return Ok(ping_interval);
    }
    Err(Error::InvalidArgument(format!(
        "{method}: ping_interval must be a number of seconds in (0, {MAX_PING_INTERVAL_SECONDS}], \
         got {ping_interval}"
    )))
}

/// The identity node authentication established for a request, placed in the request's
/// extensions by the auth layer. Absent when node authentication is off.
#[derive(Debug, Clone)]
pub struct AuthenticatedNode {
    /// The node's public key as the LinkState stores it.
    pub public_key: Vec<u8>,
    /// Where refusals are reported.
    pub(crate) authenticator: Arc<NodeAuthenticator>,
}

/// A request the auth layer already decoded from the bytes it verified, placed in the request's
/// extensions; the handler serves it instead of tonic's (empty) decode.
#[derive(Debug, Clone)]
pub(crate) struct Decoded<T>(pub(crate) T);

/// What a request says about its sender, to be checked against the node bound to its key
/// (AUTH.md §7; stricter than the reference for PushTaskRes).
#[derive(Debug)]
enum Claim {
    /// `request.node.node_id` (DeleteNode, Ping, PullTaskIns, GetFab).
    Node(u64),
    /// Whether every TaskRes names the caller as its producer (PushTaskRes).
    Producers {
        all_the_caller: Option<bool>,
        first: u64,
    },
    /// The run exists (as the handler found) and the caller's node is online (GetRun).
    OnlineFor { run_exists: bool },
}

impl Claim {
    fn producers(list: &[flwr_proto::TaskRes]) -> Self {
        let producer = |res: &flwr_proto::TaskRes| {
            res.task
                .as_ref()
                .and_then(|task| task.producer.as_ref())
                .map_or(0, |node| node.node_id)
        };
        let first = list.first().map_or(0, producer);
        Self::Producers {
            all_the_caller: (!list.is_empty()).then(|| list.iter().all(|r| producer(r) == first)),
            first,
        }
    }
}

/// Checks `claim` for an authenticated caller (and nothing without node auth); a failure is
/// logged with its reason and answered `UNAUTHENTICATED "Access denied"`.
fn authorize(
    method: &str,
    node: Option<&AuthenticatedNode>,
    state: &dyn LinkState,
    claim: Claim,
) -> Result<(), Error> {
    let Some(node) = node else {
        return Ok(());
    };
    let refuse = |kind: RefusalReason, reason: &str| {
        node.authenticator
            .log_refusal(method, Some(&node.public_key), kind, reason);
        Err(Error::AccessDenied)
    };
    let Some(id) = state.node_id_for_public_key(&node.public_key)? else {
        return refuse(RefusalReason::NotBound, "no node registered for this key");
    };
    let bound = match claim {
        Claim::Node(node_id) => node_id == id,
        Claim::Producers {
            all_the_caller: None,
            ..
        } => return refuse(RefusalReason::BadRequest, "PushTaskRes without a TaskRes"),
        Claim::Producers {
            all_the_caller: Some(same),
            first,
        } => same && first == id,
        Claim::OnlineFor { run_exists } => run_exists && state.is_node_online(id)?,
    };
    if bound {
        Ok(())
    } else {
        refuse(
            RefusalReason::NotBound,
            "node id in the request is not bound to this key",
        )
    }
}

/// The Fleet behaviour, independent of the transport.
#[derive(Debug, Clone)]
pub struct FleetHandler {
    stores: Stores,
    /// How long to hold an empty PullTaskIns that did not ask for a hold (`--hold-pulls`).
    unasked_hold: Option<Duration>,
}

impl FleetHandler {
    /// A handler over the shared stores that holds only the pulls that ask for it.
    pub fn new(stores: Stores) -> Self {
        Self {
            stores,
            unasked_hold: None,
        }
    }

    /// Also holds pulls that do not ask, for up to `hold` (`--hold-pulls`).
    #[must_use]
    pub fn with_unasked_hold(mut self, hold: Option<Duration>) -> Self {
        self.unasked_hold = hold;
        self
    }

    /// Registers a node (bound to its public key when authenticated).
    ///
    /// A key that already has a node gets that node back. CreateNode carries no token (AUTH.md
    /// §7), so anyone who knows a listed public key can send it: it revives an offline node
    /// for `ping_interval` but never touches the liveness of an online one, which only the
    /// node's own (signed) Pings extend. Liveness is therefore never shortened.
    ///
    /// # Errors
    ///
    /// `ping_interval` outside (0, [`MAX_PING_INTERVAL_SECONDS`]]: `INVALID_ARGUMENT`; store
    /// failures.
    pub async fn create_node(
        &self,
        request: CreateNodeRequest,
        node: Option<AuthenticatedNode>,
    ) -> Result<CreateNodeResponse, Error> {
        let ping_interval = checked_ping_interval("CreateNode", request.ping_interval)?;
        let (node_id, created) = self
            .stores
            .call(move |state, _| {
                let public_key = node.as_ref().map(|node| node.public_key.as_slice());
                if let Some(key) = public_key {
                    if let Some(node_id) = state.node_id_for_public_key(key)? {
                        // online_until = max(current, now + interval): the store has no read of
                        // `online_until`, and an online node's is already in the future, so it
                        // is left alone; an offline node's lies in the past, so now + interval
                        // is the larger. (A signed Ping racing in between these two calls may
                        // be overwritten by a shorter interval; the node's next Ping repairs it.)
                        if !state.is_node_online(node_id)? {
                            state.acknowledge_ping(node_id, ping_interval)?;
                        }
                        return Ok((node_id, false));
                    }
                }
                Ok((state.create_node(ping_interval, public_key)?, true))
            })
            .await?;
        if created {
            // The reference's wording, which operators (and test harnesses) look for.
            tracing::info!("Created node_id={node_id}");
        } else {
            tracing::info!("Node node_id={node_id} registered again");
        }
        Ok(CreateNodeResponse {
            node: Some(Node {
                node_id,
                anonymous: false,
            }),
        })
    }

    /// Unregisters a node; anonymous nodes and node id 0 are ignored.
    ///
    /// # Errors
    ///
    /// Unknown node id: `UNKNOWN` `Node <id> not found`.
    pub async fn delete_node(
        &self,
        request: DeleteNodeRequest,
        caller: Option<AuthenticatedNode>,
    ) -> Result<DeleteNodeResponse, Error> {
        let node = request.node.unwrap_or_default();
        let node_id = node.node_id;
        let deleted = self
            .stores
            .call(move |state, _| {
                authorize("DeleteNode", caller.as_ref(), state, Claim::Node(node_id))?;
                if node.anonymous || node_id == 0 {
                    return Ok(false);
                }
                state.delete_node(node_id)?;
                Ok(true)
            })
            .await?;
        if deleted {
            tracing::info!("Deleted node_id={node_id}");
            self.stores.events.publish(Topic::Node(Some(node_id)));
        }
        Ok(DeleteNodeResponse {})
    }

    /// Heartbeat: the node stays online for another `ping_interval` seconds; `success` is
    /// `false` for an unknown node.
    ///
    /// # Errors
    ///
    /// `ping_interval` outside (0, [`MAX_PING_INTERVAL_SECONDS`]]: `INVALID_ARGUMENT` (after
    /// the node-auth binding check); store failures.
    pub async fn ping(
        &self,
        request: PingRequest,
        caller: Option<AuthenticatedNode>,
    ) -> Result<PingResponse, Error> {
        let node_id = request.node.unwrap_or_default().node_id;
        let ping_interval = request.ping_interval;
        let success = self
            .stores
            .call(move |state, _| {
                authorize("Ping", caller.as_ref(), state, Claim::Node(node_id))?;
                let ping_interval = checked_ping_interval("Ping", ping_interval)?;
                Ok(state.acknowledge_ping(node_id, ping_interval)?)
            })
            .await?;
        Ok(PingResponse { success })
    }

    /// At most one undelivered, unexpired TaskIns for the node (`task_ids` is ignored, as in
    /// the reference).
    ///
    /// With a hold (asked for in the request metadata, else the server's default for callers
    /// that do not ask; see [`HoldRequest::bound`]), an empty pull waits
    /// for a TaskIns for its node, the node's deletion or shutdown, up to the bound. Waiting
    /// takes nothing from the store: only a look that returns marks a TaskIns delivered, so a
    /// client that gives up on a held pull loses no task.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn pull_task_ins(
        &self,
        request: PullTaskInsRequest,
        caller: Option<AuthenticatedNode>,
        hold: HoldRequest,
    ) -> Result<Held<PullTaskInsResponse>, Error> {
        let node = request.node.unwrap_or_default();
        let consumer = (!node.anonymous).then_some(node.node_id);
        let bound = hold.bound(self.unasked_hold);
        let subscription = bound.and_then(|_| self.stores.events.subscribe(Topic::Node(consumer)));
        let deadline = Instant::now() + bound.unwrap_or_default();
        let mut held = subscription.as_ref().and(bound);
        let mut woken = false;
        loop {
            let armed = subscription.as_ref().map(Subscription::arm);
            let caller = caller.clone();
            let (task_ins_list, gone) = self
                .stores
                .call(move |state, _| {
                    if !woken {
                        authorize(
                            "PullTaskIns",
                            caller.as_ref(),
                            state,
                            Claim::Node(node.node_id),
                        )?;
                    } else if let Some(id) = consumer {
                        // Authorized when the hold began. A wake-up may also be the node's
                        // deletion (its own DeleteNode at a clean shutdown) or lapse: the hold
                        // then ends empty, not as a refusal nor at its bound.
                        if !state.is_node_online(id)? {
                            return Ok((Vec::new(), true));
                        }
                    }
                    Ok((state.task_ins_for_node(consumer, 1)?, false))
                })
                .await?;
            let wake = match armed {
                Some(armed) if task_ins_list.is_empty() && !gone => armed.wait(deadline).await,
                _ => Wake::Expired,
            };
            match wake {
                Wake::Published => woken = true,
                Wake::Closed | Wake::Expired => {
                    if wake == Wake::Closed {
                        held = None;
                    }
                    return Ok(Held {
                        response: PullTaskInsResponse {
                            reconnect: None,
                            task_ins_list,
                        },
                        held,
                    });
                }
            }
        }
    }

    /// Stores the first TaskRes of the request while its run is running. A TaskRes the store
    /// rejects is answered with the result key `"None"`, not with an error.
    ///
    /// # Errors
    ///
    /// Empty list or unknown run: `UNKNOWN`; run not running: `PERMISSION_DENIED`; malformed
    /// `ancestry[0]`: `UNKNOWN` `badly formed hexadecimal UUID string`.
    pub async fn push_task_res(
        &self,
        request: PushTaskResRequest,
        caller: Option<AuthenticatedNode>,
    ) -> Result<PushTaskResResponse, Error> {
        let claim = Claim::producers(&request.task_res_list);
        let first = request.task_res_list.into_iter().next();
        let run_id = first.as_ref().map_or(0, |task_res| task_res.run_id);
        let task_id = self
            .stores
            .call(move |state, _| {
                authorize("PushTaskRes", caller.as_ref(), state, claim)?;
                let Some(task_res) = first else {
                    return Err(Error::Unknown(
                        "`task_res_list` must not be empty".to_owned(),
                    ));
                };
                guarded_run(state, task_res.run_id, Guard::RequireRunning)?;
                // The store stamps `pushed_at` itself before validating.
                Ok(state.store_task_res(task_res)?)
            })
            .await?;
        if task_id.is_some() {
            self.stores.events.publish(Topic::Run(run_id));
        }
        let key = task_id.unwrap_or_else(|| "None".to_owned());
        Ok(PushTaskResResponse {
            reconnect: Some(Reconnect {
                reconnect: RECONNECT_SECONDS,
            }),
            results: HashMap::from([(key, 0)]),
        })
    }

    /// The run's id, FAB id/version/hash and override config (no timestamps, no status); an
    /// empty response for an unknown run.
    ///
    /// # Errors
    ///
    /// Run not running: `PERMISSION_DENIED`.
    pub async fn get_run(
        &self,
        request: GetRunRequest,
        caller: Option<AuthenticatedNode>,
    ) -> Result<GetRunResponse, Error> {
        let run_id = request.run_id;
        let run = self
            .stores
            .call(move |state, _| {
                // One lookup serves both the binding check and the empty answer.
                let run_exists = state.run(run_id)?.is_some();
                authorize(
                    "GetRun",
                    caller.as_ref(),
                    state,
                    Claim::OnlineFor { run_exists },
                )?;
                if !run_exists {
                    return Ok(None);
                }
                guarded_run(state, run_id, Guard::RequireRunning).map(Some)
            })
            .await?;
        Ok(GetRunResponse {
            run: run.map(|run| Run {
                run_id: run.run_id,
                fab_id: run.fab_id,
                fab_version: run.fab_version,
                override_config: run.override_config,
                fab_hash: run.fab_hash,
                ..Run::default()
            }),
        })
    }

    /// The FAB with the requested hash, while the named run is running (the hash is not checked
    /// against the run, as in the reference).
    ///
    /// # Errors
    ///
    /// Unknown run or FAB: `UNKNOWN`; run not running: `PERMISSION_DENIED`.
    pub async fn get_fab(
        &self,
        request: GetFabRequest,
        caller: Option<AuthenticatedNode>,
    ) -> Result<GetFabResponse, Error> {
        let hash_str = request.hash_str;
        let run_id = request.run_id;
        let node_id = request.node.unwrap_or_default().node_id;
        self.stores
            .call_blocking(move |state, ffs| {
                authorize("GetFab", caller.as_ref(), state, Claim::Node(node_id))?;
                guarded_run(state, run_id, Guard::RequireRunning)?;
                let content = fab_content(ffs, &hash_str)?;
                Ok(GetFabResponse {
                    fab: Some(Fab { hash_str, content }),
                })
            })
            .await
    }
}

/// The tonic adapter over a shared [`FleetHandler`].
#[derive(Debug, Clone)]
pub struct FleetService {
    handler: Arc<FleetHandler>,
}

impl FleetService {
    /// Serves `handler`.
    pub fn new(handler: Arc<FleetHandler>) -> Self {
        Self { handler }
    }
}

/// Splits a tonic request into the message (the auth layer's decode, if it made one) and the
/// identity the auth layer attached, if any.
fn split<T: Send + Sync + 'static>(mut request: Request<T>) -> (T, Option<AuthenticatedNode>) {
    let extensions = request.extensions_mut();
    let node = extensions.remove::<AuthenticatedNode>();
    match extensions.remove::<Decoded<T>>() {
        Some(Decoded(message)) => (message, node),
        None => (request.into_inner(), node),
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn create_node(
        &self,
        request: Request<CreateNodeRequest>,
    ) -> Result<Response<CreateNodeResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.create_node(request, node).await)
    }

    async fn delete_node(
        &self,
        request: Request<DeleteNodeRequest>,
    ) -> Result<Response<DeleteNodeResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.delete_node(request, node).await)
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.ping(request, node).await)
    }

    async fn pull_task_ins(
        &self,
        request: Request<PullTaskInsRequest>,
    ) -> Result<Response<PullTaskInsResponse>, Status> {
        let hold = HoldRequest::from_metadata(request.metadata());
        let (request, node) = split(request);
        respond_held(self.handler.pull_task_ins(request, node, hold).await)
    }

    async fn push_task_res(
        &self,
        request: Request<PushTaskResRequest>,
    ) -> Result<Response<PushTaskResResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.push_task_res(request, node).await)
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.get_run(request, node).await)
    }

    async fn get_fab(
        &self,
        request: Request<GetFabRequest>,
    ) -> Result<Response<GetFabResponse>, Status> {
        let (request, node) = split(request);
        respond(self.handler.get_fab(request, node).await)
    }
}
