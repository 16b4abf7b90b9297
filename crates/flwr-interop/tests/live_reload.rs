//! Our SuperLink follows edits of its `--auth-list-public-keys` file without a restart: a removed
//! key is refused from its next request, a new key is admitted (a real SuperNode joins), and a
//! file that no longer parses leaves the previous list in force.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::{Duration, Instant};

use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use flwr_interop::{make_keys, scratch, KeyMaker};
use flwr_proto::{canonical, fleet_client::FleetClient, CreateNodeRequest, Node, PingRequest};
use flwr_testkit::cluster::{Cluster, Side};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
    Code, Request,
};

fn key_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).expect("public key file");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Caller {
    private: PrivateKey,
    header: String,
}

async fn create(
    client: &mut FleetClient<Channel>,
    node: &Caller,
) -> Result<(u64, SharedSecret), tonic::Status> {
    let mut request = Request::new(CreateNodeRequest {
        ping_interval: 30.0,
    });
    request.metadata_mut().insert(
        "public-key",
        MetadataValue::try_from(node.header.as_str()).expect("ascii"),
    );
    let response = client.create_node(request).await?;
    let superlink = response
        .metadata()
        .get("public-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| PublicKey::from_header(v).expect("key"))
        .expect("superlink key");
    let id = response.into_inner().node.expect("node").node_id;
    Ok((
        id,
        SharedSecret::derive(&node.private, &superlink).expect("secret"),
    ))
}

async fn ping(
    client: &mut FleetClient<Channel>,
    node: &Caller,
    id: u64,
    secret: &SharedSecret,
) -> Result<bool, tonic::Status> {
    let message = PingRequest {
        node: Some(Node {
            node_id: id,
            anonymous: false,
        }),
        ping_interval: 30.0,
    };
    let token = secret
        .sign(&canonical::encode(&message).expect("canonical"))
        .header_value();
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "public-key",
        MetadataValue::try_from(node.header.as_str()).expect("ascii"),
    );
    request
        .metadata_mut()
        .insert("auth-token", MetadataValue::try_from(token).expect("ascii"));
    Ok(client.ping(request).await?.into_inner().success)
}

#[test]
fn allow_list_changes_take_effect_without_a_restart() {
    let dir = scratch("live-reload");
    let auth = make_keys(dir.path(), KeyMaker::Ours, 2, 1).expect("keys");
    let csv = auth.superlink.allow_list.clone();
    let [line_b, line_c] = [1, 2].map(|i| key_line(&auth.supernodes[i].public));
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    cluster
        .start_superlink(Side::Rust, &auth.superlink_args())
        .expect("superlink");
    let ca = std::fs::read(&cluster.pki().ca_cert).expect("ca");
    let address = format!("https://{}", cluster.fleet_address());
    let nodes: Vec<Caller> = auth
        .supernodes
        .iter()
        .map(|keys| {
            let private =
                PrivateKey::from_openssh(std::fs::read(&keys.private).expect("key")).expect("key");
            let header = private.public_key().header_value();
            Caller { private, header }
        })
        .collect();

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
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
        let mut client = FleetClient::new(channel);

        let (id_a, secret_a) = create(&mut client, &nodes[0]).await.expect("A is listed");
        assert!(ping(&mut client, &nodes[0], id_a, &secret_a)
            .await
            .expect("A pings"));
        let refused = create(&mut client, &nodes[2])
            .await
            .expect_err("C is not listed yet");
        assert_eq!(refused.code(), Code::Unauthenticated);

        // Remove A, add C.
        std::fs::write(&csv, format!("{line_b}\n{line_c}\n")).expect("rewrite csv");
        let edited = Instant::now();
        let mut refused_after = None;
        for _ in 0..100 {
            match ping(&mut client, &nodes[0], id_a, &secret_a).await {
                Err(status) if status.code() == Code::Unauthenticated => {
                    refused_after = Some(edited.elapsed());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let refused_after = refused_after.expect("A refused after its key was removed");
        println!(
            "removed key refused {:.0} ms after the edit",
            refused_after.as_secs_f64() * 1000.0
        );
        assert!(
            refused_after < Duration::from_secs(1),
            "took {refused_after:?}"
        );

        // A file that does not parse: the previous list (B, C) stays.
        std::fs::write(&csv, "# not a key\n").expect("break csv");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (id_b, secret_b) = create(&mut client, &nodes[1])
            .await
            .expect("B still listed");
        assert!(ping(&mut client, &nodes[1], id_b, &secret_b)
            .await
            .expect("B pings"));
        // Restore a valid list with B and C for the real SuperNode below.
        std::fs::write(&csv, format!("{line_b},{line_c}\n")).expect("restore csv");
        tokio::time::sleep(Duration::from_millis(800)).await;
    });

    // A real SuperNode with the newly added key joins the running SuperLink.
    cluster
        .start_supernodes(&[Side::Python], Some(&auth.supernodes[2..]))
        .expect("a SuperNode with the new key registers");
    let log = cluster
        .superlink()
        .expect("superlink")
        .log_text()
        .expect("log");
    assert!(log.contains("reloaded --auth-list-public-keys"), "{log}");
    assert!(
        log.contains("no longer parses; keeping the previous list"),
        "{log}"
    );
}
