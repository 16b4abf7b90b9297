//! Bad command lines are refused with one `error: ...` line that names the flag or file, exit
//! status 64, and no panic.

mod common;

use common::{loadgen, text};

/// Runs `flower-loadgen args` and returns its single stderr line after checking the refusal.
fn refused(args: &[&str]) -> String {
    let output = loadgen(args);
    assert_eq!(
        output.status.code(),
        Some(64),
        "{args:?}: {}",
        text(&output)
    );
    assert!(output.stdout.is_empty(), "{args:?}: {}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line expected: {stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    lines[0].to_owned()
}

#[test]
fn bad_flags_are_refused_with_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing_keys = dir.path().join("no-such-keys");
    let missing_ca = dir.path().join("no-such-ca.crt");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--nodes", "many", "--no-auth"], "--nodes"),
        (vec!["--nodes", "0", "--no-auth"], "--nodes"),
        (vec!["--mode", "burst", "--no-auth"], "--mode"),
        (vec!["--rpc", "delete", "--no-auth"], "--rpc"),
        (vec!["--seconds", "-3", "--no-auth"], "--seconds"),
        (vec!["--superlink", "nohost", "--no-auth"], "--superlink"),
        (vec!["--insecure"], "--keys"),
        (
            vec!["--no-auth", "--rpc", "push"],
            "--serverappio-api-address",
        ),
        (vec!["--no-auth", "--payload-bytes", "5"], "--payload-bytes"),
        (
            vec!["--no-auth", "--mode", "cadence", "--concurrency", "5"],
            "--concurrency",
        ),
        (
            vec!["--no-auth", "--insecure", "--root-certificates", "x"],
            "--insecure",
        ),
        (
            vec![
                "--no-auth",
                "--root-certificates",
                missing_ca.to_str().unwrap(),
            ],
            "no-such-ca.crt",
        ),
        (
            vec![
                "--insecure",
                "--keys",
                missing_keys.to_str().unwrap(),
                "--nodes",
                "2",
            ],
            "no-such-keys",
        ),
        (
            vec!["--no-auth", "--server-pid", "4000000000"],
            "--server-pid",
        ),
        (vec!["--generate-only", "--no-auth"], "--generate-keys"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, names) in cases {
        let line = refused(&args);
        assert!(
            line.contains(names),
            "{args:?}: {line:?} does not name {names}"
        );
    }
}

#[test]
fn too_many_connections_for_the_open_file_limit_suggest_sharing_them() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    if hard > 1_000_064 {
        eprintln!("SKIPPED: the hard open-file limit ({hard}) fits a million connections");
        return;
    }
    // More connections than any process here may open; refused before any connection is made.
    let line = refused(&[
        "--no-auth",
        "--insecure",
        "--superlink",
        "127.0.0.1:9",
        "--nodes",
        "1000000",
    ]);
    assert!(line.contains("--nodes-per-connection"), "{line}");
    assert!(line.contains("open files"), "{line}");
}

#[test]
fn generated_keys_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    common::generate_keys(&keys, 2);
    let line = refused(&[
        "--generate-keys",
        keys.to_str().unwrap(),
        "--generate-only",
        "--nodes",
        "2",
    ]);
    assert!(line.contains("already exists"), "{line}");
}
