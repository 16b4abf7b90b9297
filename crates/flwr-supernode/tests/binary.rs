//! The `flower-supernode` binary: bad command lines and giving up on an unreachable SuperLink.
//!
//! Every refusal must be one clear `error: ...` line naming the flag, with a non-zero exit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flower-supernode");

/// Runs the binary with `args`, killing it if it outlives `limit`.
fn run(args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flower-supernode");
    for _ in 0..(limit.as_millis() / 50) {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("try_wait").is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("wait");
    (output, started.elapsed())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn bad_flags_give_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--max-retries", "many"], "--max-retries"),
        (&["--max-retries", "-1"], "--max-retries"),
        (&["--max-wait-time", "-2"], "--max-wait-time"),
        (&["--isolation", "thread"], "--isolation"),
        (
            &["--insecure", "--root-certificates", "ca.pem"],
            "--root-certificates",
        ),
        (
            &["--root-certificates", "/nonexistent/ca.pem"],
            "--root-certificates",
        ),
        (&["--grpc-adapter"], "--grpc-adapter"),
        (&["--rest"], "--rest"),
        (&["--grpc-rere", "--rest"], "--rest"),
        (&["--superlink", "no-port"], "--superlink"),
        (
            &["--clientappio-api-address", "x:99999"],
            "--clientappio-api-address",
        ),
        (&["--node-config", "name=abc"], "--node-config"),
        (&["--node-config", "k=1 k=2"], "--node-config"),
        (
            &["--auth-supernode-public-key", "k.pub"],
            "--auth-supernode-private-key",
        ),
        (
            &[
                "--auth-supernode-private-key",
                "/nonexistent/k",
                "--auth-supernode-public-key",
                "/nonexistent/k.pub",
            ],
            "--auth-supernode-private-key",
        ),
        (&["path/to/app"], "APP"),
    ];
    for (args, flag) in cases {
        let (output, _) = run(args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: not one line:\n{stderr}"
        );
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?}: {stderr} does not name {flag}"
        );
    }
}

#[test]
fn help_lists_every_reference_flag() {
    let (output, _) = run(&["--help"], Duration::from_secs(10));
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--insecure",
        "--grpc-rere",
        "--grpc-adapter",
        "--rest",
        "--root-certificates",
        "--server",
        "--superlink",
        "--max-retries",
        "--max-wait-time",
        "--auth-supernode-private-key",
        "--auth-supernode-public-key",
        "--node-config",
        "--flwr-dir",
        "--isolation",
        "--clientappio-api-address",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(help.contains("0.0.0.0:9092") && help.contains("0.0.0.0:9094"));
    assert!(help.contains("[default: subprocess]"));
}

#[test]
fn max_retries_zero_gives_up_at_once() {
    // Nothing listens on this port once the probe listener is gone.
    let dead = free_port();
    let io = free_port();
    let (output, elapsed) = run(
        &[
            "--insecure",
            "--superlink",
            &format!("127.0.0.1:{dead}"),
            "--max-retries",
            "0",
            "--clientappio-api-address",
            &format!("127.0.0.1:{io}"),
        ],
        Duration::from_secs(20),
    );
    println!("gave up after {:.2} s", elapsed.as_secs_f64());
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let line = last_line(&output);
    assert!(
        line.starts_with("error: lost the SuperLink: CreateNode: gave up after 1 try"),
        "{line}"
    );
    assert!(line.contains("Unavailable"), "{line}");
}

#[test]
fn max_wait_time_bounds_retrying() {
    let dead = free_port();
    let io = free_port();
    let (output, elapsed) = run(
        &[
            "--insecure",
            "--superlink",
            &format!("127.0.0.1:{dead}"),
            "--max-wait-time",
            "2",
            "--clientappio-api-address",
            &format!("127.0.0.1:{io}"),
        ],
        Duration::from_secs(20),
    );
    println!("gave up after {:.2} s", elapsed.as_secs_f64());
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert!(last_line(&output).starts_with("error: lost the SuperLink: CreateNode: gave up after"));
}

#[test]
fn clientappio_port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (output, _) = run(
        &[
            "--insecure",
            "--superlink",
            "127.0.0.1:1",
            "--clientappio-api-address",
            &format!("127.0.0.1:{port}"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(output.status.code(), Some(1));
    let line = last_line(&output);
    assert!(
        line.starts_with(&format!(
            "error: Port in server address 127.0.0.1:{port} is already in use"
        )),
        "{line}"
    );
}

#[test]
fn sigterm_while_connecting_exits_zero() {
    let dead = free_port();
    let io = free_port();
    let mut child = Command::new(BIN)
        .args([
            "--insecure",
            "--superlink",
            &format!("127.0.0.1:{dead}"),
            "--clientappio-api-address",
            &format!("127.0.0.1:{io}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(
        stderr.contains("Received SIGTERM") && stderr.contains("Disconnect and shut down"),
        "{stderr}"
    );
}
