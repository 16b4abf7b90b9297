//! End to end: two of our SuperNodes against the Python `flower-superlink` 1.14.0 over TLS
//! (openssl PKI), running the `flwr new --framework NumPy` app for 3 rounds with `flwr run`.
//! The real `flwr-clientapp` runs the Python ClientApp through our ClientAppIo server.
//!
//! Needs the reference virtualenv (`$FLWR_VENV`, else `<repo>/.venv`; `scripts/test` makes it).

use std::time::{Duration, Instant};

use flwr_testkit::cluster::{target_bin, Cluster, Side};
use flwr_testkit::{free_ports, Proc};

#[test]
fn two_rust_supernodes_python_superlink_tls_numpy_app() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("supernode-e2e-")
        .tempdir()
        .expect("scratch dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster set-up (is the venv there?)");
    cluster
        .start_superlink(Side::Python, &[])
        .expect("Python SuperLink starts");
    cluster
        .start_supernodes(&[Side::Rust, Side::Rust], None)
        .expect("our SuperNodes register over TLS");
    let run_started = Instant::now();
    let result = cluster.run_app_to("finished:completed");
    let logs: Vec<String> = cluster
        .supernodes()
        .iter()
        .map(|node| {
            format!(
                "--- {}\n{}",
                node.name(),
                node.log_text().unwrap_or_default()
            )
        })
        .collect();
    let (run_id, run) = match result {
        Ok(done) => done,
        Err(error) => {
            let superlink = cluster
                .superlink()
                .and_then(|p| p.log_text().ok())
                .unwrap_or_default();
            panic!(
                "run did not complete: {error}\n--- superlink\n{superlink}\n{}",
                logs.join("\n")
            );
        }
    };
    println!(
        "run {run_id:?} ({}) finished:completed in {:.1} s; test wall time {:.1} s",
        run.fab_id,
        run_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Shown with --nocapture: what an operator sees.
    println!("{}", logs[0]);
    // Each SuperNode served every round: 3 × (train + evaluate) messages.
    for log in &logs {
        let replies = log.matches("Sent reply").count();
        assert!(
            replies >= 6,
            "a SuperNode sent only {replies} replies:\n{log}"
        );
        assert!(!log.contains("ClientApp raised an exception"), "{log}");
    }
    // Stopping the cluster sends DeleteNode from both SuperNodes and they exit 0.
    let nodes = cluster.supernodes();
    for node in nodes.iter_mut() {
        let status = node
            .terminate(Duration::from_secs(15))
            .expect("terminate SuperNode");
        let log = node.log_text().unwrap_or_default();
        assert!(
            status.success(),
            "{} exited with {status:?}:\n{log}",
            node.name()
        );
        assert!(log.contains("Unregistered node"), "{log}");
    }
}

/// The SuperLink restarts (in-memory state, so it forgets every node): our SuperNode rides out
/// the outage on retried `UNAVAILABLE` calls, notices through `Ping` that it is unknown,
/// registers again, and the next run completes.
#[test]
fn rust_supernode_reregisters_after_python_superlink_restart() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("supernode-restart-")
        .tempdir()
        .expect("scratch dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster set-up (is the venv there?)");
    cluster
        .start_superlink(Side::Python, &[])
        .expect("Python SuperLink starts");
    cluster
        .start_supernodes(&[Side::Rust, Side::Rust], None)
        .expect("our SuperNodes register");

    // The Python SuperLink ignores SIGTERM (CLI.md §1.3): this ends in SIGKILL.
    cluster
        .stop_superlink(Duration::from_secs(2))
        .expect("stop SuperLink");
    std::thread::sleep(Duration::from_secs(3));
    cluster
        .start_superlink(Side::Python, &[])
        .expect("SuperLink restarts on the same ports");
    let restarted = Instant::now();
    let waited = cluster.wait_for_nodes(2);
    let logs: Vec<String> = cluster
        .supernodes()
        .iter()
        .map(|node| {
            format!(
                "--- {}\n{}",
                node.name(),
                node.log_text().unwrap_or_default()
            )
        })
        .collect();
    if let Err(error) = waited {
        panic!(
            "SuperNodes did not register again: {error}\n{}",
            logs.join("\n")
        );
    }
    println!(
        "both SuperNodes registered again {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    for log in &logs {
        assert!(log.contains("registering again"), "{log}");
    }
    let (run_id, _) = cluster
        .run_app_to("finished:completed")
        .expect("a run after the restart completes");
    println!(
        "run {run_id:?} after the restart finished:completed; test wall time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `--isolation process`: each of our SuperNodes waits for a separately started, long-running
/// Python `flwr-clientapp` (no `--token`), which polls `GetToken` until a message is there.
#[test]
fn process_isolation_with_long_running_python_clientapps() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("supernode-process-")
        .tempdir()
        .expect("scratch dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster set-up (is the venv there?)");
    cluster
        .start_superlink(Side::Python, &[])
        .expect("Python SuperLink starts");
    let mut apps = Vec::new();
    for index in 0..2 {
        let [io_port] = free_ports::<1>().expect("port");
        let io_address = format!("127.0.0.1:{io_port}");
        let home = dir.path().join(format!("home-{index}"));
        let node = cluster
            .venv()
            .command(target_bin("flower-supernode"))
            .env("FLWR_HOME", &home)
            .arg("--root-certificates")
            .arg(&cluster.pki().ca_cert)
            .arg("--superlink")
            .arg(cluster.fleet_address())
            .arg("--node-config")
            .arg(format!("partition-id={index} num-partitions=2"))
            .arg("--isolation")
            .arg("process")
            .arg("--clientappio-api-address")
            .arg(&io_address);
        let node = Proc::spawn(&format!("supernode-{index}"), &node, dir.path()).expect("spawn");
        cluster.supernodes().push(node);
        let app = cluster
            .venv()
            .command(cluster.venv().clientapp())
            .env("FLWR_HOME", &home)
            .arg("--insecure")
            .arg("--clientappio-api-address")
            .arg(&io_address);
        apps.push(Proc::spawn(&format!("clientapp-{index}"), &app, dir.path()).expect("spawn"));
    }
    cluster.wait_for_nodes(2).expect("our SuperNodes register");
    let result = cluster.run_app_to("finished:completed");
    let logs: Vec<String> = cluster
        .supernodes()
        .iter()
        .chain(apps.iter())
        .map(|p| format!("--- {}\n{}", p.name(), p.log_text().unwrap_or_default()))
        .collect();
    if let Err(error) = result {
        panic!("run did not complete: {error}\n{}", logs.join("\n"));
    }
    for app in &apps {
        assert!(
            app.is_running(),
            "a long-running flwr-clientapp exited:\n{}",
            logs.join("\n")
        );
        let log = app.log_text().unwrap_or_default();
        assert!(
            log.matches("Pushing ClientAppOutputs").count() >= 6,
            "{log}"
        );
    }
    println!(
        "process isolation: finished:completed; test wall time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
