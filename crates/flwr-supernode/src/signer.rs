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
//!
//! [`NodeAuth::hardened`] (`--node-auth-mode hardened`, for our SuperLink in the same mode only)
//! adds `flwr-auth-time` and `flwr-auth-counter` to those calls and binds the token to them and
//! to the method ([`flwr_auth::hardened`]), so a captured token cannot be replayed nor used for
//! another method. `CreateNode` stays tokenless: the secret only exists after its answer.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use flwr_auth::hardened::{Binding, COUNTER_HEADER, TIME_HEADER};
use flwr_auth::header::{AUTH_TOKEN_HEADER, PUBLIC_KEY_HEADER};
use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use tonic::metadata::MetadataMap;

/// The Fleet method a request calls (its path is what hardened tokens cover).
pub use flwr_proto::FleetRpc;

/// Why a request could not be signed. The request is then not sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign {rpc} request: {reason}")]
pub struct SignError {
    /// The RPC being signed.
    pub rpc: FleetRpc,
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
    fn sign(
        &self,
        rpc: FleetRpc,
        canonical: &[u8],
    ) -> Result<Vec<(&'static str, String)>, SignError>;

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

    fn sign(
        &self,
        _rpc: FleetRpc,
        _canonical: &[u8],
    ) -> Result<Vec<(&'static str, String)>, SignError> {
        Ok(Vec::new())
    }
}

/// Node authentication with an EC key pair (AUTH.md §4, §5), in Flower 1.14's form or hardened.
pub struct NodeAuth {
    private: PrivateKey,
    public_header: String,
    // A std mutex: set once per `CreateNode`, read per request, never held across an await.
    secret: Mutex<Option<SharedSecret>>,
    /// `Some` in hardened mode: the next counter to sign with.
    counter: Option<AtomicU64>,
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
            counter: None,
        }
    }

    /// A signer for the node key pair in hardened mode: every token but `CreateNode`'s is bound
    /// to the method, the wall clock and a counter sent as `flwr-auth-time` and
    /// `flwr-auth-counter`. Only our SuperLink in hardened mode accepts these tokens.
    ///
    /// The counter starts at the wall clock in microseconds and grows by one per request, so a
    /// restarted SuperNode continues above its predecessor's counters (it would need a million
    /// requests per second to catch up with the clock).
    pub fn hardened(private: PrivateKey, public: &PublicKey) -> Self {
        let start = unix_time().as_micros();
        Self {
            counter: Some(AtomicU64::new(u64::try_from(start).unwrap_or(u64::MAX))),
            ..Self::new(private, public)
        }
    }

    /// Whether tokens are hardened.
    pub fn is_hardened(&self) -> bool {
        self.counter.is_some()
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

    fn sign(
        &self,
        rpc: FleetRpc,
        canonical: &[u8],
    ) -> Result<Vec<(&'static str, String)>, SignError> {
        let mut headers = vec![(PUBLIC_KEY_HEADER, self.public_header.clone())];
        if rpc == FleetRpc::CreateNode {
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
        let Some(counter) = &self.counter else {
            headers.push((AUTH_TOKEN_HEADER, secret.sign(canonical).header_value()));
            return Ok(headers);
        };
        // Every signature takes a fresh counter, retries included: the SuperLink refuses a
        // counter it has seen. Relaxed is enough: only uniqueness matters, and the SuperLink's
        // window accepts requests that overtake each other.
        let counter = counter.fetch_add(1, Ordering::Relaxed);
        let time_ms = u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX);
        let binding = Binding::new(rpc.path(), time_ms, counter).map_err(|error| SignError {
            rpc,
            reason: error.to_string(),
        })?;
        // The prefix goes into the MAC first, then the canonical bytes as they are: no copy.
        let token = secret.sign_bound(&binding, canonical);
        headers.push((AUTH_TOKEN_HEADER, token.header_value()));
        headers.push((TIME_HEADER, time_ms.to_string()));
        headers.push((COUNTER_HEADER, counter.to_string()));
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

/// The wall clock since the unix epoch (zero for a clock before 1970, which the SuperLink's time
/// check then refuses).
fn unix_time() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use flwr_auth::{generate_keypair, Curve};
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn unsigned_attaches_nothing() {
        assert!(!Unsigned.needs_canonical());
        assert!(Unsigned.sign(FleetRpc::Ping, b"x").unwrap().is_empty());
    }

    #[test]
    fn node_auth_headers_follow_the_reference() {
        let (node, node_public) = generate_keypair(Curve::P384);
        let (link, link_public) = generate_keypair(Curve::P384);
        let signer = NodeAuth::new(node, &node_public);
        let headers = signer.sign(FleetRpc::CreateNode, b"").unwrap();
        assert_eq!(headers, vec![("public-key", node_public.header_value())]);
        // Before CreateNode returned a key, nothing else can be signed.
        assert!(signer.sign(FleetRpc::Ping, b"req").is_err());
        signer.observe_create_node(&MetadataMap::new());
        assert!(!signer.has_secret());

        let mut response = MetadataMap::new();
        let value = MetadataValue::try_from(link_public.header_value().as_str()).unwrap();
        response.insert("public-key", value);
        signer.observe_create_node(&response);
        assert!(signer.has_secret());
        let headers = signer
            .sign(FleetRpc::PullTaskIns, b"request bytes")
            .unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1].0, "auth-token");
        // The SuperLink's side verifies the token over the same bytes.
        let secret = SharedSecret::derive(&link, &node_public).unwrap();
        let mac = flwr_auth::header::decode(&headers[1].1).unwrap();
        assert!(secret.verify(b"request bytes", &mac));
        assert!(!secret.verify(b"other bytes", &mac));
    }

    #[test]
    fn hardened_tokens_are_bound_to_method_time_and_a_fresh_counter() {
        let (node, node_public) = generate_keypair(Curve::P384);
        let (link, link_public) = generate_keypair(Curve::P384);
        let before = unix_time();
        let signer = NodeAuth::hardened(node, &node_public);
        assert!(signer.is_hardened());
        // CreateNode is tokenless, in hardened mode too.
        let headers = signer.sign(FleetRpc::CreateNode, b"").unwrap();
        assert_eq!(headers, vec![("public-key", node_public.header_value())]);
        let mut response = MetadataMap::new();
        let value = MetadataValue::try_from(link_public.header_value().as_str()).unwrap();
        response.insert("public-key", value);
        signer.observe_create_node(&response);

        let first = signer
            .sign(FleetRpc::PullTaskIns, b"request bytes")
            .unwrap();
        let second = signer
            .sign(FleetRpc::PullTaskIns, b"request bytes")
            .unwrap();
        let names: Vec<&str> = first.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "public-key",
                "auth-token",
                "flwr-auth-time",
                "flwr-auth-counter"
            ]
        );
        let number = |headers: &[(&str, String)], index: usize| -> u64 {
            flwr_auth::hardened::parse_decimal(&headers[index].1).unwrap()
        };
        let (time, counter) = (number(&first, 2), number(&first, 3));
        assert!(time >= u64::try_from(before.as_millis()).unwrap());
        // The counter starts at the clock in microseconds and takes one step per signature.
        assert!(counter >= u64::try_from(before.as_micros()).unwrap());
        assert_eq!(number(&second, 3), counter + 1);
        assert_ne!(first[1].1, second[1].1);

        let secret = SharedSecret::derive(&link, &node_public).unwrap();
        let mac = flwr_auth::header::decode(&first[1].1).unwrap();
        let verifies = |method: &str, body: &[u8]| {
            let binding = Binding::new(method, time, counter).unwrap();
            let mut check = secret.bound_mac(&binding);
            check.update(body);
            check.verify(&mac)
        };
        assert!(verifies("/flwr.proto.Fleet/PullTaskIns", b"request bytes"));
        assert!(!verifies("/flwr.proto.Fleet/DeleteNode", b"request bytes"));
        assert!(!verifies("/flwr.proto.Fleet/PullTaskIns", b"other bytes"));
        // Not a 1.14 token.
        assert!(!secret.verify(b"request bytes", &mac));
    }

    #[test]
    fn rpc_paths_are_the_fleet_services() {
        for rpc in [
            FleetRpc::CreateNode,
            FleetRpc::DeleteNode,
            FleetRpc::GetFab,
            FleetRpc::GetRun,
            FleetRpc::Ping,
            FleetRpc::PullTaskIns,
            FleetRpc::PushTaskRes,
        ] {
            let expected = format!("/{}/{rpc}", flwr_proto::fleet_server::SERVICE_NAME);
            assert_eq!(rpc.path(), expected);
        }
    }
}
