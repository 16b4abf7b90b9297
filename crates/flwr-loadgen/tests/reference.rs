//! `flower-loadgen` against the Python reference SuperLink (`flwr==1.14.0` from `$FLWR_VENV`,
//! else `<workspace>/.venv`, made by scripts/test) with TLS and node authentication: the
//! reference accepts every token, for Ping, PullTaskIns and a PushTaskRes with a payload.
//!
//! Skipped, with a notice, only when that virtualenv's Python has no `flwr`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_report_fields, auth_flags, certs, generate_keys, loadgen, report};
use flwr_testkit::{free_ports, Proc, Venv};

/// How long the reference SuperLink may take to listen.
const STARTUP: Duration = Duration::from_secs(90);

/// The virtualenv, or `None` (after a notice) when its Python cannot import `flwr`.
fn reference_venv() -> Option<Venv> {
    let venv = match Venv::locate() {
        Ok(venv) => venv,
        Err(error) => {
            eprintln!("SKIPPED: no reference virtualenv with flwr ({error})");
            return None;
        }
    };
    let imports = std::process::Command::new(venv.python())
        .args(["-c", "import flwr"])
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .output();
    match imports {
        Ok(output) if output.status.success() => Some(venv),
        _ => {
            eprintln!(
                "SKIPPED: {} cannot import flwr (run scripts/test to install flwr==1.14.0)",
                venv.python().display()
            );
            None
        }
    }
}

fn wait_listening(superlink: &Proc, port: u16) {
    let started = Instant::now();
    for _ in 0..900 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            superlink.is_running() && started.elapsed() < STARTUP,
            "the reference SuperLink did not listen on {port}:\n{}",
            superlink.log_text().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the reference SuperLink did not listen on {port}");
}

#[test]
fn the_reference_superlink_accepts_every_signed_request() {
    let Some(venv) = reference_venv() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let keys = dir.path().join("keys");
    generate_keys(&keys, 4);
    let [fleet, serverappio, exec] = free_ports::<3>().unwrap();
    let command = venv
        .command(venv.superlink())
        .env("FLWR_HOME", dir.path().join("home"))
        .args([
            "--ssl-ca-certfile",
            certs.ca.to_str().unwrap(),
            "--ssl-certfile",
            certs.cert.to_str().unwrap(),
            "--ssl-keyfile",
            certs.key.to_str().unwrap(),
            "--isolation",
            "process",
            "--fleet-api-address",
            &format!("127.0.0.1:{fleet}"),
            "--serverappio-api-address",
            &format!("127.0.0.1:{serverappio}"),
            "--exec-api-address",
            &format!("127.0.0.1:{exec}"),
        ])
        .args(auth_flags(&keys, &keys.join("client_public_keys.csv")));
    let superlink = Proc::spawn("reference-superlink", &command, dir.path()).unwrap();
    wait_listening(&superlink, fleet);

    let fleet_address = format!("127.0.0.1:{fleet}");
    let serverappio_address = format!("127.0.0.1:{serverappio}");
    let pid = superlink.id().to_string();
    let base = |rpc: &str| -> Vec<String> {
        [
            "--superlink",
            fleet_address.as_str(),
            "--root-certificates",
            certs.ca.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
            "--nodes",
            "4",
            "--concurrency",
            "4",
            "--seconds",
            "1",
            "--server-pid",
            pid.as_str(),
            "--json",
            "--rpc",
            rpc,
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        loadgen(&args)
    };

    for rpc in ["ping", "pull"] {
        let output = run(&base(rpc));
        let measured = report(&output);
        assert_report_fields(&measured);
        assert_eq!(measured["nodes_connected"], 4, "{measured}");
        assert_eq!(measured["errors_total"], 0, "{rpc}: {measured}");
        assert_eq!(measured["ping_unsuccessful"], 0, "{measured}");
        assert!(measured["requests"].as_u64().unwrap() > 0, "{measured}");
        assert!(
            measured["server_cpu_us_per_req"].as_f64().is_some(),
            "{measured}"
        );
        assert!(
            measured["server_rss_peak_mib"].as_f64().unwrap() > 0.0,
            "{measured}"
        );
    }

    // A TaskRes with a RecordSet: the reference re-serializes it canonically and accepts the
    // token, answers, and does not store it (its TaskIns does not exist).
    let mut push = base("push");
    push.extend([
        "--payload-bytes".to_owned(),
        "5000".to_owned(),
        "--serverappio-api-address".to_owned(),
        serverappio_address.clone(),
    ]);
    let measured = report(&run(&push));
    assert_eq!(measured["errors_total"], 0, "{measured}");
    let requests = measured["requests"].as_u64().unwrap();
    assert!(requests > 0, "{measured}");
    assert_eq!(
        measured["push_not_stored"].as_u64(),
        Some(requests),
        "{measured}"
    );

    // Dispatch: the reference accepts our TaskIns and does not hold, so nodes poll (here every
    // 0.3 s instead of 3 s) and every TaskIns still arrives.
    let dispatch: Vec<String> = [
        "--superlink",
        fleet_address.as_str(),
        "--root-certificates",
        certs.ca.to_str().unwrap(),
        "--keys",
        keys.to_str().unwrap(),
        "--nodes",
        "4",
        "--mode",
        "dispatch",
        "--rate",
        "10",
        "--seconds",
        "1.5",
        "--pull-interval",
        "0.3",
        "--serverappio-api-address",
        serverappio_address.as_str(),
        "--json",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let measured = report(&run(&dispatch));
    assert_eq!(measured["errors_total"], 0, "{measured}");
    let dispatch = &measured["dispatch"];
    let pushed = dispatch["pushed"].as_u64().unwrap();
    assert!(pushed > 0, "{measured}");
    assert_eq!(dispatch["delivered"].as_u64(), Some(pushed), "{measured}");
    assert_eq!(dispatch["held_replies"], 0, "{measured}");
    assert!(dispatch["p99_ms"].as_f64().is_some(), "{measured}");
    drop_superlink(superlink, dir.path());
}

/// Stops the reference SuperLink (it ignores SIGTERM in some modes, so the drop's SIGKILL
/// follows after a short grace).
fn drop_superlink(mut superlink: Proc, _dir: &Path) {
    superlink.set_drop_grace(Duration::from_secs(2));
    drop(superlink);
}
