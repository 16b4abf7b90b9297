//! End to end: two of our SuperNodes against the Python `flower-superlink` 1.14.0 over TLS
//! (openssl PKI), running the `flwr new --framework NumPy` app for 3 rounds with `flwr run`.
//! The real `flwr-clientapp` runs the Python ClientApp through our ClientAppIo server.
//!
//! Needs the reference virtualenv (`$FLWR_VENV`, else `<repo>/.venv`; `scripts/test` makes it).

use std::time::Instant;

use flwr_testkit::cluster::{Cluster, Side};

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
            .terminate(std::time::Duration::from_secs(15))
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
