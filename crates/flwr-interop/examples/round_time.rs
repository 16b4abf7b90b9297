//! How long users wait for a run: the `flwr new` NumPy app (3 rounds), TLS and node auth, two
//! SuperNodes, started with `flwr run`, in each combination of SuperLink and SuperNodes, one
//! after the other on this machine.
//!
//! ```text
//! cargo build --release -p flwr-superlink -p flwr-supernode
//! cargo run --release -p flwr-interop --example round_time [-- --repeat N]
//! ```
//!
//! Needs the reference virtualenv (`FLWR_VENV`, as the tests). For each setup it prints the
//! wall time from `flwr run` until the Exec API reports the run finished (polled every 20 ms
//! over TLS), and the time the ServerApp itself reports for its rounds (`Run finished 3
//! round(s) in …s`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use flwr_interop::{make_keys, scratch, KeyMaker};
use flwr_proto::exec_client::ExecClient;
use flwr_proto::ListRunsRequest;
use flwr_testkit::cluster::{Cluster, Side, FEDERATION};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// One combination to measure.
struct Setup {
    name: &'static str,
    superlink: Side,
    superlink_args: &'static [&'static str],
    supernodes: Side,
    supernode_args: &'static [&'static str],
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "Python SuperLink + Python SuperNodes (the reference)",
        superlink: Side::Python,
        superlink_args: &[],
        supernodes: Side::Python,
        supernode_args: &[],
    },
    Setup {
        name: "our SuperLink `--no-hold-pulls` + Python SuperNodes",
        superlink: Side::Rust,
        superlink_args: &["--no-hold-pulls"],
        supernodes: Side::Python,
        supernode_args: &[],
    },
    Setup {
        name: "our SuperLink + Python SuperNodes",
        superlink: Side::Rust,
        superlink_args: &[],
        supernodes: Side::Python,
        supernode_args: &[],
    },
    Setup {
        name: "our SuperLink + our SuperNodes `--clientapp-lifetime per-message`",
        superlink: Side::Rust,
        superlink_args: &[],
        supernodes: Side::Rust,
        supernode_args: &["--clientapp-lifetime", "per-message"],
    },
    Setup {
        name: "our SuperLink + our SuperNodes (warm ClientApps)",
        superlink: Side::Rust,
        superlink_args: &[],
        supernodes: Side::Rust,
        supernode_args: &[],
    },
];

/// What one run cost.
struct Measured {
    wall: Duration,
    rounds: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let mut repeat = 1_usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => {
                repeat = args
                    .next()
                    .context("--repeat needs a number")?
                    .parse()
                    .context("--repeat: not a number")?;
            }
            other => bail!("unknown argument {other:?} (only --repeat N)"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("| setup | `flwr run` → finished (s) | rounds, as the ServerApp reports (s) |");
    println!("| --- | --- | --- |");
    for setup in SETUPS {
        for _ in 0..repeat {
            let measured =
                measure(setup, &runtime).with_context(|| format!("measuring {:?}", setup.name))?;
            let rounds = measured
                .rounds
                .map_or_else(|| "?".to_owned(), |s| format!("{s:.2}"));
            println!(
                "| {} | {:.2} | {rounds} |",
                setup.name,
                measured.wall.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn measure(setup: &Setup, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Measured> {
    let dir = scratch("round-time");
    let auth = make_keys(dir.path(), KeyMaker::Ours, 2, 0)?;
    let mut cluster = Cluster::new(dir.path())?;
    let mut superlink_args = auth.superlink_args();
    superlink_args.extend(setup.superlink_args.iter().map(|&a| a.to_owned()));
    cluster.start_superlink(setup.superlink, &superlink_args)?;
    for (index, keys) in auth.supernodes.iter().enumerate() {
        let command = cluster
            .supernode_command(setup.supernodes, index, 2, Some(keys))?
            .args(setup.supernode_args.iter().copied());
        let node = flwr_testkit::Proc::spawn(&format!("supernode-{index}"), &command, dir.path())?;
        cluster.supernodes().push(node);
    }
    cluster.wait_for_nodes(2)?;

    let ca = std::fs::read(&cluster.pki().ca_cert)?;
    let exec = runtime.block_on(exec_client(&cluster.exec_address(), ca))?;
    let started = Instant::now();
    let run_id = cluster.flwr().run(cluster.app().dir(), FEDERATION)?;
    let status = runtime.block_on(wait_finished(exec, run_id.0))?;
    let wall = started.elapsed();
    if status != "finished:completed" {
        bail!("run {run_id} ended {status}");
    }
    let log = cluster
        .superlink()
        .context("no SuperLink")?
        .log_text()
        .unwrap_or_default();
    Ok(Measured {
        wall,
        rounds: summary_seconds(&log),
    })
}

async fn exec_client(address: &str, ca: Vec<u8>) -> anyhow::Result<ExecClient<Channel>> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let channel = Channel::from_shared(format!("https://{address}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ExecClient::new(channel))
}

/// Polls `ListRuns` until the run is finished (bounded at 5 minutes); returns its status.
async fn wait_finished(mut exec: ExecClient<Channel>, run_id: u64) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let runs = exec
            .list_runs(ListRunsRequest {
                run_id: Some(run_id),
            })
            .await?
            .into_inner();
        if let Some(status) = runs
            .run_dict
            .get(&run_id)
            .and_then(|run| run.status.as_ref())
            .filter(|status| status.status == "finished")
        {
            return Ok(format!("finished:{}", status.sub_status));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("run {run_id} did not finish within 5 minutes")
}

/// `… Run finished 3 round(s) in 4.12s` → 4.12 (the last such line).
fn summary_seconds(log: &str) -> Option<f64> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("round(s) in "))?;
    let after = &line[line.rfind(" in ")? + 4..];
    after.trim().trim_end_matches('s').parse().ok()
}
