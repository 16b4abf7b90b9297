//! Fleet requests with their node-authentication headers, signed once per node.
//!
//! A node's Ping and PullTaskIns bodies never change, and neither does its PushTaskRes here,
//! so each token (HMAC over the canonical encoding, AUTH.md §5.2) is computed once after
//! CreateNode; a request then costs a clone of the body and two header values that share
//! their bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flwr_auth::header::{AUTH_TOKEN_HEADER, PUBLIC_KEY_HEADER};
use flwr_auth::SharedSecret;
use flwr_proto::{
    Array, Node, ParametersRecord, PingRequest, PullTaskInsRequest, PushTaskResRequest, RecordSet,
    Task, TaskRes,
};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::Request;

/// The ping interval the reference SuperNode sends with CreateNode and every Ping.
pub const PING_INTERVAL_SECONDS: f64 = 30.0;

/// `ancestry[0]` of every pushed TaskRes: a well-formed UUID that names no TaskIns, so the
/// SuperLink parses, validates and then declines to store the result (`{"None": 0}`), and
/// memory does not grow with the number of requests.
pub const UNKNOWN_TASK_INS: &str = "00000000-0000-4000-8000-00000000f10e";

/// Lifetime of a pushed TaskRes; it must not have expired when the SuperLink validates it.
const TASK_RES_TTL_SECONDS: f64 = 3600.0;

/// A header value that cannot be sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The canonical encoder does not know the message (a build problem).
    #[error("canonical encoding: {0}")]
    Canonical(#[from] flwr_proto::canonical::CanonicalError),
    /// A header value is not ASCII.
    #[error("header value: {0}")]
    Header(#[from] tonic::metadata::errors::InvalidMetadataValue),
}

/// The `public-key` header value of a node, and its secret once the SuperLink's key is known.
#[derive(Clone)]
pub struct NodeAuth {
    /// base64url of the node's PEM SPKI.
    pub public_key: MetadataValue<Ascii>,
    /// The HMAC key shared with the SuperLink.
    pub secret: SharedSecret,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("NodeAuth").finish_non_exhaustive()
    }
}

/// A request body with the headers that go with it.
#[derive(Clone, Debug)]
pub struct Signed<T> {
    body: T,
    public_key: Option<MetadataValue<Ascii>>,
    token: Option<MetadataValue<Ascii>>,
}

impl<T: prost::Message + prost::Name + Clone> Signed<T> {
    /// `body` signed by `auth`, or without headers when `auth` is `None`.
    ///
    /// # Errors
    ///
    /// Only if the canonical encoder does not know the message type.
    pub fn new(body: T, auth: Option<&NodeAuth>) -> Result<Self, SignError> {
        let Some(auth) = auth else {
            return Ok(Self {
                body,
                public_key: None,
                token: None,
            });
        };
        let token = token(&auth.secret, &body)?;
        Ok(Self {
            body,
            public_key: Some(auth.public_key.clone()),
            token: Some(token),
        })
    }

    /// A fresh tonic request with the body and headers.
    pub fn request(&self) -> Request<T> {
        let mut request = Request::new(self.body.clone());
        attach(&mut request, self.public_key.as_ref(), self.token.as_ref());
        request
    }
}

/// The `auth-token` value for `body`.
///
/// # Errors
///
/// Only if the canonical encoder does not know the message type.
pub fn token<T: prost::Message + prost::Name>(
    secret: &SharedSecret,
    body: &T,
) -> Result<MetadataValue<Ascii>, SignError> {
    let canonical = flwr_proto::canonical::encode(body)?;
    Ok(MetadataValue::try_from(
        secret.sign(&canonical).header_value(),
    )?)
}

/// Adds the authentication headers that are present.
pub fn attach<T>(
    request: &mut Request<T>,
    public_key: Option<&MetadataValue<Ascii>>,
    token: Option<&MetadataValue<Ascii>>,
) {
    let metadata = request.metadata_mut();
    if let Some(value) = public_key {
        metadata.insert(MetadataKey::from_static(PUBLIC_KEY_HEADER), value.clone());
    }
    if let Some(value) = token {
        metadata.insert(MetadataKey::from_static(AUTH_TOKEN_HEADER), value.clone());
    }
}

/// `Node{node_id, anonymous: false}`, as the reference SuperNode reuses it.
pub fn node(node_id: u64) -> Node {
    Node {
        node_id,
        anonymous: false,
    }
}

/// The reference SuperNode's Ping.
pub fn ping(node_id: u64) -> PingRequest {
    PingRequest {
        node: Some(node(node_id)),
        ping_interval: PING_INTERVAL_SECONDS,
    }
}

/// The reference SuperNode's PullTaskIns (`task_ids` never set).
pub fn pull(node_id: u64) -> PullTaskInsRequest {
    PullTaskInsRequest {
        node: Some(node(node_id)),
        task_ids: Vec::new(),
    }
}

/// The parts of a PushTaskRes shared by every node: the payload and the creation time.
#[derive(Debug)]
pub struct PushTemplate {
    run_id: u64,
    created_at: f64,
    recordset: RecordSet,
}

impl PushTemplate {
    /// A TaskRes of run `run_id` whose RecordSet holds one ParametersRecord with one array of
    /// `payload_bytes` bytes (a NumPy `.npy` uint8 vector, as a Python ClientApp would send),
    /// or no records for 0 bytes.
    pub fn new(run_id: u64, payload_bytes: usize) -> Arc<Self> {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |elapsed| elapsed.as_secs_f64());
        let mut parameters = HashMap::new();
        if payload_bytes > 0 {
            parameters.insert(
                "loadgen".to_owned(),
                ParametersRecord {
                    data_keys: vec!["payload".to_owned()],
                    data_values: vec![Array {
                        dtype: "uint8".to_owned(),
                        shape: vec![i32::try_from(payload_bytes).unwrap_or(i32::MAX)],
                        stype: "numpy.ndarray".to_owned(),
                        data: npy_uint8(payload_bytes).into(),
                    }],
                },
            );
        }
        Arc::new(Self {
            run_id,
            created_at,
            recordset: RecordSet {
                parameters,
                metrics: HashMap::new(),
                configs: HashMap::new(),
            },
        })
    }

    /// The run named by every TaskRes.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// The PushTaskRes of `node_id`, shaped as the reference SuperNode's (BEHAVIOR.md §6.1).
    pub fn body(&self, node_id: u64) -> PushTaskResRequest {
        PushTaskResRequest {
            node: Some(node(node_id)),
            task_res_list: vec![TaskRes {
                task_id: String::new(),
                group_id: "1".to_owned(),
                run_id: self.run_id,
                task: Some(Task {
                    producer: Some(node(node_id)),
                    consumer: Some(Node {
                        node_id: 0,
                        anonymous: true,
                    }),
                    created_at: self.created_at,
                    delivered_at: String::new(),
                    pushed_at: 0.0,
                    ttl: TASK_RES_TTL_SECONDS,
                    ancestry: vec![UNKNOWN_TASK_INS.to_owned()],
                    task_type: "train".to_owned(),
                    recordset: Some(self.recordset.clone()),
                    error: None,
                }),
            }],
        }
    }
}

/// A NumPy `.npy` (format 1.0) file holding a uint8 vector: `payload_bytes` data bytes after a
/// header padded to 64 bytes.
fn npy_uint8(payload_bytes: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({payload_bytes},), }}");
    // magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + payload_bytes);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // The padded header of a vector's shape is far below 64 KiB.
    out.extend_from_slice(
        &u16::try_from(header.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(header.as_bytes());
    // A byte pattern rather than zeros, so that nothing on the way compresses it away.
    out.extend((0..payload_bytes).map(|i| (i % 251) as u8));
    out
}

#[cfg(test)]
mod tests {
    use flwr_auth::{generate_keypair, Curve};

    use super::*;

    #[test]
    fn signed_requests_carry_tokens_the_superlink_verifies() {
        let (node_key, node_public) = generate_keypair(Curve::P384);
        let (link, link_public) = generate_keypair(Curve::P384);
        let auth = NodeAuth {
            public_key: MetadataValue::try_from(node_public.header_value()).unwrap(),
            secret: SharedSecret::derive(&node_key, &link_public).unwrap(),
        };
        let signed = Signed::new(ping(42), Some(&auth)).unwrap();
        let request = signed.request();
        let metadata = request.metadata();
        assert_eq!(
            metadata.get("public-key").unwrap().to_str().unwrap(),
            node_public.header_value()
        );
        let mac = flwr_auth::header::decode(metadata.get("auth-token").unwrap().to_str().unwrap())
            .unwrap();
        let server = SharedSecret::derive(&link, &node_public).unwrap();
        let canonical = flwr_proto::canonical::encode(request.get_ref()).unwrap();
        assert!(server.verify(&canonical, &mac));

        let unsigned = Signed::new(pull(42), None).unwrap().request();
        assert!(unsigned.metadata().is_empty());
    }

    #[test]
    fn push_bodies_are_valid_task_res_for_an_unknown_task_ins() {
        let template = PushTemplate::new(9, 1000);
        let body = template.body(5);
        let task_res = &body.task_res_list[0];
        assert_eq!(task_res.run_id, 9);
        let task = task_res.task.as_ref().unwrap();
        assert_eq!(task.producer, Some(node(5)));
        assert_eq!(task.ancestry, vec![UNKNOWN_TASK_INS.to_owned()]);
        let array = &task.recordset.as_ref().unwrap().parameters["loadgen"].data_values[0];
        assert_eq!(array.data.len() % 64, 1000 % 64);
        assert!(array.data.starts_with(b"\x93NUMPY"));
        assert_eq!(array.data.len() - 1000, 128);
        let empty = PushTemplate::new(9, 0).body(5);
        let recordset = empty.task_res_list[0]
            .task
            .as_ref()
            .unwrap()
            .recordset
            .clone();
        assert!(recordset.unwrap().parameters.is_empty());
    }
}
