//! What node authentication costs per request: signing and verifying a token with a cached
//! secret, next to the ECDH + HKDF derivation the reference repeats on every request.
//!
//! `cargo bench -p flwr-auth --bench token`
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failed step aborts the run
#![allow(missing_docs)] // the only public item is the fn that `criterion_group!` generates

use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flwr_auth::{PrivateKey, PublicKey, SharedSecret};
use serde_json::Value;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors/auth_vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("json")
}

fn bench(c: &mut Criterion) {
    let vectors = vectors();
    let case = &vectors["cases"][0];
    let node = PrivateKey::from_openssh(
        case["supernode"]["openssh_private_key"]
            .as_str()
            .expect("key"),
    )
    .expect("node key");
    let superlink = PublicKey::from_openssh(
        case["superlink"]["openssh_public_key"]
            .as_str()
            .expect("key"),
    )
    .expect("key");
    let secret = SharedSecret::derive(&node, &superlink).expect("secret");

    for name in ["PingRequest", "PushTaskResRequest"] {
        let bytes = hex::decode(
            case["requests"][name]["deterministic_hex"]
                .as_str()
                .expect("hex"),
        )
        .expect("hex");
        let token = secret.sign(&bytes);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("sign", |b| b.iter(|| secret.sign(black_box(&bytes))));
        group.bench_function("verify (cached secret)", |b| {
            b.iter(|| assert!(secret.verify(black_box(&bytes), token.as_bytes())));
        });
        group.finish();
    }
    c.bench_function(
        "derive secret (ECDH P-384 + HKDF, per request in the reference)",
        |b| {
            b.iter(|| {
                SharedSecret::derive(black_box(&node), black_box(&superlink)).expect("secret")
            });
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
