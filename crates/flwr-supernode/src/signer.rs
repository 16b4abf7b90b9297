//! The seam where node authentication signs Fleet requests (AUTH.md §4, §5.3).
//!
//! Every Fleet request passes through [`crate::fleet::Fleet`], which asks its [`RequestSigner`]
//! for metadata to attach, handing it the request's canonical bytes
//! (`flwr_proto::canonical::encode`, the bytes the reference HMACs). The signer also sees the
//! response metadata of `CreateNode`, where an authenticating SuperLink sends its public key.
//!
//! [`Unsigned`] is the default: no metadata, no canonical encoding. An ECDH/HMAC signer built on
//! `flwr-auth` plugs in here without touching the Fleet client.

use std::fmt;

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
