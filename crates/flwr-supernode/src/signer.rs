//! The seam where node authentication signs Fleet requests (AUTH.md §4, §5.3).
//!
//! Every Fleet request passes through [`crate::fleet::Fleet`], which asks its [`RequestSigner`]
//! for metadata to attach, handing it the request's canonical bytes
//! (`flwr_proto::canonical::encode`, the bytes the reference HMACs). The signer also sees the
//! response metadata of `CreateNode`, where an authenticating SuperLink sends its public key.
//!
//! [`Unsigned`] is the default: no metadata, no canonical encoding. [`NodeAuth`] is the
//! reference's node authentication (AUTH.md §5.3): `public-key` on every call, `auth-token` on
//! every call but `CreateNode`, keyed by the secret derived from the SuperLink key that the
//! `CreateNode` response carries.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use flwr_auth::header::{AUTH_TOKEN_HEADER, PUBLIC_KEY_HEADER};
use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use tonic::metadata::MetadataMap;

/// The Fleet RPCs, named as in `flwr.proto.Fleet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `CreateNode`.
    CreateNode,
    /// `DeleteNode`.
    DeleteNode,
    /// `GetFab`.
    GetFab,
    /// `GetRun`.
    GetRun,
    /// `Ping`.
    Ping,
    /// `PullTaskIns`.
    PullTaskIns,
    /// `PushTaskRes`.
    PushTaskRes,
}

impl fmt::Display for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateNode => "CreateNode",
            Self::DeleteNode => "DeleteNode",
            Self::GetFab => "GetFab",
            Self::GetRun => "GetRun",
            Self::Ping => "Ping",
            Self::PullTaskIns => "PullTaskIns",
            Self::PushTaskRes => "PushTaskRes",
        })
    }
}

/// Why a request could not be signed. The request is then not sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign {rpc} request: {reason}")]
pub struct SignError {
    /// The RPC being signed.
    pub rpc: Rpc,
    /// What went wrong (e.g. no shared secret because `CreateNode` carried no server key).
    pub reason: String,
}

/// Attaches authentication metadata to Fleet requests.
pub trait RequestSigner: Send + Sync + fmt::Debug {
    /// Whether [`RequestSigner::sign`] reads the canonical bytes; when `false` the Fleet client
    /// skips the canonical encoding.
    fn needs_canonical(&self) -> bool;

    /// ASCII metadata (`name`, `value`) to attach to a `rpc` request whose canonical encoding is
    /// `canonical` (empty when [`RequestSigner::needs_canonical`] is `false`).
    ///
    /// # Errors
    ///
    /// When the request cannot be signed; the Fleet client then fails the call locally.
    fn sign(&self, rpc: Rpc, canonical: &[u8]) -> Result<Vec<(&'static str, String)>, SignError>;

    /// Sees the initial metadata of a successful `CreateNode` response.
    fn observe_create_node(&self, _response: &MetadataMap) {}
}

/// No authentication: attaches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unsigned;

impl RequestSigner for Unsigned {
    fn needs_canonical(&self) -> bool {
        false
    }

    fn sign(&self, _rpc: Rpc, _canonical: &[u8]) -> Result<Vec<(&'static str, String)>, SignError> {
        Ok(Vec::new())
    }
}

/// Node authentication with an EC key pair (AUTH.md §4, §5).
pub struct NodeAuth {
    private: PrivateKey,
    public_header: String,
    // A std mutex: set once per `CreateNode`, read per request, never held across an await.
    secret: Mutex<Option<SharedSecret>>,
}

impl fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and the secret never go to logs.
        f.debug_struct("NodeAuth").finish_non_exhaustive()
    }
}

impl NodeAuth {
    /// A signer for the node key pair. Like the reference, the pair is not checked for
    /// consistency: the SuperLink sees the public key and derives its secret from it.
    pub fn new(private: PrivateKey, public: &PublicKey) -> Self {
        Self {
            private,
            public_header: public.header_value(),
            secret: Mutex::new(None),
        }
    }

    /// Whether a shared secret has been derived (after a `CreateNode` that carried a key).
    pub fn has_secret(&self) -> bool {
        self.secret
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl RequestSigner for NodeAuth {
    fn needs_canonical(&self) -> bool {
        true
    }

    fn sign(&self, rpc: Rpc, canonical: &[u8]) -> Result<Vec<(&'static str, String)>, SignError> {
        let mut headers = vec![(PUBLIC_KEY_HEADER, self.public_header.clone())];
        if rpc == Rpc::CreateNode {
            return Ok(headers);
        }
        let secret = self.secret.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(secret) = secret.as_ref() else {
            return Err(SignError {
                rpc,
                reason: "Failure to compute hmac: the SuperLink sent no public key at CreateNode"
                    .into(),
            });
        };
        headers.push((AUTH_TOKEN_HEADER, secret.sign(canonical).header_value()));
        Ok(headers)
    }

    fn observe_create_node(&self, response: &MetadataMap) {
        let header = response
            .get(PUBLIC_KEY_HEADER)
            .and_then(|value| value.to_str().ok());
        let Some(header) = header else {
            tracing::warn!("Can't get server public key, SuperLink may be offline");
            return;
        };
        let derived = PublicKey::from_header(header)
            .and_then(|server| SharedSecret::derive(&self.private, &server));
        match derived {
            Ok(secret) => {
                *self.secret.lock().unwrap_or_else(PoisonError::into_inner) = Some(secret);
            }
            Err(error) => tracing::error!("Cannot derive the node-auth secret: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use flwr_auth::{generate_keypair, Curve};
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn unsigned_attaches_nothing() {
        assert!(!Unsigned.needs_canonical());
        assert!(Unsigned.sign(Rpc::Ping, b"x").unwrap().is_empty());
    }

    #[test]
    fn node_auth_headers_follow_the_reference() {
        let (node, node_public) = generate_keypair(Curve::P384);
        let (link, link_public) = generate_keypair(Curve::P384);
        let signer = NodeAuth::new(node, &node_public);
        let headers = signer.sign(Rpc::CreateNode, b"").unwrap();
        assert_eq!(headers, vec![("public-key", node_public.header_value())]);
        // Before CreateNode returned a key, nothing else can be signed.
        assert!(signer.sign(Rpc::Ping, b"req").is_err());
        signer.observe_create_node(&MetadataMap::new());
        assert!(!signer.has_secret());

        let mut response = MetadataMap::new();
        let value = MetadataValue::try_from(link_public.header_value().as_str()).unwrap();
        response.insert("public-key", value);
        signer.observe_create_node(&response);
        assert!(signer.has_secret());
        let headers = signer.sign(Rpc::PullTaskIns, b"request bytes").unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].0, "auth-token");
        // The SuperLink's side verifies the token over the same bytes.
        let secret = SharedSecret::derive(&link, &node_public).unwrap();
        let mac = flwr_auth::header::decode(&headers[1].1).unwrap();
        assert!(secret.verify(b"request bytes", &mac));
        assert!(!secret.verify(b"other bytes", &mac));
    }
}
