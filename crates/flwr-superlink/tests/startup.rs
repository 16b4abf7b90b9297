//! The `flower-superlink` binary refuses bad configurations with one clear line and a non-zero
//! exit, before anything is started, and stops promptly with status 0 on SIGTERM/SIGINT.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flwr_testkit::{free_ports, CommandLine, Proc};

const BINARY: &str = env!("CARGO_BIN_EXE_flower-superlink");

/// Runs the binary with `args` (bounded: a config error must exit at once).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .env(
            "FLWR_HOME",
            std::env::temp_dir().join("flwr-superlink-startup-tests"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flower-superlink");
    for _ in 0..200 {
        if child.try_wait().expect("poll child").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("collect output");
    panic!(
        "flower-superlink {args:?} did not exit within 10 s; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts a failed start: the given exit code, exactly one `error:` line (the last line), and
/// that no server was started. Returns the error line.
fn assert_refused(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error line, stderr:\n{stderr}"
    );
    assert_eq!(stderr.lines().last(), Some(errors[0]), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("Starting Exec API"),
        "half-started:\n{stderr}"
    );
    errors[0].to_owned()
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

#[test]
fn tls_is_required_by_default() {
    let line = assert_refused(&run(&[]), 64);
    assert!(
        line.starts_with("error: Certificates are required unless running in insecure mode."),
        "{line}"
    );
}

#[test]
fn partial_tls_flags_are_refused() {
    let line = assert_refused(&run(&["--ssl-certfile", "server.pem"]), 64);
    assert!(
        line.contains("You need to provide valid file paths to `--ssl-certfile`"),
        "{line}"
    );
}

#[test]
fn missing_tls_files_name_the_flag_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let present = dir.path().join("present.pem");
    std::fs::write(&present, "x").expect("write");
    let missing = dir.path().join("missing.pem");
    let (present, missing) = (
        present.to_str().expect("utf-8"),
        missing.to_str().expect("utf-8"),
    );
    let line = assert_refused(
        &run(&[
            "--ssl-ca-certfile",
            present,
            "--ssl-certfile",
            missing,
            "--ssl-keyfile",
            present,
        ]),
        64,
    );
    assert_eq!(
        line,
        format!("error: Path argument `--ssl-certfile` does not point to a file: {missing}")
    );
}

#[test]
fn files_without_pem_content_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let junk = junk.to_str().expect("utf-8");
    let line = assert_refused(
        &run(&[
            "--ssl-ca-certfile",
            junk,
            "--ssl-certfile",
            junk,
            "--ssl-keyfile",
            junk,
        ]),
        64,
    );
    assert_eq!(
        line,
        format!("error: --ssl-ca-certfile: {junk}: no PEM certificate found")
    );
}

#[test]
fn bad_addresses_quote_the_reference_message() {
    let line = assert_refused(
        &run(&["--insecure", "--fleet-api-address", "localhost"]),
        64,
    );
    assert_eq!(
        line,
        "error: --fleet-api-address: Address (localhost) cannot be parsed (expected: URL or IPv4 \
         or IPv6)."
    );
}

#[test]
fn unsupported_modes_are_refused() {
    for (args, expected) in [
        (
            &["--insecure", "--fleet-api-type", "rest"][..],
            "error: --fleet-api-type rest: not supported yet",
        ),
        (
            &["--insecure", "--fleet-api-type", "grpc-adapter"][..],
            "error: --fleet-api-type grpc-adapter: not supported yet",
        ),
        (
            &[
                "--insecure",
                "--executor",
                "flwr.superexec.simulation:executor",
            ][..],
            "error: --executor flwr.superexec.simulation:executor: not supported yet",
        ),
    ] {
        assert_eq!(assert_refused(&run(args), 64), expected);
    }
}

#[test]
fn partial_node_auth_flags_are_refused() {
    let line = assert_refused(
        &run(&["--insecure", "--auth-superlink-public-key", "k.pub"]),
        64,
    );
    assert!(
        line.starts_with("error: Authentication requires providing file paths"),
        "{line}"
    );
}

#[test]
fn a_taken_port_stops_startup_before_anything_serves() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let [serverappio, exec] = free_ports::<2>().expect("ports");
    let output = run(&[
        "--insecure",
        "--fleet-api-address",
        &local(taken_port),
        "--serverappio-api-address",
        &local(serverappio),
        "--exec-api-address",
        &local(exec),
    ]);
    let line = assert_refused(&output, 1);
    assert_eq!(
        line,
        format!(
            "error: --fleet-api-address: Port in server address 127.0.0.1:{taken_port} is \
             already in use."
        )
    );
    // The ports bound before the failure were released with the process.
    TcpListener::bind(("127.0.0.1", exec)).expect("exec port released");
}

#[test]
fn an_unusable_database_is_refused_before_anything_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = dir.path().join("missing-dir").join("state.db");
    let database = database.to_str().expect("utf-8");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let output = run(&[
        "--insecure",
        "--database",
        database,
        "--fleet-api-address",
        &local(fleet),
        "--serverappio-api-address",
        &local(serverappio),
        "--exec-api-address",
        &local(exec),
    ]);
    let line = assert_refused(&output, 1);
    assert!(
        line.starts_with(&format!("error: --database {database}: ")),
        "{line}"
    );
}

/// A SuperLink process with free ports and `extra` flags, logging into `dir`.
fn spawn_superlink(dir: &Path, extra: &[&str]) -> Proc {
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let command = CommandLine::new(BINARY)
        .env("FLWR_HOME", dir.join("home"))
        .args(["--insecure", "--storage-dir"])
        .arg(dir.join("ffs"))
        .args(["--fleet-api-address", &local(fleet)])
        .args(["--serverappio-api-address", &local(serverappio)])
        .args(["--exec-api-address", &local(exec)])
        .args(extra.iter().copied());
    let superlink = Proc::spawn("superlink", &command, dir).expect("spawn");
    superlink
        .wait_for_log("Starting Fleet API", Duration::from_secs(30))
        .expect("superlink starts");
    superlink
}

#[test]
fn sigterm_stops_the_superlink_with_status_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    for isolation in ["subprocess", "process"] {
        let mut superlink = spawn_superlink(dir.path(), &["--isolation", isolation]);
        let started = std::time::Instant::now();
        // terminate() sends SIGTERM and only escalates to SIGKILL after the grace period.
        let status = superlink
            .terminate(Duration::from_secs(10))
            .expect("terminate");
        assert!(status.success(), "--isolation {isolation}: {status}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "--isolation {isolation}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn sigint_stops_the_superlink_with_status_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut superlink = spawn_superlink(dir.path(), &[]);
    let pid = superlink.id();
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let status = superlink
        .wait_for_exit(Duration::from_secs(5))
        .expect("exits after SIGINT");
    assert!(status.success(), "{status}");
    let log = superlink.log_text().expect("log");
    assert!(log.contains("received SIGINT"), "{log}");
}

/// TLS files made by openssl plus the reference's test keys, for node-auth startup checks.
fn auth_args(dir: &Path, private: &str, public: &str, csv: &Path) -> Vec<String> {
    let pki = flwr_testkit::Pki::generate_with_openssl(&dir.join("certs")).expect("openssl PKI");
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/vectors");
    let [fleet, serverappio, exec] = free_ports::<3>().expect("ports");
    let path = |p: &Path| p.display().to_string();
    vec![
        "--ssl-ca-certfile".into(),
        path(&pki.ca_cert),
        "--ssl-certfile".into(),
        path(&pki.server_cert),
        "--ssl-keyfile".into(),
        path(&pki.server_key),
        "--fleet-api-address".into(),
        local(fleet),
        "--serverappio-api-address".into(),
        local(serverappio),
        "--exec-api-address".into(),
        local(exec),
        "--auth-list-public-keys".into(),
        path(csv),
        "--auth-superlink-private-key".into(),
        path(&vectors.join("keys").join(private)),
        "--auth-superlink-public-key".into(),
        path(&vectors.join("keys").join(public)),
    ]
}

#[test]
fn a_superlink_key_pair_that_does_not_belong_together_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/vectors/keys/known_supernodes.csv");
    let args = auth_args(
        dir.path(),
        "superlink_p384_derived",
        "stranger_p384_derived.pub",
        &csv,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = assert_refused(&run(&args), 1);
    assert!(
        line.contains("--auth-superlink-public-key")
            && line.contains("does not belong to the private key"),
        "{line}"
    );
}

#[test]
fn a_bad_allow_list_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/vectors/csv_examples/bad_space_after_comma.csv");
    let args = auth_args(
        dir.path(),
        "superlink_p384_derived",
        "superlink_p384_derived.pub",
        &csv,
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = assert_refused(&run(&args), 1);
    assert!(
        line.contains("--auth-list-public-keys")
            && line.contains("bad_space_after_comma.csv")
            && line.contains("line 1, column 2"),
        "{line}"
    );
}
