//! The all-Python reference flow, driven by the harness: proves the harness works and gives the
//! baseline wall time that our SuperLink/SuperNode are compared against.
//!
//! One Python `flower-superlink` (TLS with an openssl-made PKI), two Python `flower-supernode`s,
//! `flwr run` of the `flwr new` NumPy app for 3 rounds, then `flwr ls` until
//! `finished:completed` and `flwr log --show`.
//!
//! Needs the reference virtualenv (`$FLWR_VENV`, else `<workspace>/.venv`, made by scripts/test)
//! and `openssl`; without them the test fails, it does not skip.

use std::path::Path;
use std::time::{Duration, Instant};

use flwr_testkit::{free_ports, Federation, Flwr, NumpyApp, Pki, Proc, Venv};

const FEDERATION: &str = "reference";
const STARTUP: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn reference_flow_runs_three_rounds_over_tls() {
    let scratch = tempfile::Builder::new()
        .prefix("flwr-testkit-reference-")
        .tempdir()
        .unwrap_or_else(|error| panic!("creating a temp dir: {error}"));
    if let Err(error) = reference_flow(scratch.path()) {
        // Keep the logs of every process for the post-mortem.
        let kept = scratch.keep();
        panic!(
            "reference flow failed: {error}\n(logs kept in {})",
            kept.display()
        );
    }
}

fn reference_flow(dir: &Path) -> flwr_testkit::Result<()> {
    let setup_started = Instant::now();
    let venv = Venv::locate()?;
    let pki = Pki::generate_with_openssl(&dir.join("certs"))?;
    // Every address explicit: the defaults (SuperLink 9091-9093, SuperNode ClientAppIo
    // 0.0.0.0:9094) would collide between the two SuperNodes and with parallel tests.
    let [fleet, serverappio, exec, clientappio_0, clientappio_1] = free_ports::<5>()?;
    let federation =
        Federation::with_root_certificates(FEDERATION, format!("127.0.0.1:{exec}"), &pki.ca_cert);
    let app = NumpyApp::create(&venv, dir, &federation)?;
    let setup = setup_started.elapsed();

    let flow_started = Instant::now();
    let superlink_command = venv
        .command(venv.superlink())
        .env("FLWR_HOME", dir.join("home-superlink"))
        .arg("--ssl-ca-certfile")
        .arg(&pki.ca_cert)
        .arg("--ssl-certfile")
        .arg(&pki.server_cert)
        .arg("--ssl-keyfile")
        .arg(&pki.server_key)
        .arg("--fleet-api-address")
        .arg(format!("127.0.0.1:{fleet}"))
        .arg("--serverappio-api-address")
        .arg(format!("127.0.0.1:{serverappio}"))
        .arg("--exec-api-address")
        .arg(format!("127.0.0.1:{exec}"));
    let mut superlink = Proc::spawn("superlink", &superlink_command, dir)?;
    // With `--isolation subprocess` it ignores SIGTERM (CLI.md §1.3); don't wait long for it.
    superlink.set_drop_grace(Duration::from_secs(2));
    superlink.wait_for_log("Starting Fleet API", STARTUP)?;

    let mut supernodes = Vec::new();
    for (partition, clientappio) in [clientappio_0, clientappio_1].into_iter().enumerate() {
        let command = venv
            .command(venv.supernode())
            .env("FLWR_HOME", dir.join(format!("home-supernode-{partition}")))
            .arg("--root-certificates")
            .arg(&pki.ca_cert)
            .arg("--superlink")
            .arg(format!("127.0.0.1:{fleet}"))
            .arg("--node-config")
            .arg(format!("partition-id={partition} num-partitions=2"))
            .arg("--clientappio-api-address")
            .arg(format!("127.0.0.1:{clientappio}"));
        supernodes.push(Proc::spawn(
            &format!("supernode-{partition}"),
            &command,
            dir,
        )?);
    }
    superlink.wait_for_log_count("Created node_id", 2, STARTUP)?;

    // `flwr run` writes the FAB into its working directory (and deletes it afterwards).
    let flwr = Flwr::from_venv(&venv, dir);
    let run_id = flwr.run(app.dir(), FEDERATION)?;
    let run = flwr.wait_for_status(
        run_id,
        app.dir(),
        FEDERATION,
        "finished:completed",
        RUN_TIMEOUT,
    )?;
    let flow = flow_started.elapsed();

    assert_eq!(run.fab_id, "test/numpyapp");
    let log = flwr.log(run_id, app.dir(), FEDERATION)?;
    for expected in ["[ROUND 3]", "Run finished 3 round(s)"] {
        assert!(
            log.contains(expected),
            "`flwr log` lacks {expected:?}:\n{log}"
        );
    }

    // SuperNodes first: on SIGTERM they send DeleteNode and exit 0, but only while the SuperLink
    // still answers; against a dead SuperLink they retry forever.
    for supernode in &mut supernodes {
        let status = supernode.terminate(Duration::from_secs(15))?;
        assert!(status.success(), "{} ended with {status}", supernode.name());
    }
    let superlink_status = superlink.terminate(Duration::from_secs(2))?;
    println!("superlink ended with {superlink_status}");

    println!(
        "reference setup time (openssl PKI, flwr new): {:.2} s",
        setup.as_secs_f64()
    );
    println!("reference flow wall time: {:.2} s", flow.as_secs_f64());
    Ok(())
}
