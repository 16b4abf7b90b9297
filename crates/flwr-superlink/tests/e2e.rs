//! End to end with the reference: our `flower-superlink` over TLS (openssl PKI), two Python
//! `flower-supernode`s, the `flwr new` NumPy app and the Python `flwr` CLI, `flwr-serverapp`
//! launched by our SuperLink from the virtualenv on `PATH`.
//!
//! Needs the reference virtualenv (`$FLWR_VENV`, else `<workspace>/.venv`, made by scripts/test)
//! and `openssl`; without them the tests fail, they do not skip. The tests run one at a time:
//! each starts five Python processes, and two cores are all CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flwr_testkit::cluster::{Cluster, Side, FEDERATION, RUN_TIMEOUT};

/// One federation at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` in a fresh directory; keeps the directory (all process logs) if it fails.
fn with_cluster_dir(name: &str, test: impl FnOnce(&Path) -> flwr_testkit::Result<()>) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("flwr-superlink-{name}-"))
        .tempdir()
        .expect("temp dir");
    if let Err(error) = test(scratch.path()) {
        let kept = scratch.keep();
        panic!("{name} failed: {error}\n(logs kept in {})", kept.display());
    }
}

#[test]
fn python_supernodes_train_three_rounds_through_our_superlink_over_tls() {
    with_cluster_dir("tls-flow", |dir| {
        let mut cluster = Cluster::new(dir)?;
        let started = Instant::now();
        cluster.start_superlink(Side::Rust, &[])?;
        cluster.start_supernodes(&[Side::Python, Side::Python], None)?;
        let (run_id, run) = cluster.run_app_to("finished:completed")?;
        let wall = started.elapsed();
        assert_eq!(run.fab_id, "test/numpyapp");

        let log = cluster
            .flwr()
            .log(run_id, cluster.app().dir(), FEDERATION)?;
        for expected in ["[ROUND 3]", "Run finished 3 round(s)"] {
            assert!(
                log.contains(expected),
                "`flwr log` lacks {expected:?}:\n{log}"
            );
        }
        let superlink_log = cluster.superlink().map(|s| s.log_text()).transpose()?;
        let superlink_log = superlink_log.unwrap_or_default();
        assert!(
            superlink_log.contains("flwr-serverapp exited with status 0"),
            "{superlink_log}"
        );
        let status = cluster.stop_superlink(Duration::from_secs(10))?;
        assert!(status.success(), "superlink ended with {status}");
        println!(
            "Rust SuperLink + 2 Python SuperNodes, 3 rounds over TLS: flow wall time {:.2} s",
            wall.as_secs_f64()
        );
        Ok(())
    });
}

#[test]
fn a_sqlite_superlink_lists_the_finished_run_after_a_restart() {
    with_cluster_dir("sqlite-restart", |dir| {
        let database = dir.join("superlink.db").display().to_string();
        let extra = ["--database".to_owned(), database];
        let mut cluster = Cluster::new(dir)?;
        cluster.start_superlink(Side::Rust, &extra)?;
        cluster.start_supernodes(&[Side::Python, Side::Python], None)?;
        let (run_id, _) = cluster.run_app_to("finished:completed")?;

        let status = cluster.stop_superlink(Duration::from_secs(10))?;
        assert!(status.success(), "superlink ended with {status}");
        cluster.start_superlink(Side::Rust, &extra)?;
        let runs = cluster.flwr().ls(cluster.app().dir(), FEDERATION)?;
        let run = runs
            .iter()
            .find(|run| run.run_id == run_id)
            .unwrap_or_else(|| panic!("run {run_id} not listed after restart: {runs:?}"));
        assert_eq!(run.status, "finished:completed");
        Ok(())
    });
}

#[test]
fn flwr_stop_stops_a_running_run_and_its_serverapp() {
    with_cluster_dir("stop", |dir| {
        let mut cluster = Cluster::new(dir)?;
        // Long enough that the run is still going when it is stopped.
        cluster.app().set_num_server_rounds(10_000)?;
        cluster.start_superlink(Side::Rust, &[])?;
        cluster.start_supernodes(&[Side::Python, Side::Python], None)?;
        let app_dir = cluster.app().dir().to_owned();
        let flwr = cluster.flwr().clone();
        let run_id = flwr.run(&app_dir, FEDERATION)?;
        flwr.wait_for_status(run_id, &app_dir, FEDERATION, "running", RUN_TIMEOUT)?;
        let superlink_pid = cluster.superlink().map(|s| s.id()).expect("superlink runs");
        let serverapps = serverapp_children(superlink_pid);
        assert_eq!(
            serverapps.len(),
            1,
            "flwr-serverapp children: {serverapps:?}"
        );

        flwr.stop(run_id, &app_dir, FEDERATION)?;
        flwr.wait_for_status(
            run_id,
            &app_dir,
            FEDERATION,
            "finished:stopped",
            Duration::from_secs(30),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(serverapps[0]) {
            assert!(
                Instant::now() < deadline,
                "flwr-serverapp {} survived flwr stop",
                serverapps[0]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    });
}

/// Pids of live `flwr-serverapp` processes whose parent is `parent`.
fn serverapp_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_serverapp = String::from_utf8_lossy(&cmdline).contains("flwr-serverapp");
            is_serverapp && parent_of(*pid) == Some(parent) && process_alive(*pid)
        })
        .collect()
}

/// Field 4 of `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}
