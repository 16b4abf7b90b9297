//! Key and certificate files are never written through what someone else placed at an output
//! path, and land in private directories whatever the umask.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

const KEYGEN: &str = env!("CARGO_BIN_EXE_flower-keygen");
const CERTGEN: &str = env!("CARGO_BIN_EXE_flower-certgen");

fn run(bin: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("binary runs")
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn force_replaces_a_symlink_at_an_output_path_instead_of_writing_through_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious").expect("victim");
    symlink(&victim, keys.join("server_credentials")).expect("symlink");

    let out = run(KEYGEN, &["-n", "1", "--force"], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    let written = std::fs::symlink_metadata(keys.join("server_credentials")).expect("key");
    assert!(written.file_type().is_file(), "{written:?}");
    assert_eq!(mode(&keys.join("server_credentials")), 0o600);
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(&keys)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn a_dangling_symlink_at_an_output_path_is_refused_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let elsewhere = tmp.path().join("elsewhere");
    symlink(&elsewhere, keys.join("client_public_keys.csv")).expect("symlink");

    let out = run(KEYGEN, &["-n", "1"], tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("client_public_keys.csv already exists"),
        "{stderr}"
    );
    assert!(!elsewhere.exists(), "written through the symlink");
    // All or nothing: no key was written either.
    assert!(!keys.join("server_credentials").exists());
}

#[test]
fn output_directories_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (bin, dir) in [(KEYGEN, "a/b/keys"), (CERTGEN, "c/certificates")] {
        let out = Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" --dir \"$1\"", bin, dir])
            .current_dir(tmp.path())
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut path = tmp.path().to_owned();
        for part in dir.split('/') {
            path.push(part);
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        }
    }
    let keys = tmp.path().join("a/b/keys");
    assert_eq!(mode(&keys.join("client_credentials_1")), 0o600);
    assert_eq!(mode(&keys.join("client_credentials_1.pub")), 0o644);
    assert_eq!(mode(&tmp.path().join("c/certificates/server.key")), 0o600);
}
