//! The key and certificate generators, checked with the tools operators use on their output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use flwr_auth::{AllowList, PrivateKey, PublicKey};

fn run(bin: &str, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("binary runs")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn keygen_writes_the_guide_layout_that_our_auth_code_reads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(
        env!("CARGO_BIN_EXE_flower-keygen"),
        &["--supernodes", "3"],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = tmp.path().join("keys");

    let server =
        PrivateKey::from_openssh(std::fs::read(keys.join("server_credentials")).expect("read"))
            .expect("server private key parses");
    let server_pub =
        PublicKey::from_openssh(std::fs::read(keys.join("server_credentials.pub")).expect("read"))
            .expect("server public key parses");
    assert!(server.matches(&server_pub));
    assert_eq!(mode(&keys.join("server_credentials")), 0o600);
    assert_eq!(mode(&keys.join("server_credentials.pub")), 0o644);

    let csv = std::fs::read_to_string(keys.join("client_public_keys.csv")).expect("csv");
    let allowed = AllowList::parse(&csv).expect("csv parses");
    assert_eq!(allowed.len(), 3);
    for n in 1..=3 {
        let private = PrivateKey::from_openssh(
            std::fs::read(keys.join(format!("client_credentials_{n}"))).expect("read"),
        )
        .expect("client key parses");
        assert_eq!(mode(&keys.join(format!("client_credentials_{n}"))), 0o600);
        assert!(
            allowed.contains(&private.public_key().to_spki_pem()),
            "client {n} listed"
        );
    }
}

#[test]
fn keygen_output_is_readable_by_ssh_keygen() {
    if Command::new("ssh-keygen").arg("-?").output().is_err() {
        panic!("ssh-keygen is required (scripts/test installs openssh-client)");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(
        env!("CARGO_BIN_EXE_flower-keygen"),
        &["-n", "1"],
        tmp.path(),
    );
    assert!(out.status.success());
    for name in [
        "server_credentials",
        "server_credentials.pub",
        "client_credentials_1",
    ] {
        let out = Command::new("ssh-keygen")
            .arg("-l")
            .arg("-f")
            .arg(tmp.path().join("keys").join(name))
            .output()
            .expect("ssh-keygen runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("384 SHA256:"),
            "{name}: {text}"
        );
    }
}

#[test]
fn nothing_is_overwritten_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keygen = env!("CARGO_BIN_EXE_flower-keygen");
    assert!(run(keygen, &[], tmp.path()).status.success());
    let before = std::fs::read(tmp.path().join("keys/server_credentials")).expect("read");

    let again = run(keygen, &[], tmp.path());
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("server_credentials already exists"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("keys/server_credentials")).expect("read"),
        before
    );

    assert!(run(keygen, &["--force"], tmp.path()).status.success());
    assert_ne!(
        std::fs::read(tmp.path().join("keys/server_credentials")).expect("read"),
        before
    );

    let certgen = env!("CARGO_BIN_EXE_flower-certgen");
    assert!(run(certgen, &[], tmp.path()).status.success());
    let refused = run(certgen, &[], tmp.path());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
}

#[test]
fn certgen_makes_a_chain_openssl_verifies_for_every_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let args = [
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--host",
        "superlink.example",
    ];
    let out = run(env!("CARGO_BIN_EXE_flower-certgen"), &args, tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = tmp.path().join("certificates");
    assert_eq!(mode(&certs.join("server.key")), 0o600);
    assert_eq!(mode(&certs.join("ca.key")), 0o600);

    for (flag, host) in [
        ("-verify_hostname", "localhost"),
        ("-verify_ip", "127.0.0.1"),
        ("-verify_hostname", "superlink.example"),
    ] {
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(certs.join("ca.crt"))
            .args([flag, host])
            .arg(certs.join("server.pem"))
            .output()
            .expect("openssl runs");
        assert!(
            verify.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let wrong = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(certs.join("ca.crt"))
        .args(["-verify_hostname", "other.example"])
        .arg(certs.join("server.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        !wrong.status.success(),
        "a host not asked for must not verify"
    );
}

#[test]
fn certgen_refuses_a_bad_host_with_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(
        env!("CARGO_BIN_EXE_flower-certgen"),
        &["--host", "bad host!"],
        tmp.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--host") && stderr.contains("bad host!"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("certificates").exists(),
        "nothing half-written"
    );
}
