//! The node-auth matrix: {Python, ours} SuperLink × {Python, ours} SuperNodes, with TLS and
//! keys made by our generator and by ssh-keygen; every cell runs the NumPy app to completion,
//! and a SuperNode whose key is not listed never gets a node id.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use flwr_interop::{make_keys, scratch, KeyMaker};
use flwr_testkit::{
    cluster::{Cluster, Side},
    Proc,
};

fn cell(superlink: Side, supernodes: Side, maker: KeyMaker) {
    let dir = scratch(&format!("{superlink:?}-{supernodes:?}-{maker:?}").to_lowercase());
    let auth = make_keys(dir.path(), maker, 2, 1).expect("keys");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    cluster
        .start_superlink(superlink, &auth.superlink_args())
        .expect("superlink");
    cluster
        .start_supernodes(&[supernodes, supernodes], Some(&auth.supernodes[..2]))
        .expect("listed supernodes register");

    // A third SuperNode with a key that is not listed: refused, never registered.
    let rogue_command = cluster
        .supernode_command(supernodes, 2, 3, Some(&auth.supernodes[2]))
        .expect("command");
    let mut rogue = Proc::spawn("rogue", &rogue_command, dir.path()).expect("spawn rogue");

    let started = std::time::Instant::now();
    let (_, run) = cluster
        .run_app_to("finished:completed")
        .expect("run completes");
    assert_eq!(run.fab_id, "test/numpyapp");
    println!(
        "{superlink:?} SuperLink, {supernodes:?} SuperNodes, {maker:?} keys: run took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let superlink_log = cluster
        .superlink()
        .expect("superlink")
        .log_text()
        .expect("log");
    assert_eq!(
        superlink_log.matches("Created node_id").count(),
        2,
        "only the listed nodes registered:\n{superlink_log}"
    );
    // The rogue is refused at CreateNode; a Python SuperNode then exits, ours gives up too.
    let rogue_exit = rogue.wait_for_exit(Duration::from_secs(60));
    let rogue_log = rogue.log_text().unwrap_or_default();
    assert!(
        rogue_exit.is_ok_and(|status| !status.success()) || rogue_log.contains("UNAUTHENTICATED"),
        "rogue was not refused:\n{rogue_log}"
    );
}

#[test]
fn python_superlink_python_supernodes_our_keys() {
    cell(Side::Python, Side::Python, KeyMaker::Ours);
}

#[test]
fn python_superlink_rust_supernodes_ssh_keygen_keys() {
    cell(Side::Python, Side::Rust, KeyMaker::SshKeygen);
}

#[test]
fn rust_superlink_python_supernodes_ssh_keygen_keys() {
    cell(Side::Rust, Side::Python, KeyMaker::SshKeygen);
}

#[test]
fn rust_superlink_rust_supernodes_our_keys() {
    cell(Side::Rust, Side::Rust, KeyMaker::Ours);
}
