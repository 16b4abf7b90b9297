//! Registration: every node sends CreateNode (ping_interval 30, with its `public-key` header),
//! at most `--register-concurrency` at a time, so tens of thousands of nodes arrive as a ramp
//! rather than a stampede of TLS handshakes.

use std::sync::Arc;
use std::time::Duration;

use flwr_auth::header::PUBLIC_KEY_HEADER;
use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_proto::CreateNodeRequest;
use futures::StreamExt as _;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Request};

use crate::connection::Connections;
use crate::node::SimNode;
use crate::recorder::{Call, Outcome, Recorder};
use crate::signed::{self, NodeAuth};

/// A node's key material as registration needs it.
pub(crate) struct Identity {
    /// Its `public-key` header value.
    pub(crate) public_key: MetadataValue<Ascii>,
    /// Its private key, for a SuperLink key that differs from the expected one.
    pub(crate) private: PrivateKey,
    /// Its secret with the expected SuperLink key, derived ahead of registration.
    pub(crate) secret: Option<SharedSecret>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and secrets never go to logs.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// Everything registration of one test shares.
#[derive(Debug)]
pub(crate) struct Registrar {
    /// The test's connections.
    pub(crate) connections: Arc<Connections>,
    /// Node keys, `None` without authentication.
    pub(crate) identities: Option<Vec<Identity>>,
    /// The `public-key` header value the SuperLink is expected to answer with (from
    /// `server_credentials.pub`), for which [`Identity::secret`] was derived.
    pub(crate) expected_superlink: Option<String>,
    /// Nodes per connection.
    pub(crate) nodes_per_connection: usize,
    /// Deadline of one CreateNode.
    pub(crate) call_timeout: Duration,
    /// CreateNode latencies and failures.
    pub(crate) recorder: Recorder,
}

impl Registrar {
    /// Registers nodes `0..count`, `concurrency` at a time, until `deadline`; hands each
    /// registered node to `on_node` as soon as it is registered.
    pub(crate) async fn register_all(
        &self,
        count: usize,
        concurrency: usize,
        deadline: Instant,
        mut on_node: impl FnMut(&SimNode),
    ) -> Vec<SimNode> {
        let mut registrations = futures::stream::iter(0..count)
            .map(|index| self.register(index))
            .buffer_unordered(concurrency);
        let mut nodes = Vec::with_capacity(count);
        // Past the deadline the stream is dropped, which cancels the CreateNodes in flight.
        while let Ok(Some(registered)) =
            tokio::time::timeout_at(deadline, registrations.next()).await
        {
            if let Some(node) = registered {
                on_node(&node);
                nodes.push(node);
            }
        }
        nodes.sort_by_key(|node| node.index);
        nodes
    }

    /// Registers node `index`; a failure is recorded and gives `None`.
    async fn register(&self, index: usize) -> Option<SimNode> {
        let started = Instant::now();
        let fail = |outcome| {
            self.recorder
                .record(index, Call::CreateNode, started.elapsed(), outcome);
            None
        };
        let client = match self
            .connections
            .client(index / self.nodes_per_connection)
            .await
        {
            Ok(client) => client,
            Err(status) => {
                return fail(Outcome::Failed(status.code(), status.message().to_owned()))
            }
        };
        let identity = self
            .identities
            .as_ref()
            .and_then(|identities| identities.get(index));
        let mut request = Request::new(CreateNodeRequest {
            ping_interval: signed::PING_INTERVAL_SECONDS,
        });
        signed::attach(&mut request, identity.map(|id| &id.public_key), None);
        let response = match tokio::time::timeout(
            self.call_timeout,
            client.clone().create_node(request),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => {
                return fail(Outcome::Failed(status.code(), status.message().to_owned()))
            }
            Err(_) => {
                return fail(Outcome::Failed(
                    Code::DeadlineExceeded,
                    format!("no answer within {:?}", self.call_timeout),
                ))
            }
        };
        let latency = started.elapsed();
        let superlink_key = response
            .metadata()
            .get(PUBLIC_KEY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // The reference SuperNode reuses whatever node it gets, id 0 included.
        let node_id = response.into_inner().node.map_or(0, |node| node.node_id);
        let auth = match identity {
            None => None,
            Some(identity) => match self.auth(identity, superlink_key.as_deref()) {
                Ok(auth) => Some(auth),
                Err(outcome) => return fail(outcome),
            },
        };
        match SimNode::new(index, node_id, client, auth) {
            Ok(node) => {
                self.recorder
                    .record(index, Call::CreateNode, latency, Outcome::Answered);
                Some(node)
            }
            Err(error) => fail(Outcome::Local("SIGNING", error.to_string())),
        }
    }

    /// The node's signing material for the SuperLink key the CreateNode response carried
    /// (AUTH.md §5.3: the secret is derived from that key, not from any local file).
    fn auth(&self, identity: &Identity, superlink_key: Option<&str>) -> Result<NodeAuth, Outcome> {
        let public_key = identity.public_key.clone();
        let precomputed = identity.secret.clone();
        let secret = match (superlink_key, precomputed) {
            (Some(key), Some(secret)) if Some(key) == self.expected_superlink.as_deref() => secret,
            (Some(key), _) => PublicKey::from_header(key)
                .and_then(|superlink| SharedSecret::derive(&identity.private, &superlink))
                .map_err(|error| {
                    Outcome::Local(
                        "BAD_SUPERLINK_KEY",
                        format!("the CreateNode response's public-key header: {error}"),
                    )
                })?,
            // A SuperLink without node authentication sends no key and ignores the headers;
            // signing with the keys directory's SuperLink key keeps the requests well-formed.
            (None, Some(secret)) => secret,
            (None, None) => {
                return Err(Outcome::Local(
                    "NO_SUPERLINK_KEY",
                    "the CreateNode response carries no public-key header, so requests cannot \
                     be signed (is the SuperLink running without node authentication? then \
                     pass --no-auth)"
                        .to_owned(),
                ))
            }
        };
        Ok(NodeAuth { public_key, secret })
    }
}
