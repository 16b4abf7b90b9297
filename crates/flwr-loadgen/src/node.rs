//! One simulated SuperNode after registration: its node id, its connection and its signed
//! requests, and the calls it makes.

use std::sync::Arc;
use std::time::Duration;

use flwr_proto::fleet_client::FleetClient;
use flwr_proto::{PingRequest, PullTaskInsRequest, PushTaskResRequest, TaskIns};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::config::Rpc;
use crate::recorder::Outcome;
use crate::signed::{self, NodeAuth, PushTemplate, SignError, Signed};

/// A registered node.
#[derive(Clone, Debug)]
pub(crate) struct SimNode {
    /// Position among the test's nodes (`client_credentials_{index + 1}`).
    pub(crate) index: usize,
    /// The id CreateNode returned.
    pub(crate) node_id: u64,
    client: FleetClient<Channel>,
    auth: Option<NodeAuth>,
    ping: Signed<PingRequest>,
    pull: Signed<PullTaskInsRequest>,
    /// Set by [`SimNode::sign_push`] before a closed loop of PushTaskRes.
    push: Option<Push>,
}

/// A PullTaskIns answer in dispatch mode.
#[derive(Debug)]
pub(crate) struct Pulled {
    /// The TaskIns it carried (at most one from a 1.14 SuperLink).
    pub(crate) task_ins_list: Vec<TaskIns>,
    /// Whether the reply carried [`flwr_core::hold::REPLY_HEADER`]: the SuperLink held the
    /// pull, so an empty answer means nothing arrived and the node may pull again at once.
    pub(crate) held: bool,
}

/// A node's PushTaskRes: the shared template and the node's token over its body.
#[derive(Clone, Debug)]
struct Push {
    template: Arc<PushTemplate>,
    token: Option<MetadataValue<Ascii>>,
}

impl SimNode {
    /// Node `index` with id `node_id` on `client`, its Ping and PullTaskIns signed.
    pub(crate) fn new(
        index: usize,
        node_id: u64,
        client: FleetClient<Channel>,
        auth: Option<NodeAuth>,
    ) -> Result<Self, SignError> {
        let ping = Signed::new(signed::ping(node_id), auth.as_ref())?;
        let pull = Signed::new(signed::pull(node_id), auth.as_ref())?;
        Ok(Self {
            index,
            node_id,
            client,
            auth,
            ping,
            pull,
            push: None,
        })
    }

    /// The `auth-token` of this node's PushTaskRes from `template` (a canonical encoding and
    /// an HMAC over the whole payload, so callers compute it for all nodes on every core
    /// before the loop starts), or `None` without authentication.
    pub(crate) fn push_token(
        &self,
        template: &PushTemplate,
    ) -> Result<Option<MetadataValue<Ascii>>, SignError> {
        self.auth
            .as_ref()
            .map(|auth| signed::token(&auth.secret, &template.body(self.node_id)))
            .transpose()
    }

    /// Prepares PushTaskRes calls with `template` and this node's [`SimNode::push_token`].
    pub(crate) fn set_push(
        &mut self,
        template: Arc<PushTemplate>,
        token: Option<MetadataValue<Ascii>>,
    ) {
        self.push = Some(Push { template, token });
    }

    /// Sends one PullTaskIns asking for `hold` (the [`flwr_core::hold::REQUEST_HEADER`] value,
    /// none without), failing with `DEADLINE_EXCEEDED` after `deadline`; a failure is the
    /// [`Outcome`] to record.
    /// Signs `body` now and sends it: the results map of the answer, or why it failed. For
    /// bodies that change per call (a round's reply), unlike the prepared `--rpc push`.
    pub(crate) async fn push_signed(
        &self,
        body: PushTaskResRequest,
    ) -> Result<std::collections::HashMap<String, u32>, String> {
        let token = match &self.auth {
            Some(auth) => Some(signed::token(&auth.secret, &body).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut request = Request::new(body);
        signed::attach(
            &mut request,
            self.auth.as_ref().map(|auth| &auth.public_key),
            token.as_ref(),
        );
        match self.client.clone().push_task_res(request).await {
            Ok(response) => Ok(response.into_inner().results),
            Err(status) => {
                let status = flwr_proto::transport_status(status);
                Err(format!("{:?}: {}", status.code(), status.message()))
            }
        }
    }

    pub(crate) async fn pull_held(
        &self,
        hold: Option<&MetadataValue<Ascii>>,
        deadline: Duration,
    ) -> Result<Pulled, Outcome> {
        let mut request = self.pull.request();
        if let Some(value) = hold {
            request
                .metadata_mut()
                .insert(flwr_core::hold::REQUEST_HEADER, value.clone());
        }
        let mut client = self.client.clone();
        match tokio::time::timeout(deadline, client.pull_task_ins(request)).await {
            Ok(Ok(response)) => {
                let held = response
                    .metadata()
                    .contains_key(flwr_core::hold::REPLY_HEADER);
                Ok(Pulled {
                    task_ins_list: response.into_inner().task_ins_list,
                    held,
                })
            }
            Ok(Err(status)) => {
                let status = flwr_proto::transport_status(status);
                Err(Outcome::Failed(status.code(), status.message().to_owned()))
            }
            Err(_) => Err(Outcome::Failed(
                Code::DeadlineExceeded,
                format!("no answer within {deadline:?}"),
            )),
        }
    }

    /// Sends one `rpc`, failing with `DEADLINE_EXCEEDED` after `deadline`.
    pub(crate) async fn call(&self, rpc: Rpc, deadline: Duration) -> Outcome {
        let mut client = self.client.clone();
        let call = async {
            match rpc {
                Rpc::Ping => client.ping(self.ping.request()).await.map(|response| {
                    if response.into_inner().success {
                        Outcome::Answered
                    } else {
                        Outcome::PingUnsuccessful
                    }
                }),
                Rpc::Pull => client
                    .pull_task_ins(self.pull.request())
                    .await
                    .map(|response| {
                        if response.into_inner().task_ins_list.is_empty() {
                            Outcome::Answered
                        } else {
                            Outcome::TaskInsReceived
                        }
                    }),
                Rpc::Push => {
                    let Some(push) = &self.push else {
                        return Ok(Outcome::Failed(
                            Code::Internal,
                            "PushTaskRes was not prepared".to_owned(),
                        ));
                    };
                    let mut request = Request::new(push.template.body(self.node_id));
                    signed::attach(
                        &mut request,
                        self.auth.as_ref().map(|auth| &auth.public_key),
                        push.token.as_ref(),
                    );
                    client.push_task_res(request).await.map(|response| {
                        // The SuperLink answers `{"None": 0}` when it did not store the TaskRes
                        // (here: always, as its TaskIns does not exist).
                        if response.into_inner().results.contains_key("None") {
                            Outcome::PushNotStored
                        } else {
                            Outcome::Answered
                        }
                    })
                }
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(status)) => {
                // A connection lost mid-call is UNAVAILABLE, as for a real SuperNode.
                let status = flwr_proto::transport_status(status);
                Outcome::Failed(status.code(), status.message().to_owned())
            }
            Err(_) => Outcome::Failed(
                Code::DeadlineExceeded,
                format!("no answer within {deadline:?}"),
            ),
        }
    }
}
