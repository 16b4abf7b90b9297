//! Every way a SuperNode can get node authentication wrong is refused with
//! `UNAUTHENTICATED "Access denied"`, by the reference SuperLink and by ours alike.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_interop::{make_keys, scratch, KeyMaker};
use flwr_proto::{
    canonical, fleet_client::FleetClient, CreateNodeRequest, Node, PingRequest, PushTaskResRequest,
    MAX_MESSAGE_SIZE,
};
use flwr_testkit::cluster::{Cluster, Side};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
    Code, Request,
};

struct Identity {
    private: PrivateKey,
    header: String,
}

impl Identity {
    fn load(path: &std::path::Path) -> Self {
        let private =
            PrivateKey::from_openssh(std::fs::read(path).expect("key file")).expect("key");
        let header = private.public_key().header_value();
        Self { private, header }
    }
}

fn request<T>(message: T, public_key: Option<&str>, token: Option<String>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = public_key {
        request
            .metadata_mut()
            .insert("public-key", MetadataValue::try_from(key).expect("ascii"));
    }
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("auth-token", MetadataValue::try_from(token).expect("ascii"));
    }
    request
}

async fn register(client: &mut FleetClient<Channel>, who: &Identity) -> (u64, SharedSecret) {
    let response = client
        .create_node(request(
            CreateNodeRequest {
                ping_interval: 30.0,
            },
            Some(&who.header),
            None,
        ))
        .await
        .expect("listed key registers");
    let superlink_key = response
        .metadata()
        .get("public-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| PublicKey::from_header(v).expect("superlink key"))
        .expect("CreateNode response carries the SuperLink key");
    let node_id = response.into_inner().node.expect("node").node_id;
    (
        node_id,
        SharedSecret::derive(&who.private, &superlink_key).expect("secret"),
    )
}

fn ping(node_id: u64) -> PingRequest {
    PingRequest {
        node: Some(Node {
            node_id,
            anonymous: false,
        }),
        ping_interval: 30.0,
    }
}

fn token(secret: &SharedSecret, message: &PingRequest) -> String {
    secret
        .sign(&canonical::encode(message).expect("canonical"))
        .header_value()
}

fn assert_denied<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert_eq!(status.message(), "Access denied", "{what}");
}

fn refusals(side: Side) {
    let dir = scratch(&format!("refusals-{side:?}").to_lowercase());
    let auth = make_keys(dir.path(), KeyMaker::Ours, 2, 1).expect("keys");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    cluster
        .start_superlink(side, &auth.superlink_args())
        .expect("superlink");
    let ca = std::fs::read(&cluster.pki().ca_cert).expect("ca");
    let address = format!("https://{}", cluster.fleet_address());

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(address)
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        let mut client = FleetClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let [a, b, stranger] = [0, 1, 2].map(|i| Identity::load(&auth.supernodes[i].private));

        assert_denied(
            "CreateNode with an unlisted key",
            client
                .create_node(request(
                    CreateNodeRequest {
                        ping_interval: 30.0,
                    },
                    Some(&stranger.header),
                    None,
                ))
                .await,
        );
        assert_denied(
            "CreateNode without a public key",
            client
                .create_node(request(
                    CreateNodeRequest {
                        ping_interval: 30.0,
                    },
                    None,
                    None,
                ))
                .await,
        );

        let (id_a, secret_a) = register(&mut client, &a).await;
        let (id_b, secret_b) = register(&mut client, &b).await;
        assert_ne!(id_a, id_b);

        let good = ping(id_a);
        let response = client
            .ping(request(
                good,
                Some(&a.header),
                Some(token(&secret_a, &good)),
            ))
            .await;
        assert!(
            response
                .expect("a correct token is accepted")
                .into_inner()
                .success
        );

        let mut tampered = flwr_auth::header::decode(token(&secret_a, &good)).expect("b64");
        tampered[0] ^= 1;
        assert_denied(
            "tampered token",
            client
                .ping(request(
                    good,
                    Some(&a.header),
                    Some(flwr_auth::header::encode(&tampered)),
                ))
                .await,
        );
        assert_denied(
            "token made with another node's secret",
            client
                .ping(request(
                    good,
                    Some(&a.header),
                    Some(token(&secret_b, &good)),
                ))
                .await,
        );
        assert_denied(
            "missing auth-token",
            client.ping(request(good, Some(&a.header), None)).await,
        );
        assert_denied(
            "missing public-key",
            client
                .ping(request(good, None, Some(token(&secret_a, &good))))
                .await,
        );
        let other = ping(id_b);
        assert_denied(
            "node id that belongs to another key",
            client
                .ping(request(
                    other,
                    Some(&a.header),
                    Some(token(&secret_a, &other)),
                ))
                .await,
        );
        let empty = PushTaskResRequest {
            node: Some(Node {
                node_id: id_a,
                anonymous: false,
            }),
            task_res_list: vec![],
        };
        let empty_token = secret_a
            .sign(&canonical::encode(&empty).expect("canonical"))
            .header_value();
        assert_denied(
            "PushTaskRes without a TaskRes",
            client
                .push_task_res(request(empty, Some(&a.header), Some(empty_token)))
                .await,
        );
    });
}

#[test]
fn python_superlink_refuses_bad_auth() {
    refusals(Side::Python);
}

#[test]
fn rust_superlink_refuses_bad_auth() {
    refusals(Side::Rust);
}
