//! `flower-loadgen` against our SuperLink (in-process, TLS): authenticated closed loops of every
//! RPC, the cadence, dispatch and round modes, a SuperLink without node authentication, and refused
//! keys.

mod common;

use common::{
    assert_report_fields, auth_flags, certs, generate_keys, loadgen_async, partial_allow_list,
    report, OurSuperLink,
};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_closed_loops_over_tls_have_no_errors() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 6);
    let flags = auth_flags(&keys, &keys.join("client_public_keys.csv"));
    let superlink = OurSuperLink::start(dir.path(), &certs, &flags).await;
    let pid = std::process::id().to_string();
    let common = [
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "6",
        "--nodes-per-connection",
        "2",
        "--seconds",
        "1",
        "--json",
    ];

    let mut ping = args(&common);
    ping.extend(args(&[
        "--rpc",
        "ping",
        "--concurrency",
        "8",
        "--server-pid",
        &pid,
    ]));
    let ping = report(&loadgen_async(ping).await);
    assert_report_fields(&ping);
    assert_eq!(ping["mode"], "closed-loop");
    assert_eq!(ping["rpc"], "ping");
    assert_eq!(ping["nodes_connected"], 6);
    assert_eq!(ping["connections"], 3);
    assert_eq!(ping["auth"], true);
    assert_eq!(ping["tls"], true);
    assert_eq!(ping["errors_total"], 0, "{ping}");
    assert_eq!(ping["ping_unsuccessful"], 0, "{ping}");
    assert!(ping["requests"].as_u64().unwrap() > 0, "{ping}");
    for field in [
        "server_cpu_us_per_req",
        "server_rss_mib",
        "server_rss_peak_mib",
    ] {
        assert!(ping[field].as_f64().is_some(), "no {field} in {ping}");
    }

    let mut pull = args(&common);
    pull.extend(args(&["--rpc", "pull", "--concurrency", "4"]));
    let pull = report(&loadgen_async(pull).await);
    assert_eq!(pull["errors_total"], 0, "{pull}");
    assert!(pull["requests"].as_u64().unwrap() > 0, "{pull}");
    assert!(pull.get("server_cpu_us_per_req").is_none(), "{pull}");

    // A TaskRes for a TaskIns that does not exist is answered, but not stored.
    let mut push = args(&common);
    push.extend(args(&[
        "--rpc",
        "push",
        "--concurrency",
        "4",
        "--payload-bytes",
        "10000",
        "--serverappio-api-address",
        &superlink.serverappio,
    ]));
    let push = report(&loadgen_async(push).await);
    assert_eq!(push["errors_total"], 0, "{push}");
    assert_eq!(push["payload_bytes"], 10000);
    let requests = push["requests"].as_u64().unwrap();
    assert!(requests > 0, "{push}");
    assert_eq!(push["push_not_stored"].as_u64(), Some(requests), "{push}");
    assert!(push["run_id"].as_u64().is_some(), "{push}");

    superlink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadence_pings_and_pulls_like_the_reference_supernode() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 5);
    let flags = auth_flags(&keys, &keys.join("client_public_keys.csv"));
    let superlink = OurSuperLink::start(dir.path(), &certs, &flags).await;
    let output = loadgen_async(args(&[
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "5",
        "--mode",
        "cadence",
        "--pull-interval",
        "0.2",
        "--seconds",
        "1.5",
        "--json",
    ]))
    .await;
    let cadence = report(&output);
    assert_report_fields(&cadence);
    assert_eq!(cadence["mode"], "cadence");
    assert_eq!(cadence["rpc"], "ping+pull");
    assert_eq!(cadence["nodes_connected"], 5);
    assert_eq!(cadence["errors_total"], 0, "{cadence}");
    // Nodes pull every 0.2 s; their first Pings went out at registration, before the window,
    // and the next ones are 17.5 s or more later.
    assert!(
        cadence["by_rpc"]["pull"]["requests"].as_u64().unwrap() > 0,
        "{cadence}"
    );
    assert!(cadence["by_rpc"]["ping"].is_object(), "{cadence}");
    superlink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_delivers_every_pushed_task_ins_to_held_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 5);
    let flags = auth_flags(&keys, &keys.join("client_public_keys.csv"));
    let superlink = OurSuperLink::start(dir.path(), &certs, &flags).await;
    let output = loadgen_async(args(&[
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "5",
        "--mode",
        "dispatch",
        "--rate",
        "20",
        "--seconds",
        "2",
        "--serverappio-api-address",
        &superlink.serverappio,
        "--json",
    ]))
    .await;
    let measured = report(&output);
    assert_report_fields(&measured);
    assert_eq!(measured["mode"], "dispatch");
    assert_eq!(measured["rpc"], "ping+pull");
    assert_eq!(measured["nodes_connected"], 5);
    assert_eq!(measured["errors_total"], 0, "{measured}");
    let dispatch = &measured["dispatch"];
    let pushed = dispatch["pushed"].as_u64().unwrap();
    assert!(pushed > 0, "{measured}");
    assert_eq!(dispatch["delivered"].as_u64(), Some(pushed), "{measured}");
    assert_eq!(dispatch["not_delivered"], 0, "{measured}");
    assert_eq!(dispatch["push_failed"], 0, "{measured}");
    assert_eq!(dispatch["unexpected"], 0, "{measured}");
    assert_eq!(dispatch["hold_ms"], 20_000, "{measured}");
    // Our SuperLink holds, and says so on every answer.
    assert!(dispatch["held_replies"].as_u64().unwrap() > 0, "{measured}");
    assert_eq!(dispatch["run_id"], measured["run_id"], "{measured}");
    for field in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
        assert!(
            dispatch[field].as_f64().is_some(),
            "no {field} in {measured}"
        );
        assert!(
            dispatch["push_latency"][field].as_f64().is_some(),
            "no push_latency.{field} in {measured}"
        );
    }
    superlink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_bring_every_reply_back_and_report_the_superlink_memory() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 3);
    let flags = auth_flags(&keys, &keys.join("client_public_keys.csv"));
    let superlink = OurSuperLink::start(dir.path(), &certs, &flags).await;
    let output = loadgen_async(args(&[
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "3",
        "--mode",
        "round",
        "--rounds",
        "2",
        "--payload-bytes",
        "100000",
        "--serverappio-api-address",
        &superlink.serverappio,
        "--server-pid",
        &std::process::id().to_string(),
        "--json",
    ]))
    .await;
    let measured = report(&output);
    assert_eq!(measured["mode"], "round");
    assert_eq!(measured["nodes_connected"], 3);
    assert_eq!(measured["errors_total"], 0, "{measured}");
    let round = &measured["round"];
    assert_eq!(round["completed"], 2, "{measured}");
    assert!(round.get("failure").is_none(), "{measured}");
    assert_eq!(
        round["round_s"].as_array().map(Vec::len),
        Some(2),
        "{measured}"
    );
    assert_eq!(round["model_bytes"], 100_000, "{measured}");
    // The SuperLink runs in this process, so the probe reads this process's memory.
    assert!(round["server_peak_models"].as_f64().is_some(), "{measured}");
    assert!(
        round["server_after_above_idle_mib"].as_f64().is_some(),
        "{measured}"
    );
    superlink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_keys_are_counted_as_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 4);
    let csv = partial_allow_list(&keys, 2, &dir.path().join("two_keys.csv"));
    let superlink = OurSuperLink::start(dir.path(), &certs, &auth_flags(&keys, &csv)).await;
    let output = loadgen_async(args(&[
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "4",
        "--concurrency",
        "2",
        "--seconds",
        "0.5",
        "--json",
    ]))
    .await;
    let refused = report(&output);
    assert_eq!(refused["nodes_connected"], 2, "{refused}");
    assert_eq!(
        refused["registration_errors"]["UNAUTHENTICATED"], 2,
        "{refused}"
    );
    assert_eq!(refused["errors"]["UNAUTHENTICATED"], 2, "{refused}");
    assert_eq!(refused["errors_total"], 2, "{refused}");
    assert!(
        refused["first_error"]
            .as_str()
            .unwrap()
            .contains("CreateNode: UNAUTHENTICATED: Access denied"),
        "{refused}"
    );
    // The listed half still works.
    assert!(refused["requests"].as_u64().unwrap() > 0, "{refused}");
    superlink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_against_a_superlink_without_node_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let superlink = OurSuperLink::start(dir.path(), &certs, &[]).await;
    let output = loadgen_async(args(&[
        "--superlink",
        &superlink.fleet,
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--no-auth",
        "--nodes",
        "3",
        "--concurrency",
        "3",
        "--seconds",
        "0.5",
    ]))
    .await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", common::text(&output));
    assert!(table.contains("TLS, no auth"), "{table}");
    assert!(table.contains("3 of 3 registered"), "{table}");
    assert!(
        table
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == ["errors", "0"]),
        "{table}"
    );
    superlink.stop().await;
}
