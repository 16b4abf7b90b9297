//! The high-availability demo end to end with the binaries of this target directory: two
//! SuperLink replicas on PostgreSQL behind HAProxy, one SIGKILLed mid-run, and the run must
//! still complete. Needs Debian's postgresql and haproxy packages (scripts/test installs them).
//!
//! `cargo test --workspace` builds every package's binaries; under `cargo test -p flwr-demo`
//! missing ones are built first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flwr_demo::ha::{HaConfig, HaError, KillTarget, HA_SUMMARY_FILE};
use flwr_testkit::cluster::target_bin;

const BINARIES: [&str; 4] = [
    "flower-superlink",
    "flower-supernode",
    "flwr-rs-serverapp",
    "flwr-rs-clientapp",
];

/// The directory of this target's binaries, building any that are missing.
fn bin_dir() -> PathBuf {
    let dir = target_bin("flower-superlink")
        .parent()
        .expect("target directory")
        .to_owned();
    if BINARIES.iter().all(|name| dir.join(name).is_file()) {
        return dir;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--bins",
        "-p",
        "flwr-superlink",
        "-p",
        "flwr-supernode",
        "-p",
        "flwr-examples",
    ]);
    if dir.ends_with("release") {
        command.arg("--release");
    }
    if let Some(target) = dir.parent() {
        command.arg("--target-dir").arg(target);
    }
    let status = command.status().expect("runs cargo build");
    assert!(status.success(), "building the binaries failed: {status}");
    dir
}

/// Live processes (not zombies) whose command line or environment mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let read = |file: &str| fs::read(entry.path().join(file)).unwrap_or_default();
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).replace('\0', " ");
        let stat = text(read("stat"));
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            continue;
        }
        let cmdline = text(read("cmdline"));
        let environ = text(read("environ"));
        if cmdline.contains(&needle) || environ.contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Waits briefly for `dir`'s processes to be gone, then returns the survivors.
fn survivors(dir: &Path) -> Vec<String> {
    for _ in 0..100 {
        let left = processes_mentioning(dir);
        if left.is_empty() {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    processes_mentioning(dir)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("flwr-ha-demo-test-")
        .tempdir()
        .expect("temp dir")
}

fn small_config(scratch: &Path) -> HaConfig {
    let mut config = HaConfig::new(bin_dir());
    config.demo.nodes = 2;
    config.demo.rounds = 4;
    config.demo.local_epochs = 1;
    config.demo.work_dir = Some(scratch.join("work"));
    config.demo.out_dir = scratch.join("out");
    config.kill_after_round = 2;
    config
}

#[test]
fn killing_the_serverapps_replica_mid_run_fails_over_and_the_run_completes() {
    let scratch = scratch();
    let config = small_config(scratch.path());
    let work = config.demo.work_dir.clone().expect("work dir");

    let summary = flwr_demo::ha::run_ha(config).unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(summary.run_status, "finished:completed", "{summary:#?}");
    assert_eq!(summary.rounds_completed, 4, "{summary:#?}");
    assert_eq!(summary.rounds.len(), 4, "{summary:#?}");
    for round in &summary.rounds {
        assert!(round.eval_loss.is_some(), "{summary:#?}");
    }
    assert!(summary.killed_ran_serverapp, "{summary:#?}");
    assert_ne!(summary.killed_replica, "", "{summary:#?}");
    assert!(summary.taken_over, "{summary:#?}");
    assert!(summary.restarts >= 1, "{summary:#?}");
    assert!(summary.failover_seconds > 0.0, "{summary:#?}");
    assert!(
        summary.supernodes.iter().all(|node| node.running),
        "{summary:#?}"
    );
    assert!(!summary.database.is_empty());

    let json: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(scratch.path().join("out").join(HA_SUMMARY_FILE)).expect("summary"),
    )
    .expect("valid JSON");
    assert_eq!(json["run_status"], "finished:completed", "{json:#}");
    assert_eq!(json["taken_over"], true, "{json:#}");
    // The database URL is shown without its password.
    let database = json["database"].as_str().expect("database");
    let password = database
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .map(|(_, password)| password);
    assert!(matches!(password, None | Some("***")), "{database}");

    let left = survivors(&work);
    assert!(left.is_empty(), "processes survived: {left:#?}");
}

#[test]
fn killing_the_other_replica_keeps_the_serverapp_and_the_run_completes() {
    let scratch = scratch();
    let mut config = small_config(scratch.path());
    config.kill = KillTarget::Other;
    let work = config.demo.work_dir.clone().expect("work dir");

    let summary = flwr_demo::ha::run_ha(config).unwrap_or_else(|error| panic!("{error}"));

    assert_eq!(summary.run_status, "finished:completed", "{summary:#?}");
    assert_eq!(summary.rounds_completed, 4, "{summary:#?}");
    assert!(!summary.killed_ran_serverapp, "{summary:#?}");
    assert!(!summary.taken_over, "{summary:#?}");
    assert_eq!(summary.restarts, 0, "{summary:#?}");
    assert!(summary.failover_seconds > 0.0, "{summary:#?}");
    assert!(
        summary.supernodes.iter().all(|node| node.running),
        "{summary:#?}"
    );

    let left = survivors(&work);
    assert!(left.is_empty(), "processes survived: {left:#?}");
}

#[test]
fn a_missing_haproxy_fails_before_starting_anything() {
    let scratch = scratch();
    let mut config = small_config(scratch.path());
    config.haproxy = Some(scratch.path().join("no-haproxy-here"));
    let error = flwr_demo::ha::run_ha(config).expect_err("no haproxy");
    assert!(matches!(error, HaError::Missing { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("install Debian's haproxy package"),
        "{error}"
    );
    assert!(!scratch.path().join("work").exists());
}
