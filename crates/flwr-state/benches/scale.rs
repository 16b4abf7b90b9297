//! What the SuperNode-facing calls cost with 50 000 registered nodes and a round in flight
//! (one queued TaskIns for every other node), in each store.
//!
//! `cargo bench -p flwr-state --bench scale -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench setup: a failed step aborts the run
#![allow(missing_docs)] // the only public item is the fn that `criterion_group!` generates

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use flwr_proto::{ConfigsRecord, Node, RecordSet, RunStatus, Task, TaskIns};
use flwr_state::{Clock, InMemoryLinkState, LinkState, SqliteLinkState, SystemClock};

/// Registered nodes, as in the 50 000-SuperNode deployment target.
const NODES: usize = 50_000;

/// Long enough that every node stays online for the whole run (filling SQLite takes a while),
/// so `online_nodes` answers all of them.
const PING_INTERVAL: f64 = 3600.0;

/// A store filled with [`NODES`] key-bound nodes and the ids the benchmarks address.
struct Fixture {
    /// The run whose round queues one TaskIns for every node but `node`.
    background_run: u64,
    /// The run the per-iteration TaskIns belong to, emptied after each sample.
    bench_run: u64,
    node: u64,
    key: Vec<u8>,
    /// Distinguishes the keys `create_node` registers across samples.
    next_key: u64,
}

/// A PEM-shaped public key unique to `n`, about as long as a real P-384 SPKI PEM.
fn key(n: u64) -> Vec<u8> {
    format!(
        "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE{n:064x}{:056x}\n\
         -----END PUBLIC KEY-----\n",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
    .into_bytes()
}

fn running_run(state: &dyn LinkState) -> u64 {
    let run_id = state
        .create_run(
            "flwr/app",
            "1.0.0",
            "ab",
            HashMap::new(),
            ConfigsRecord::default(),
            None,
        )
        .expect("run");
    for status in ["starting", "running"] {
        let status = RunStatus {
            status: status.to_owned(),
            ..RunStatus::default()
        };
        assert!(state.update_run_status(run_id, status).expect("status"));
    }
    run_id
}

fn task_ins(run_id: u64, consumer: u64, now: f64) -> TaskIns {
    TaskIns {
        run_id,
        task: Some(Task {
            producer: Some(Node {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(Node {
                node_id: consumer,
                anonymous: false,
            }),
            created_at: now,
            ttl: 3600.0,
            task_type: "train".to_owned(),
            recordset: Some(RecordSet::default()),
            ..Task::default()
        }),
        ..TaskIns::default()
    }
}

fn fill(state: &dyn LinkState) -> Fixture {
    let now = SystemClock.now();
    let background_run = running_run(state);
    let bench_run = running_run(state);
    let mut nodes = Vec::with_capacity(NODES);
    for n in 0..NODES as u64 {
        nodes.push(
            state
                .create_node(PING_INTERVAL, Some(&key(n)))
                .expect("node"),
        );
    }
    let node = nodes[NODES / 2];
    for &other in nodes.iter().filter(|&&id| id != node) {
        let ins = task_ins(background_run, other, now);
        state
            .store_task_ins(ins.run_id, vec![ins])
            .expect("store")
            .pop()
            .and_then(Result::ok)
            .expect("accepted");
    }
    Fixture {
        background_run,
        bench_run,
        node,
        key: key(NODES as u64 / 2),
        next_key: NODES as u64,
    }
}

fn bench_store(c: &mut Criterion, name: &str, state: &dyn LinkState) {
    let mut fixture = fill(state);
    let mut group = c.benchmark_group(name);
    group.bench_function("acknowledge_ping", |b| {
        b.iter(|| {
            state
                .acknowledge_ping(black_box(fixture.node), PING_INTERVAL)
                .expect("ping")
        });
    });
    group.bench_function("task_ins_for_node (empty)", |b| {
        b.iter(|| {
            state
                .task_ins_for_node(Some(black_box(fixture.node)), 1)
                .expect("pull")
        });
    });
    group.bench_function("task_ins_for_node (one queued)", |b| {
        b.iter_custom(|iters| {
            let now = SystemClock.now();
            for _ in 0..iters {
                let ins = task_ins(fixture.bench_run, fixture.node, now);
                state
                    .store_task_ins(ins.run_id, vec![ins])
                    .expect("store")
                    .pop()
                    .and_then(Result::ok)
                    .expect("accepted");
            }
            let start = Instant::now();
            for _ in 0..iters {
                let pulled = state
                    .task_ins_for_node(Some(fixture.node), 1)
                    .expect("pull");
                assert_eq!(pulled.len(), 1);
            }
            let elapsed = start.elapsed();
            state
                .delete_tasks_of_run(fixture.bench_run)
                .expect("cleanup");
            elapsed
        });
    });
    group.bench_function("node_id_for_public_key", |b| {
        b.iter(|| {
            state
                .node_id_for_public_key(black_box(&fixture.key))
                .expect("lookup")
        });
    });
    group.bench_function("is_node_online", |b| {
        b.iter(|| {
            assert!(state
                .is_node_online(black_box(fixture.node))
                .expect("online"))
        });
    });
    group.bench_function("node_counts", |b| {
        b.iter(|| state.node_counts().expect("counts"));
    });
    group.bench_function("create_node", |b| {
        b.iter_custom(|iters| {
            let keys: Vec<Vec<u8>> = (0..iters).map(|i| key(fixture.next_key + i)).collect();
            fixture.next_key += iters;
            let mut ids = Vec::with_capacity(keys.len());
            let start = Instant::now();
            for key in &keys {
                ids.push(state.create_node(PING_INTERVAL, Some(key)).expect("node"));
            }
            let elapsed = start.elapsed();
            for id in ids {
                state.delete_node(id).expect("delete");
            }
            elapsed
        });
    });
    group.bench_function("online_nodes", |b| {
        b.iter(|| {
            state
                .online_nodes(fixture.background_run)
                .expect("nodes")
                .len()
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    bench_store(c, "memory", &InMemoryLinkState::new(clock.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteLinkState::open(dir.path().join("state.db"), clock).expect("sqlite");
    bench_store(c, "sqlite-file", &sqlite);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
