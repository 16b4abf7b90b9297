//! Our SuperLink with SQLite state is killed in the middle of a run and started again on the
//! same database: our SuperNodes, never restarted, reconnect by themselves and serve the next
//! run to completion.

use std::time::{Duration, Instant};

use flwr_interop::{scratch, OrphanReaper};
use flwr_testkit::cluster::{Cluster, Side, FEDERATION};

#[test]
fn supernodes_come_back_after_a_superlink_crash() {
    let dir = scratch("restart");
    let database = dir.path().join("state.db").display().to_string();
    let args = ["--database".to_owned(), database];
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    // Drops before the cluster: kills the SuperLink's process tree, orphaned ServerApps included.
    let reaper = OrphanReaper::new(dir.path().join("home-superlink"));
    cluster
        .start_superlink(Side::Rust, &args)
        .expect("superlink");
    cluster
        .start_supernodes(&[Side::Rust, Side::Rust], None)
        .expect("supernodes");

    // Start a run and crash the SuperLink while it is in progress.
    let run_id = cluster
        .flwr()
        .run(cluster.app().dir(), FEDERATION)
        .expect("flwr run");
    cluster
        .flwr()
        .wait_for_status(
            run_id,
            cluster.app().dir(),
            FEDERATION,
            "running",
            Duration::from_secs(120),
        )
        .expect("the run got going");
    // Let the first round's messages reach the SuperNodes.
    std::thread::sleep(Duration::from_secs(3));
    cluster
        .stop_superlink(Duration::ZERO)
        .expect("kill the SuperLink");
    // The killed SuperLink\'s ServerApp (its own process group) outlives it, as after any crash.
    reaper.reap();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    cluster
        .start_superlink(Side::Rust, &args)
        .expect("superlink restarts on the same database");
    let runs = cluster
        .flwr()
        .ls(cluster.app().dir(), FEDERATION)
        .expect("flwr ls");
    assert!(
        runs.iter().any(|r| r.run_id == run_id),
        "the interrupted run is still listed: {runs:?}"
    );

    // The same SuperNode processes, untouched, serve a new run to completion.
    let (_, run) = cluster
        .run_app_to("finished:completed")
        .expect("next run completes");
    assert_eq!(run.fab_id, "test/numpyapp");
    println!(
        "SuperNodes served a new run {:.1} s after the crash",
        killed.elapsed().as_secs_f64()
    );
    for node in cluster.supernodes().iter() {
        assert!(
            node.is_running(),
            "{} is still the original process",
            node.name()
        );
    }
}
