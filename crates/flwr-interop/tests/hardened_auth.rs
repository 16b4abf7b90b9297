//! `--node-auth-mode hardened` through a whole run: our SuperLink and two of our SuperNodes in
//! hardened mode run the NumPy app (Python ServerApp and ClientApps) to completion without a
//! single refusal; then a Python 1.14 SuperNode with a listed key registers (CreateNode is
//! tokenless in both modes) but its first tokened call is refused, and the log says why.

use std::time::Duration;

use flwr_interop::{make_keys, scratch, KeyMaker};
use flwr_testkit::{
    cluster::{Cluster, Side},
    Proc,
};

#[test]
fn a_run_completes_with_hardened_node_auth_and_a_python_supernode_is_refused() {
    let dir = scratch("hardened-auth");
    let auth = make_keys(dir.path(), KeyMaker::Ours, 3, 0).expect("keys");
    let mut cluster = Cluster::new(dir.path()).expect("cluster");
    let mut superlink_args = auth.superlink_args();
    superlink_args.extend(["--node-auth-mode".to_owned(), "hardened".to_owned()]);
    cluster
        .start_superlink(Side::Rust, &superlink_args)
        .expect("superlink");
    for index in 0..2 {
        let command = cluster
            .supernode_command(Side::Rust, index, 2, Some(&auth.supernodes[index]))
            .expect("command")
            .args(["--node-auth-mode", "hardened"]);
        let supernode =
            Proc::spawn(&format!("supernode-{index}"), &command, dir.path()).expect("spawn");
        cluster.supernodes().push(supernode);
    }
    cluster.wait_for_nodes(2).expect("both register");

    let (_, run) = cluster
        .run_app_to("finished:completed")
        .expect("run completes");
    assert_eq!(run.fab_id, "test/numpyapp");
    let log = cluster
        .superlink()
        .expect("superlink")
        .log_text()
        .expect("log");
    assert!(log.contains("Node authentication hardened"), "{log}");
    assert!(
        !log.contains("refused Fleet request"),
        "a hardened SuperNode was refused:\n{log}"
    );

    // A Python SuperNode with a listed key: registers, then its 1.14 tokens are refused.
    let command = cluster
        .supernode_command(Side::Python, 2, 3, Some(&auth.supernodes[2]))
        .expect("command");
    let mut python = Proc::spawn("python-supernode", &command, dir.path()).expect("spawn");
    let superlink = cluster.superlink().expect("superlink");
    superlink
        .wait_for_log(
            "1.14 token refused: hardened node auth requires flwr-auth-time/flwr-auth-counter",
            Duration::from_secs(60),
        )
        .expect("the Python SuperNode's 1.14 token is refused, and the log says why");
    let _ = python.terminate(Duration::from_secs(2));
}
