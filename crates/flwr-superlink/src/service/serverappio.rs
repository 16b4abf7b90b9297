//! The ServerAppIo API (`flwr.proto.ServerAppIo`, BEHAVIOR.md §4.3): how a ServerApp process
//! (`flwr-serverapp`) takes a pending run, talks to the nodes through TaskIns/TaskRes, reports
//! its status and uploads its logs. Always plaintext; never node-authenticated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flwr_proto::server_app_io_server::ServerAppIo;
use flwr_proto::{
    ConfigsRecord, CreateRunRequest, CreateRunResponse, Fab, GetFabRequest, GetFabResponse,
    GetNodesRequest, GetNodesResponse, GetRunRequest, GetRunResponse, GetRunStatusRequest,
    GetRunStatusResponse, Node, PullServerAppInputsRequest, PullServerAppInputsResponse,
    PullTaskResRequest, PullTaskResResponse, PushLogsRequest, PushLogsResponse,
    PushServerAppOutputsRequest, PushServerAppOutputsResponse, PushTaskInsRequest,
    PushTaskInsResponse, RunStatus, UpdateRunStatusRequest, UpdateRunStatusResponse,
};
use flwr_state::lifecycle::{FINISHED, STARTING};
use flwr_state::{Guard, PushTaskInsError};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::service::{
    fab_content, guarded_run, respond, respond_held, status_of, Held, HoldRequest, Stores,
};
use crate::wakeups::{Topic, Wake};

/// The ServerAppIo service.
#[derive(Debug)]
pub struct ServerAppIoService {
    stores: Stores,
    /// Serialises `PullServerAppInputs`, like the reference's lock, so two ServerApp processes
    /// polling at once see a consistent "first pending run". (The store's pending → starting
    /// transition is atomic on its own; the lock keeps the losing caller from reporting a
    /// spurious "Failed to start run".) An async mutex: the guard is held across the store call.
    pull_inputs: Mutex<()>,
    /// How long to hold a PullTaskRes that did not ask for a hold (`--hold-pulls`).
    unasked_hold: Option<Duration>,
}

impl ServerAppIoService {
    /// A service over the shared stores that holds only the pulls that ask for it.
    pub fn new(stores: Stores) -> Self {
        Self {
            stores,
            pull_inputs: Mutex::new(()),
            unasked_hold: None,
        }
    }

    /// Also holds pulls that do not ask, for up to `hold` (`--hold-pulls`).
    #[must_use]
    pub fn with_unasked_hold(mut self, hold: Option<Duration>) -> Self {
        self.unasked_hold = hold;
        self
    }

    async fn inner_get_nodes(&self, request: GetNodesRequest) -> Result<GetNodesResponse, Error> {
        let run_id = request.run_id;
        let node_ids = self
            .stores
            .call(move |state, _| {
                guarded_run(state, run_id, Guard::RequireRunning)?;
                Ok(state.online_nodes(run_id)?)
            })
            .await?;
        let nodes = node_ids
            .into_iter()
            .map(|node_id| Node {
                node_id,
                anonymous: false,
            })
            .collect();
        Ok(GetNodesResponse { nodes })
    }

    async fn inner_create_run(
        &self,
        request: CreateRunRequest,
    ) -> Result<CreateRunResponse, Error> {
        let run_id = self
            .stores
            .call_blocking(move |state, ffs| {
                let fab_hash = match request.fab {
                    None => String::new(),
                    Some(fab) => {
                        let hash = ffs
                            .put(&fab.content)
                            .map_err(|e| Error::Unknown(format!("FAB storage failed: {e}")))?;
                        if hash != fab.hash_str {
                            return Err(Error::Unknown(format!(
                                "Malformed CreateRunRequest: FAB ({}) hash from request doesn't \
                                 match contents",
                                fab.hash_str
                            )));
                        }
                        hash
                    }
                };
                Ok(state.create_run(
                    &request.fab_id,
                    &request.fab_version,
                    &fab_hash,
                    request.override_config,
                    ConfigsRecord::default(),
                    None,
                )?)
            })
            .await?;
        tracing::info!(run_id, "run created through ServerAppIo");
        Ok(CreateRunResponse { run_id })
    }

    async fn inner_push_task_ins(
        &self,
        request: PushTaskInsRequest,
    ) -> Result<PushTaskInsResponse, Error> {
        let run_id = request.run_id;
        let task_ins_list = request.task_ins_list;
        let task_ids = self
            .stores
            .call(move |state, _| {
                guarded_run(state, run_id, Guard::RequireRunning)?;
                let consumers: Vec<Option<u64>> = task_ins_list
                    .iter()
                    .map(|task_ins| {
                        task_ins
                            .task
                            .as_ref()
                            .and_then(|task| task.consumer)
                            .and_then(|node| (!node.anonymous).then_some(node.node_id))
                    })
                    .collect();
                let outcomes = match state.store_task_ins(run_id, task_ins_list) {
                    Ok(outcomes) => outcomes,
                    Err(PushTaskInsError::Rejected(reason)) => {
                        return Err(Error::Unknown(format!(
                            "Malformed PushTaskInsRequest: {reason}"
                        )))
                    }
                    Err(PushTaskInsError::State(error)) => return Err(error.into()),
                    Err(error) => return Err(Error::Unknown(error.to_string())),
                };
                // The reference answers a dropped TaskIns with an empty id.
                let mut task_ids = Vec::with_capacity(outcomes.len());
                let mut woken = Vec::with_capacity(outcomes.len());
                for (outcome, consumer) in outcomes.into_iter().zip(consumers) {
                    match outcome {
                        Ok(task_id) => {
                            task_ids.push(task_id);
                            woken.push(consumer);
                        }
                        Err(_dropped) => task_ids.push(String::new()),
                    }
                }
                Ok((task_ids, woken))
            })
            .await?;
        let (task_ids, consumers) = task_ids;
        for consumer in consumers {
            self.stores.events.publish(Topic::Node(consumer));
        }
        Ok(PushTaskInsResponse { task_ids })
    }

    /// The replies to the asked TaskIns. With a hold ([`HoldRequest::bound`]), waits until every asked TaskIns has its reply, the run stops running,
    /// the bound or shutdown, then answers as an unheld pull would at that moment.
    /// `PullTaskRes` without tonic: the replies, held as asked (the auth-free shared-response
    /// path of [`crate::shared_response::SharedPullTaskRes`] calls it too).
    pub(crate) async fn pull_task_res_held(
        &self,
        request: PullTaskResRequest,
        hold: HoldRequest,
    ) -> Result<Held<PullTaskResResponse>, Error> {
        let run_id = request.run_id;
        let task_ids = Arc::new(request.task_ids);
        let bound = hold.bound(self.unasked_hold);
        let subscription = bound.and_then(|_| self.stores.events.subscribe(Topic::Run(run_id)));
        let mut held = subscription.as_ref().and(bound);
        if let Some(subscription) = &subscription {
            let deadline = Instant::now() + bound.unwrap_or_default();
            loop {
                let armed = subscription.arm();
                let ids = Arc::clone(&task_ids);
                let waiting = self
                    .stores
                    .call(move |state, _| {
                        // A run that stopped ends the hold; the pull below reports it.
                        if guarded_run(state, run_id, Guard::RequireRunning).is_err() {
                            return Ok(0);
                        }
                        Ok(state.replies_pending(&ids)?)
                    })
                    .await?;
                if waiting == 0 {
                    break;
                }
                match armed.wait(deadline).await {
                    Wake::Published => {}
                    Wake::Expired => break,
                    Wake::Closed => {
                        held = None;
                        break;
                    }
                }
            }
        }
        let task_res_list = self
            .stores
            .call(move |state, _| {
                guarded_run(state, run_id, Guard::RequireRunning)?;
                // The store deletes every TaskIns/TaskRes pair it returns.
                Ok(state.task_res(&task_ids)?)
            })
            .await?;
        // As in the reference, this also refuses the synthetic "message unavailable" replies,
        // which carry run id 0.
        if task_res_list
            .iter()
            .any(|task_res| task_res.run_id != run_id)
        {
            return Err(Error::Unknown(
                "Malformed PullTaskResRequest: `task_res` has mismatched `run_id`".to_owned(),
            ));
        }
        Ok(Held {
            response: PullTaskResResponse { task_res_list },
            held,
        })
    }

    async fn inner_get_run(&self, request: GetRunRequest) -> Result<GetRunResponse, Error> {
        let run_id = request.run_id;
        let run = self
            .stores
            .call(move |state, _| Ok(state.run(run_id)?))
            .await?;
        Ok(GetRunResponse { run })
    }

    async fn inner_get_fab(&self, request: GetFabRequest) -> Result<GetFabResponse, Error> {
        let hash_str = request.hash_str;
        self.stores
            .call_blocking(move |_, ffs| {
                let content = fab_content(ffs, &hash_str)?;
                Ok(GetFabResponse {
                    fab: Some(Fab { hash_str, content }),
                })
            })
            .await
    }

    async fn inner_pull_server_app_inputs(
        &self,
        _request: PullServerAppInputsRequest,
    ) -> Result<PullServerAppInputsResponse, Error> {
        let _serialised = self.pull_inputs.lock().await;
        let response = self
            .stores
            .call_blocking(|state, ffs| {
                let Some(run_id) = state.pending_run_id()? else {
                    return Ok(PullServerAppInputsResponse::default());
                };
                let failed = || Error::Unknown(format!("Failed to start run {run_id}"));
                let context = state.serverapp_context(run_id)?.ok_or_else(failed)?;
                let run = state.run(run_id)?.ok_or_else(failed)?;
                if run.fab_hash.is_empty() {
                    return Err(failed());
                }
                let content = ffs.get(&run.fab_hash).ok().flatten().ok_or_else(failed)?;
                let starting = RunStatus {
                    status: STARTING.to_owned(),
                    ..RunStatus::default()
                };
                if !state.update_run_status(run_id, starting)? {
                    return Err(failed());
                }
                // Re-read so the ServerApp sees the run as it is now: `starting`.
                let run = state.run(run_id)?.ok_or_else(failed)?;
                Ok(PullServerAppInputsResponse {
                    context: Some(context),
                    fab: Some(Fab {
                        hash_str: run.fab_hash.clone(),
                        content,
                    }),
                    run: Some(run),
                })
            })
            .await?;
        if let Some(run) = &response.run {
            tracing::info!(run_id = run.run_id, "Starting run {}", run.run_id);
        }
        Ok(response)
    }

    async fn inner_push_server_app_outputs(
        &self,
        request: PushServerAppOutputsRequest,
    ) -> Result<PushServerAppOutputsResponse, Error> {
        let run_id = request.run_id;
        let context = request.context.unwrap_or_default();
        self.stores
            .call(move |state, _| {
                guarded_run(state, run_id, Guard::RequireRunning)?;
                Ok(state.set_serverapp_context(run_id, context)?)
            })
            .await?;
        Ok(PushServerAppOutputsResponse {})
    }

    async fn inner_update_run_status(
        &self,
        request: UpdateRunStatusRequest,
    ) -> Result<UpdateRunStatusResponse, Error> {
        let run_id = request.run_id;
        let new_status = request.run_status.unwrap_or_default();
        let requested = new_status.clone();
        let applied = self
            .stores
            .call(move |state, _| {
                guarded_run(state, run_id, Guard::RejectFinished)?;
                Ok(state.update_run_status(run_id, new_status)?)
            })
            .await?;
        if applied {
            // A held PullTaskRes of a run that just finished ends now.
            self.stores.events.publish(Topic::Run(run_id));
        }
        if !applied {
            // The reference logs refused transitions and answers OK.
            tracing::debug!(run_id, ?requested, "run status update refused");
        } else if requested.status == FINISHED {
            tracing::info!(
                run_id,
                sub_status = %requested.sub_status,
                details = %requested.details,
                "run finished"
            );
        }
        Ok(UpdateRunStatusResponse {})
    }

    async fn inner_get_run_status(
        &self,
        request: GetRunStatusRequest,
    ) -> Result<GetRunStatusResponse, Error> {
        let run_ids = request.run_ids;
        let run_status_dict = self
            .stores
            .call(move |state, _| {
                let mut statuses = HashMap::new();
                for run_id in run_ids {
                    if let Some(run) = state.run(run_id)? {
                        statuses.insert(run_id, status_of(&run));
                    }
                }
                Ok(statuses)
            })
            .await?;
        Ok(GetRunStatusResponse { run_status_dict })
    }

    async fn inner_push_logs(&self, request: PushLogsRequest) -> Result<PushLogsResponse, Error> {
        let run_id = request.run_id;
        let merged = request.logs.concat();
        self.stores
            .call(move |state, _| Ok(state.add_serverapp_log(run_id, &merged)?))
            .await?;
        Ok(PushLogsResponse {})
    }
}

#[tonic::async_trait]
impl ServerAppIo for ServerAppIoService {
    async fn create_run(
        &self,
        request: Request<CreateRunRequest>,
    ) -> Result<Response<CreateRunResponse>, Status> {
        respond(self.inner_create_run(request.into_inner()).await)
    }

    async fn get_nodes(
        &self,
        request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        respond(self.inner_get_nodes(request.into_inner()).await)
    }

    async fn push_task_ins(
        &self,
        request: Request<PushTaskInsRequest>,
    ) -> Result<Response<PushTaskInsResponse>, Status> {
        respond(self.inner_push_task_ins(request.into_inner()).await)
    }

    async fn pull_task_res(
        &self,
        request: Request<PullTaskResRequest>,
    ) -> Result<Response<PullTaskResResponse>, Status> {
        let hold = HoldRequest::from_metadata(request.metadata());
        respond_held(self.pull_task_res_held(request.into_inner(), hold).await)
    }

    async fn get_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<GetRunResponse>, Status> {
        respond(self.inner_get_run(request.into_inner()).await)
    }

    async fn get_fab(
        &self,
        request: Request<GetFabRequest>,
    ) -> Result<Response<GetFabResponse>, Status> {
        respond(self.inner_get_fab(request.into_inner()).await)
    }

    async fn pull_server_app_inputs(
        &self,
        request: Request<PullServerAppInputsRequest>,
    ) -> Result<Response<PullServerAppInputsResponse>, Status> {
        respond(
            self.inner_pull_server_app_inputs(request.into_inner())
                .await,
        )
    }

    async fn push_server_app_outputs(
        &self,
        request: Request<PushServerAppOutputsRequest>,
    ) -> Result<Response<PushServerAppOutputsResponse>, Status> {
        respond(
            self.inner_push_server_app_outputs(request.into_inner())
                .await,
        )
    }

    async fn update_run_status(
        &self,
        request: Request<UpdateRunStatusRequest>,
    ) -> Result<Response<UpdateRunStatusResponse>, Status> {
        respond(self.inner_update_run_status(request.into_inner()).await)
    }

    async fn get_run_status(
        &self,
        request: Request<GetRunStatusRequest>,
    ) -> Result<Response<GetRunStatusResponse>, Status> {
        respond(self.inner_get_run_status(request.into_inner()).await)
    }

    async fn push_logs(
        &self,
        request: Request<PushLogsRequest>,
    ) -> Result<Response<PushLogsResponse>, Status> {
        respond(self.inner_push_logs(request.into_inner()).await)
    }
}
