//! The demo end to end with the binaries of this target directory: a small federation that
//! must complete, and one whose ServerApp fails, which must stop everything too.
//!
//! `cargo test --workspace` builds every package's binaries; under `cargo test -p flwr-demo`
//! missing ones are built first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flwr_demo::{Cancel, DemoConfig, DemoError, Event, Reporter};
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

/// Processes (other than zombies) whose command line or environment mentions `dir`.
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
        let cmdline = text(read("cmdline"));
        let environ = text(read("environ"));
        if cmdline.contains(&needle) || environ.contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Waits briefly for `dir`'s processes to be gone (a killed group's members may take a moment
/// to be reaped by init), then returns the survivors.
fn survivors(dir: &Path) -> Vec<String> {
    for _ in 0..50 {
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
        .prefix("flwr-demo-test-")
        .tempdir()
        .expect("temp dir")
}

#[test]
fn a_small_federation_completes_and_leaves_nothing_running() {
    let scratch = scratch();
    let work = scratch.path().join("work");
    let out = scratch.path().join("out");
    let mut config = DemoConfig::new(bin_dir());
    config.nodes = 2;
    config.rounds = 2;
    config.work_dir = Some(work.clone());
    config.out_dir = out.clone();
    config.run_timeout = Duration::from_secs(120);

    let summary = flwr_demo::run(config).unwrap_or_else(|error| panic!("demo failed: {error}"));
    assert_eq!(summary.summary_path, out.join("summary.json"));

    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).expect("summary"))
            .expect("valid JSON");
    assert_eq!(json["rounds_requested"], 2, "{json:#}");
    assert_eq!(json["rounds_completed"], 2, "{json:#}");
    assert_eq!(json["nodes"], 2, "{json:#}");
    assert_eq!(json["rogue_refused"], true, "{json:#}");
    assert_ne!(json["rogue_exit_code"], 0, "{json:#}");
    assert_eq!(json["run_status"], "finished:completed", "{json:#}");
    let rounds = json["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2, "{json:#}");
    let accuracy = |round: &serde_json::Value| round["eval_accuracy"].as_f64().expect("accuracy");
    let (first, last) = (accuracy(&rounds[0]), accuracy(&rounds[1]));
    assert_eq!(json["final_accuracy"].as_f64(), Some(last), "{json:#}");
    assert!(last >= first, "accuracy fell from {first} to {last}");
    assert!(
        last > 0.65,
        "final accuracy {last} is not well above chance"
    );
    for round in rounds {
        assert!(round["train_loss"].as_f64().is_some(), "{json:#}");
    }
    let central = json["central_accuracy"].as_f64().expect("central accuracy");
    assert!((central - last).abs() < 0.05, "central {central} vs {last}");
    assert!(json["wall_time_seconds"].as_f64().expect("wall time") > 0.0);
    let svg = fs::read_to_string(out.join("learning_curve.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("accuracy"));

    // Every log is in the kept work dir, including the rogue's refusal.
    let rogue = fs::read_to_string(work.join("logs/rogue-supernode.log")).expect("rogue log");
    assert!(rogue.contains("Access denied"), "{rogue}");

    let left = survivors(&work);
    assert!(left.is_empty(), "processes survived: {left:#?}");
}

#[test]
fn a_failing_serverapp_fails_the_demo_and_stops_everything() {
    let scratch = scratch();
    let real = bin_dir();
    // The real servers and ClientApp, and a ServerApp that crashes at once.
    let bins = scratch.path().join("bins");
    fs::create_dir_all(&bins).expect("bin dir");
    for name in ["flower-superlink", "flower-supernode", "flwr-rs-clientapp"] {
        std::os::unix::fs::symlink(real.join(name), bins.join(name)).expect("symlink");
    }
    let serverapp = bins.join("flwr-rs-serverapp");
    fs::write(
        &serverapp,
        "#!/bin/sh\necho 'broken ServerApp' >&2\nexit 3\n",
    )
    .expect("script");
    fs::set_permissions(&serverapp, fs::Permissions::from_mode(0o755)).expect("chmod");

    let work = scratch.path().join("work");
    let mut config = DemoConfig::new(bins);
    config.nodes = 1;
    config.rounds = 1;
    config.work_dir = Some(work.clone());
    config.out_dir = scratch.path().join("out");
    config.run_timeout = Duration::from_secs(90);

    let error = flwr_demo::run(config).expect_err("the run cannot complete");
    match &error {
        DemoError::RunFailed { status, .. } => assert_eq!(status, "finished:failed"),
        other => panic!("unexpected error: {other}"),
    }
    assert!(!scratch.path().join("out/summary.json").exists());
    let left = survivors(&work);
    assert!(left.is_empty(), "processes survived: {left:#?}");
}

/// Cancels the demo once the ServerApp is training.
struct CancelInFirstRound(Cancel);

impl Reporter for CancelInFirstRound {
    fn report(&mut self, event: Event<'_>) {
        if let Event::RoundStarted { round: 1, .. } = event {
            self.0.cancel();
        }
    }
}

#[test]
fn cancelling_mid_run_stops_every_process() {
    let scratch = scratch();
    let work = scratch.path().join("work");
    let mut config = DemoConfig::new(bin_dir());
    config.nodes = 2;
    config.rounds = 3;
    config.work_dir = Some(work.clone());
    config.out_dir = scratch.path().join("out");
    let mut reporter = CancelInFirstRound(config.cancel.clone());

    let error = flwr_demo::run_with(config, &mut reporter).expect_err("cancelled");
    assert!(matches!(error, DemoError::Cancelled), "{error}");
    let left = survivors(&work);
    assert!(left.is_empty(), "processes survived: {left:#?}");
}

#[test]
fn missing_binaries_and_bad_settings_fail_before_starting_anything() {
    let scratch = scratch();
    let mut config = DemoConfig::new(scratch.path());
    config.work_dir = Some(scratch.path().join("work"));
    let error = flwr_demo::run(config.clone()).expect_err("no binaries");
    assert!(matches!(error, DemoError::BinaryMissing(_)), "{error}");
    assert!(error.to_string().contains("flower-superlink"), "{error}");

    config.nodes = 0;
    let error = flwr_demo::run(config).expect_err("no nodes");
    assert!(matches!(error, DemoError::Config(_)), "{error}");
}
