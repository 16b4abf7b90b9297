//! Rust apps in a Python Flower 1.14 deployment, each test on its own loopback ports:
//!
//! - `rust_clientapps_serve_python_serverapp`: Python SuperLink (spawning the Python
//!   `flwr-serverapp` of the NumPy template) and two Python SuperNodes with
//!   `--isolation process`, each served by `flwr-rs-clientapp`; `flwr run` of the template
//!   must finish `completed`.
//! - `python_clientapps_serve_rust_serverapp`: Python SuperLink with `--isolation process`
//!   served by `flwr-rs-serverapp`; two Python SuperNodes spawning the Python
//!   `flwr-clientapp` of the template; `flwr run` must finish `completed`.
//! - `logreg_federation_matches_central_training`: the logistic-regression bundle with Rust
//!   apps on both sides of a Python SuperLink and SuperNodes; the per-round history logged by
//!   the ServerApp must show learning close to the centralised baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flwr_examples::logreg::{self, RoundSummary};
use flwr_testkit::cluster::{target_bin, Cluster, Side, FEDERATION, RUN_TIMEOUT};
use flwr_testkit::{free_ports, CommandLine, Proc};

/// How long a Rust app process may take to finish after its run completed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn clientapp(cluster: &Cluster, address: &str, extra: &[&str]) -> CommandLine {
    cluster
        .venv()
        .command(target_bin("flwr-rs-clientapp"))
        .args(["--clientappio-api-address", address, "--insecure"])
        .args(extra.iter().copied())
}

fn serverapp(cluster: &Cluster, address: &str) -> CommandLine {
    cluster
        .venv()
        .command(target_bin("flwr-rs-serverapp"))
        .args([
            "--serverappio-api-address",
            address,
            "--insecure",
            "--run-once",
        ])
}

/// Starts `count` Python SuperNodes with `--isolation process` and one `flwr-rs-clientapp`
/// for each; returns the app processes.
fn process_isolated_supernodes(cluster: &mut Cluster, count: usize) -> Vec<Proc> {
    let mut apps = Vec::new();
    for index in 0..count {
        let [port] = free_ports::<1>().expect("port");
        let address = format!("127.0.0.1:{port}");
        // argparse keeps the last occurrence, so these override the harness's defaults.
        let command = cluster
            .supernode_command(Side::Python, index, count, None)
            .expect("command")
            .args([
                "--isolation",
                "process",
                "--clientappio-api-address",
                &address,
            ]);
        let node =
            Proc::spawn(&format!("supernode-{index}"), &command, cluster.dir()).expect("spawn");
        cluster.supernodes().push(node);
        let app = Proc::spawn(
            &format!("rust-clientapp-{index}"),
            &clientapp(cluster, &address, &[]),
            cluster.dir(),
        )
        .expect("spawn clientapp");
        apps.push(app);
    }
    cluster.wait_for_nodes(count).expect("SuperNodes register");
    apps
}

/// The Python SuperLink with `--isolation process` and its ServerAppIo on a port we know.
fn process_isolated_superlink(cluster: &mut Cluster) -> String {
    let [port] = free_ports::<1>().expect("port");
    let address = format!("127.0.0.1:{port}");
    cluster
        .start_superlink(
            Side::Python,
            &[
                "--isolation".into(),
                "process".into(),
                "--serverappio-api-address".into(),
                address.clone(),
            ],
        )
        .expect("SuperLink starts");
    address
}

fn show_logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("--- {} ---\n{}", p.name(), p.log_text().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rust_clientapps_serve_python_serverapp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    cluster
        .start_superlink(Side::Python, &[])
        .expect("SuperLink starts");
    let apps = process_isolated_supernodes(&mut cluster, 2);

    let result = cluster.run_app_to("finished:completed");
    let logs = show_logs(&apps.iter().collect::<Vec<_>>());
    let (run_id, _) = result.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    // Each app handled its messages: 3 rounds of train + evaluate.
    for app in &apps {
        let log = app.log_text().expect("log");
        assert!(
            log.matches("Pushing ClientAppOutputs").count() >= 6,
            "{logs}"
        );
        assert!(
            app.is_running(),
            "a process-isolated app keeps polling\n{logs}"
        );
    }
    let run_log = cluster
        .flwr()
        .log(run_id, cluster.app().dir(), FEDERATION)
        .unwrap_or_default();
    assert!(
        run_log.contains("aggregate_evaluate: received 2 results and 0 failures"),
        "{run_log}"
    );
}

#[test]
fn python_clientapps_serve_rust_serverapp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    let serverappio = process_isolated_superlink(&mut cluster);
    cluster
        .start_supernodes(&[Side::Python, Side::Python], None)
        .expect("SuperNodes start");
    let mut server = Proc::spawn(
        "rust-serverapp",
        &serverapp(&cluster, &serverappio),
        cluster.dir(),
    )
    .expect("spawn serverapp");

    let result = cluster.run_app_to("finished:completed");
    let logs = show_logs(&[&server]);
    let (run_id, _) = result.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    let status = server.wait_for_exit(EXIT_TIMEOUT).expect("serverapp exits");
    assert!(status.success(), "{status}\n{logs}");
    let log = server.log_text().expect("log");
    assert!(
        log.contains("aggregate_fit: received 2 results and 0 failures"),
        "{log}"
    );
    assert!(
        log.contains("aggregate_evaluate: received 2 results and 0 failures"),
        "{log}"
    );
    // The ServerApp's log reached the SuperLink (PushLogs) and `flwr log`.
    let run_log = cluster
        .flwr()
        .log(run_id, cluster.app().dir(), FEDERATION)
        .expect("flwr log");
    assert!(run_log.contains("[ROUND 3]"), "{run_log}");
}

/// Copies the logreg bundle to `parent`, pointing its federation at the cluster.
fn logreg_bundle(cluster: &Cluster, parent: &Path, rounds: u32) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("app/logreg");
    let target = parent.join("logreg");
    fs::create_dir_all(target.join("logreg")).expect("mkdir");
    for file in [
        "logreg/__init__.py",
        "logreg/server_app.py",
        "logreg/client_app.py",
    ] {
        fs::copy(source.join(file), target.join(file)).expect("copy");
    }
    let text = fs::read_to_string(source.join("pyproject.toml")).expect("read");
    let head = &text[..text.find("[tool.flwr.federations]").expect("federations")];
    let head = head.replace(
        "num-server-rounds = 5",
        &format!("num-server-rounds = {rounds}"),
    );
    let pyproject = format!(
        "{head}[tool.flwr.federations]\ndefault = \"{FEDERATION}\"\n\n\
         [tool.flwr.federations.{FEDERATION}]\naddress = \"{}\"\nroot-certificates = \"{}\"\n",
        exec_address(cluster),
        cluster.pki().ca_cert.display()
    );
    fs::write(target.join("pyproject.toml"), pyproject).expect("write");
    target
}

/// The Exec address the cluster's NumPy app uses (read from its pyproject.toml).
fn exec_address(cluster: &Cluster) -> String {
    let text = fs::read_to_string(cluster.app().pyproject()).expect("read");
    let table: toml::Table = text.parse().expect("TOML");
    table["tool"]["flwr"]["federations"][FEDERATION]["address"]
        .as_str()
        .expect("address")
        .to_owned()
}

#[test]
fn logreg_federation_matches_central_training() {
    const ROUNDS: u32 = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    let serverappio = process_isolated_superlink(&mut cluster);
    let clientapps = process_isolated_supernodes(&mut cluster, 2);
    let mut server = Proc::spawn(
        "rust-serverapp",
        &serverapp(&cluster, &serverappio),
        cluster.dir(),
    )
    .expect("spawn serverapp");
    let bundle = logreg_bundle(&cluster, &dir.path().join("bundle"), ROUNDS);

    let flwr = cluster.flwr();
    let started = flwr.run(&bundle, FEDERATION).and_then(|run_id| {
        flwr.wait_for_status(
            run_id,
            &bundle,
            FEDERATION,
            "finished:completed",
            RUN_TIMEOUT,
        )
    });
    let mut all: Vec<&Proc> = clientapps.iter().collect();
    all.push(&server);
    let logs = show_logs(&all);
    started.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    server.wait_for_exit(EXIT_TIMEOUT).expect("serverapp exits");

    let log = server.log_text().expect("log");
    let rounds: Vec<RoundSummary> = log.lines().filter_map(RoundSummary::parse).collect();
    assert_eq!(rounds.len(), ROUNDS as usize, "{log}");
    let last = rounds.last().expect("rounds");
    let accuracy = last.eval_accuracy.expect("accuracy");
    let first_loss = rounds[0].train_loss.expect("train loss");
    let last_loss = last.train_loss.expect("train loss");
    assert!(last_loss < first_loss, "training loss falls: {rounds:?}");

    let settings = logreg::Settings::from_run_config(&flwr::Config::new());
    let epochs = usize::try_from(u64::from(ROUNDS) * settings.local_epochs).expect("small");
    let central =
        logreg::train_centrally(2, epochs, settings.learning_rate).expect("central training");
    eprintln!(
        "federated accuracy {accuracy:.4} vs central {:.4}; rounds {rounds:?}",
        central.accuracy
    );
    assert!(accuracy > 0.65, "{rounds:?}");
    assert!(
        (accuracy - central.accuracy).abs() < 0.05,
        "federated {accuracy} vs central {}",
        central.accuracy
    );
}

/// `PATH` with a directory first in which `flwr-clientapp` and `flwr-serverapp` are our
/// binaries, then the virtualenv's `bin/` and the inherited `PATH`.
fn rust_first_path(cluster: &Cluster) -> std::ffi::OsString {
    let bin = cluster.dir().join("rust-bin");
    fs::create_dir_all(&bin).expect("mkdir");
    for (name, target) in [
        ("flwr-clientapp", "flwr-rs-clientapp"),
        ("flwr-serverapp", "flwr-rs-serverapp"),
    ] {
        std::os::unix::fs::symlink(target_bin(target), bin.join(name)).expect("symlink");
    }
    let mut dirs = vec![bin, cluster.venv().bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH")
}

/// Default (subprocess) isolation everywhere: the Python SuperLink and SuperNodes spawn
/// `flwr-serverapp` / `flwr-clientapp --token T` from `PATH`, and there they find ours.
#[test]
fn rust_binaries_are_drop_ins_under_subprocess_isolation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    let path = rust_first_path(&cluster);
    let mut superlink = Proc::spawn(
        "superlink",
        &cluster
            .superlink_command(Side::Python, &[])
            .env("PATH", &path),
        cluster.dir(),
    )
    .expect("spawn SuperLink");
    // It ignores SIGTERM with subprocess isolation (CLI.md §1.3).
    superlink.set_drop_grace(Duration::from_secs(2));
    for index in 0..2 {
        let command = cluster
            .supernode_command(Side::Python, index, 2, None)
            .expect("command")
            .env("PATH", &path);
        let node =
            Proc::spawn(&format!("supernode-{index}"), &command, cluster.dir()).expect("spawn");
        cluster.supernodes().push(node);
    }
    superlink
        .wait_for_log_count("Created node_id", 2, Duration::from_secs(60))
        .expect("SuperNodes register");

    let result = cluster.run_app_to("finished:completed");
    let mut all: Vec<&Proc> = vec![&superlink];
    let nodes = cluster.supernodes().iter().collect::<Vec<_>>();
    all.extend(nodes);
    let logs = show_logs(&all);
    result.unwrap_or_else(|e| panic!("{e}\n{logs}"));
    // Children inherit stdout/stderr: the Rust apps logged into their parents' logs.
    let superlink_log = superlink.log_text().expect("log");
    assert!(
        superlink_log.contains("Starting Flower ServerApp (Rust"),
        "{logs}"
    );
    for node in cluster.supernodes().iter() {
        let log = node.log_text().expect("log");
        assert!(log.contains("Starting Flower ClientApp (Rust"), "{logs}");
        assert!(!log.contains("ClientApp raised an exception"), "{logs}");
    }
}
