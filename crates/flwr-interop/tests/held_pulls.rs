//! Held pulls with the Python peers. The 1.14 SuperNode and `flwr-serverapp` never ask for
//! held pulls; our SuperLink holds their empty `PullTaskIns` / `PullTaskRes` for up to 2.5 s
//! anyway (the default, `--hold-pulls`). With TLS and node auth, on SQLite, they must still: finish a run, stop one,
//! survive a SuperNode killed while its pull is held (it comes back with the same key), and
//! serve the next run after our SuperLink was killed and restarted on the same database.

use std::time::{Duration, Instant};

use flwr_interop::{make_keys, scratch, KeyMaker, OrphanReaper};
use flwr_testkit::cluster::{Cluster, Side, FEDERATION};
use flwr_testkit::Proc;

fn timed_run(cluster: &Cluster, what: &str) {
    let started = Instant::now();
    let (_, run) = cluster
        .run_app_to("finished:completed")
        .unwrap_or_else(|error| panic!("{what}: the run does not complete: {error}"));
    assert_eq!(run.fab_id, "test/numpyapp");
    println!("{what}: run took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn python_peers_run_stop_lose_a_node_and_survive_a_restart_with_hold_pulls() {
    let dir = scratch("held-pulls");
    let auth = make_keys(dir.path(), KeyMaker::Ours, 2, 0).expect("keys");
    let database = dir.path().join("state.db").display().to_string();
    let mut args = auth.superlink_args();
    args.extend(["--hold-pulls".to_owned(), "--database".to_owned(), database]);
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    // Drops before the cluster: kills what a killed SuperLink leaves behind.
    let reaper = OrphanReaper::new(dir.path().join("home-superlink"));
    cluster
        .start_superlink(Side::Rust, &args)
        .expect("superlink");
    cluster
        .start_supernodes(&[Side::Python, Side::Python], Some(&auth.supernodes))
        .expect("python supernodes register");

    timed_run(&cluster, "held pulls, Python SuperNodes and flwr-serverapp");

    // Stop: the ServerApp's held PullTaskRes ends and the run is stopped, not stuck.
    let flwr = cluster.flwr();
    let app = cluster.app().dir();
    let run_id = flwr.run(app, FEDERATION).expect("flwr run");
    flwr.wait_for_status(run_id, app, FEDERATION, "running", Duration::from_secs(120))
        .expect("the run got going");
    flwr.stop(run_id, app, FEDERATION).expect("flwr stop");
    let stopped = flwr
        .wait_for_status(
            run_id,
            app,
            FEDERATION,
            "finished:stopped",
            Duration::from_secs(60),
        )
        .expect("the stopped run ends");
    assert_eq!(stopped.run_id, run_id);

    // Node loss: kill a SuperNode while its pull is held, and start it again with the same key
    // (so it gets its node id back). Nothing it was holding is lost or stuck.
    let lost = &mut cluster.supernodes()[0];
    lost.terminate(Duration::ZERO).expect("kill a SuperNode");
    let command = cluster
        .supernode_command(Side::Python, 0, 2, Some(&auth.supernodes[0]))
        .expect("command");
    let replacement = Proc::spawn("supernode-0-again", &command, dir.path()).expect("spawn");
    cluster.supernodes().push(replacement);
    // The SIGTERM before the SIGKILL may or may not have let it send DeleteNode first.
    let superlink = cluster.superlink().expect("superlink");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = superlink.log_text().expect("log");
        if log.contains("registered again") || log.matches("Created node_id").count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not come back:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    timed_run(&cluster, "after losing a SuperNode");

    // Restart: the same Python SuperNodes reconnect to a SuperLink killed mid-hold and
    // restarted on the same database.
    cluster
        .stop_superlink(Duration::ZERO)
        .expect("kill the SuperLink");
    reaper.reap();
    cluster
        .start_superlink(Side::Rust, &args)
        .expect("superlink restarts on the same database");
    timed_run(&cluster, "after a SuperLink restart");
    for node in cluster.supernodes().iter().skip(1) {
        assert!(
            node.is_running(),
            "{} is still the original process",
            node.name()
        );
    }
}
