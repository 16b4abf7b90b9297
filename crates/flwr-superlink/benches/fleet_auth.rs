//! A full Fleet `Ping` through the server stack over loopback gRPC — tonic transport, node
//! authentication (canonical re-encoding, cached-secret HMAC, key→node binding) and the
//! handler — next to the same request without authentication.
//!
//! `cargo bench -p flwr-superlink --bench fleet_auth`
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failed step aborts the run
#![allow(missing_docs)] // the only public item is the fn that `criterion_group!` generates

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use flwr_auth::{AllowList, Curve, PrivateKey, SharedSecret};
use flwr_proto::{
    canonical, fleet_client::FleetClient, fleet_server::FleetServer, CreateNodeRequest, Node,
    PingRequest,
};
use flwr_state::{Ffs, InMemoryLinkState, SystemClock};
use flwr_superlink::{
    fleet_auth::{FleetAuth, NodeAuthenticator},
    service::{
        fleet::{FleetHandler, FleetService},
        Stores,
    },
};
use tokio::runtime::Runtime;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

struct Bench {
    client: FleetClient<Channel>,
    ping: PingRequest,
    public_key: MetadataValue<tonic::metadata::Ascii>,
    token: MetadataValue<tonic::metadata::Ascii>,
}

/// Serves the Fleet API on a loopback port, with or without node auth, and registers a node.
fn start(runtime: &Runtime, authenticated: bool) -> Bench {
    runtime.block_on(async {
        let mut rng = rand::rngs::OsRng;
        let superlink_key = PrivateKey::generate(Curve::P384, &mut rng);
        let node_key = PrivateKey::generate(Curve::P384, &mut rng);
        let mut allowed = AllowList::new();
        allowed.insert(&node_key.public_key());

        let state: Arc<dyn flwr_state::LinkState> =
            Arc::new(InMemoryLinkState::new(Arc::new(SystemClock)));
        let stores = Stores::new(Arc::clone(&state), Arc::new(Ffs::in_memory()));
        let fleet = FleetServer::new(FleetService::new(Arc::new(FleetHandler::new(stores))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let router = if authenticated {
            let auth =
                Arc::new(NodeAuthenticator::new(superlink_key.clone(), allowed).expect("auth"));
            tonic::transport::Server::builder().add_service(FleetAuth::new(
                fleet,
                auth,
                flwr_proto::MAX_MESSAGE_SIZE,
            ))
        } else {
            tonic::transport::Server::builder().add_service(fleet)
        };
        // The server lives as long as the benchmark process; nothing to abort.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));

        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = FleetClient::new(channel);
        let public_key: MetadataValue<_> =
            node_key.public_key().header_value().parse().expect("ascii");
        let mut create = Request::new(CreateNodeRequest {
            ping_interval: 30.0,
        });
        create
            .metadata_mut()
            .insert("public-key", public_key.clone());
        let node_id = client
            .create_node(create)
            .await
            .expect("create")
            .into_inner()
            .node
            .expect("node")
            .node_id;
        let ping = PingRequest {
            node: Some(Node {
                node_id,
                anonymous: false,
            }),
            ping_interval: 30.0,
        };
        let secret = SharedSecret::derive(&node_key, &superlink_key.public_key()).expect("secret");
        let token = secret
            .sign(&canonical::encode(&ping).expect("canonical"))
            .header_value()
            .parse()
            .expect("ascii");
        Bench {
            client,
            ping,
            public_key,
            token,
        }
    })
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("Fleet Ping over loopback gRPC");
    for authenticated in [false, true] {
        let mut bench = start(&runtime, authenticated);
        let name = if authenticated {
            "with node auth"
        } else {
            "without node auth"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let mut request = Request::new(bench.ping);
                    if authenticated {
                        request
                            .metadata_mut()
                            .insert("public-key", bench.public_key.clone());
                        request
                            .metadata_mut()
                            .insert("auth-token", bench.token.clone());
                    }
                    let response = bench.client.ping(request).await.expect("ping");
                    assert!(response.into_inner().success);
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
