//! What checking an `auth-token` costs the SuperLink per request: the canonical re-encoding of
//! the body, then HMAC-SHA256 over it. Compares collecting the bytes first (`canonicalize`,
//! then `verify`) with streaming them into the MAC (`canonicalize_into`), and the old
//! transcoder (`tests/oracle`) where it finishes in reasonable time.
//!
//! `cargo bench -p flwr-proto --bench canonical -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failed step aborts the run
#![allow(missing_docs)] // the only public item is the fn that `criterion_group!` generates

#[path = "../tests/oracle/mod.rs"]
mod oracle;

use std::collections::HashMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flwr_auth::SharedSecret;
use flwr_proto::{
    canonical, configs_record_value, Array, ConfigsRecord, ConfigsRecordValue, Node,
    ParametersRecord, PushTaskResRequest, RecordSet, Task, TaskRes,
};
use prost::Message as _;

const PUSH: &str = "flwr.proto.PushTaskResRequest";

fn push_request(recordset: RecordSet) -> PushTaskResRequest {
    PushTaskResRequest {
        node: Some(Node {
            node_id: 7,
            anonymous: false,
        }),
        task_res_list: vec![TaskRes {
            task_id: String::new(),
            group_id: "1".into(),
            run_id: 3,
            task: Some(Task {
                producer: Some(Node {
                    node_id: 7,
                    anonymous: false,
                }),
                consumer: Some(Node {
                    node_id: 0,
                    anonymous: true,
                }),
                ttl: 3600.0,
                ancestry: vec!["42".into()],
                task_type: "train".into(),
                recordset: Some(recordset),
                ..Default::default()
            }),
        }],
    }
}

/// A model update: four float32 arrays, 16 MiB in all.
fn array_heavy() -> Vec<u8> {
    let arrays: Vec<(String, Array)> = (0..4u8)
        .map(|i| {
            let array = Array {
                dtype: "float32".into(),
                shape: vec![1024, 1024],
                stype: "numpy.ndarray".into(),
                data: (0..4 << 20).map(|j: u32| (j as u8) ^ i).collect(),
            };
            (format!("layer{i}"), array)
        })
        .collect();
    let (data_keys, data_values) = arrays.into_iter().unzip();
    let parameters = ParametersRecord {
        data_keys,
        data_values,
    };
    push_request(RecordSet {
        parameters: HashMap::from([("parameters".into(), parameters)]),
        ..Default::default()
    })
    .encode_to_vec()
}

/// A configs record with `k` entries.
fn map_heavy(k: usize) -> Vec<u8> {
    let data = (0..k)
        .map(|i| {
            let value = ConfigsRecordValue {
                value: Some(configs_record_value::Value::Sint64(i as i64)),
            };
            (format!("key{i:06}"), value)
        })
        .collect();
    push_request(RecordSet {
        configs: HashMap::from([("config".into(), ConfigsRecord { data })]),
        ..Default::default()
    })
    .encode_to_vec()
}

fn bench_input(c: &mut Criterion, name: &str, wire: &[u8], with_oracle: bool) {
    let secret = SharedSecret::from_hkdf_output(&[7; 32]);
    let canonical_bytes = canonical::canonicalize(PUSH, wire).expect("canonical");
    let token = secret.sign(&canonical_bytes);
    let ty = canonical::message_type(PUSH).expect("type");

    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    if with_oracle {
        group.bench_function("old: oracle canonicalize + verify", |b| {
            b.iter(|| {
                let bytes = oracle::canonicalize(PUSH, black_box(wire)).expect("canonical");
                assert!(secret.verify(&bytes, token.as_bytes()));
            });
        });
    }
    group.bench_function("canonicalize (Vec)", |b| {
        b.iter(|| canonical::canonicalize(PUSH, black_box(wire)).expect("canonical"));
    });
    group.bench_function("canonicalize + verify", |b| {
        b.iter(|| {
            let bytes = canonical::canonicalize(PUSH, black_box(wire)).expect("canonical");
            assert!(secret.verify(&bytes, token.as_bytes()));
        });
    });
    group.bench_function("canonicalize_into (no-op sink)", |b| {
        b.iter(|| {
            let mut sink = |bytes: &[u8]| {
                black_box(bytes);
            };
            ty.canonicalize_into(black_box(wire), &mut sink)
                .expect("canonical")
        });
    });
    group.bench_function("canonicalize_into (HMAC sink) + verify", |b| {
        b.iter(|| {
            let mut mac = secret.mac();
            let mut sink = |bytes: &[u8]| mac.update(bytes);
            ty.canonicalize_into(black_box(wire), &mut sink)
                .expect("canonical");
            assert!(mac.verify(token.as_bytes()));
        });
    });
    group.bench_function("HMAC alone (lower bound)", |b| {
        b.iter(|| assert!(secret.verify(black_box(&canonical_bytes), token.as_bytes())));
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    bench_input(c, "array-heavy 16 MiB", &array_heavy(), true);
    // The oracle needs seconds for 32k entries (quadratic), so it runs on 2k only.
    bench_input(c, "map-heavy 32k entries", &map_heavy(32 * 1024), false);
    bench_input(c, "map-heavy 2k entries", &map_heavy(2 * 1024), true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
