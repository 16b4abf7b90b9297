//! `flower-ha-demo`: flags → [`HaConfig`] → [`flwr_demo::ha::run_ha_with`] with a printing
//! [`HaReporter`] → the results → exit code (0; 64 for bad flags; 1 for any failure and 130
//! after SIGINT/SIGTERM, each after one `error: ...` line naming the kept logs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use flwr_demo::flags::CommonFlags;
use flwr_demo::ha::{HaConfig, HaError, HaEvent, HaReporter, HaSummary, KillTarget};
use flwr_demo::DemoError;
use flwr_runtime::cli::EX_USAGE;

/// The shell's status for a process ended by SIGINT.
const EX_INTERRUPTED: u8 = 130;
/// SIGTERM's number on Linux (HAProxy ends by its default action).
const SIGTERM: i32 = 15;

/// Run a highly available Flower federation on this machine and kill half of it mid-run: two
/// SuperLink replicas sharing a throwaway PostgreSQL database behind HAProxy (TCP, TLS passed
/// through), N authenticated SuperNodes training logistic regression through HAProxy, and a
/// SIGKILL of one replica after a chosen round. Prints the rounds, whether the run was taken
/// over, how long the failover took, and writes ha_summary.json. Needs Debian's postgresql and
/// haproxy packages.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Rounds of federated training (`num-server-rounds`).
    #[arg(long, default_value_t = flwr_demo::DEFAULT_ROUNDS,
          value_parser = clap::value_parser!(u64).range(2..=100))]
    rounds: u64,
    /// Kill a replica once this round has completed (must be before the last round).
    #[arg(long, default_value_t = flwr_demo::ha::DEFAULT_KILL_AFTER_ROUND,
          value_parser = clap::value_parser!(u64).range(1..=99))]
    kill_after_round: u64,
    /// Which replica to SIGKILL: the one running the run's ServerApp (the other must take
    /// the run over), or the other one (only connections move).
    #[arg(long, value_enum, default_value_t = Kill::Serverapp)]
    kill: Kill,
    /// Pause before each ClientApp message, in milliseconds, so that a round lasts long enough
    /// for the kill to land mid-run (0: unpaced, and the run may end first).
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    message_delay_ms: u64,
    #[command(flatten)]
    common: CommonFlags,
    /// The haproxy program [default: /usr/sbin/haproxy, else haproxy on PATH].
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Give up on the run after this many seconds [default: 60 + per round 2 × (10 + two
    /// message delays)].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
}

/// `--kill` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kill {
    /// The replica whose child runs the ServerApp.
    Serverapp,
    /// The replica that does not run it.
    Other,
}

fn main() -> ExitCode {
    let args = match flwr_runtime::cli::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    let config = match config(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(error) = config.demo.cancel.cancel_on_signals() {
        eprintln!("error: installing SIGINT/SIGTERM handlers: {error}");
        return ExitCode::FAILURE;
    }
    let mut printer = Printer::new(config.demo.rounds);
    match flwr_demo::ha::run_ha_with(config, &mut printer) {
        Ok(summary) => {
            print_results(&summary);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", first_line(&error, printer.work_dir.as_deref()));
            match error {
                HaError::Demo(DemoError::Config(_)) => ExitCode::from(EX_USAGE),
                HaError::Demo(DemoError::Cancelled) => ExitCode::from(EX_INTERRUPTED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn config(args: Args) -> anyhow::Result<HaConfig> {
    if args.kill_after_round >= args.rounds {
        anyhow::bail!(
            "--kill-after-round {} must be below --rounds {} (a round must follow the kill)",
            args.kill_after_round,
            args.rounds
        );
    }
    let mut config = HaConfig::new(args.common.bin_dir()?);
    args.common.apply(&mut config.demo);
    config.demo.rounds = args.rounds;
    config.kill = match args.kill {
        Kill::Serverapp => KillTarget::ServerApp,
        Kill::Other => KillTarget::Other,
    };
    config.kill_after_round = args.kill_after_round;
    config.message_delay = Duration::from_millis(args.message_delay_ms);
    config.haproxy = args.haproxy;
    config.demo.run_timeout = args.timeout.map_or_else(
        || HaConfig::run_timeout_for(args.rounds, config.message_delay),
        Duration::from_secs,
    );
    Ok(config)
}

/// The error's first line (process errors continue with log tails, which are in the logs),
/// with where the logs are.
fn first_line(error: &HaError, work_dir: Option<&Path>) -> String {
    let message = error.to_string();
    let line = message.lines().next().unwrap_or_default();
    match work_dir {
        Some(dir) if dir.join("logs").is_dir() => {
            format!("{line} (work dir with logs kept: {})", dir.display())
        }
        _ => line.to_owned(),
    }
}

/// Seconds with one decimal.
fn secs(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// Prints events as lines on stdout.
#[derive(Debug)]
struct Printer {
    rounds: u64,
    work_dir: Option<PathBuf>,
    stopped: Vec<String>,
}

impl Printer {
    fn new(rounds: u64) -> Self {
        Self {
            rounds,
            work_dir: None,
            stopped: Vec::new(),
        }
    }
}

impl HaReporter for Printer {
    fn report(&mut self, event: HaEvent<'_>) {
        let rounds = self.rounds;
        let attempt_note = |attempt: u32| match attempt {
            0 => String::new(),
            1 => " (restarted ServerApp)".to_owned(),
            n => format!(" (ServerApp #{})", n + 1),
        };
        match event {
            HaEvent::WorkDirReady { dir, temporary } => {
                self.work_dir = Some(dir.to_owned());
                let note = if temporary {
                    " (temporary; kept only if the demo fails)"
                } else {
                    ""
                };
                println!("work dir {}{note}", dir.display());
            }
            HaEvent::PostgresStarted { url } => {
                println!("✓ PostgreSQL (throwaway cluster, non-root) up: {url}");
            }
            HaEvent::ReplicaStarted {
                name,
                fleet,
                exec,
                metrics,
            } => println!(
                "✓ {name} up on PostgreSQL with TLS and node authentication: Fleet {fleet}, Exec \
                 {exec}, metrics {metrics}"
            ),
            HaEvent::BalancerStarted {
                fleet,
                exec,
                config,
            } => println!(
                "✓ HAProxy up (TCP, TLS passed through, checks every 500 ms): Fleet {fleet} \
                 (round-robin), Exec {exec} (first healthy); {}",
                config.display()
            ),
            HaEvent::SuperNodesRegistered { count } => {
                println!("✓ {count} SuperNode(s) registered through HAProxy");
            }
            HaEvent::RunStarted { run_id, rounds } => println!(
                "✓ run {run_id} started through HAProxy's Exec frontend, {rounds} round(s)"
            ),
            HaEvent::RoundStarted { round, attempt, .. } => {
                println!("  round {round}/{rounds} ...{}", attempt_note(attempt))
            }
            HaEvent::RoundCompleted { round, attempt, .. } => {
                println!("  round {round}/{rounds} done{}", attempt_note(attempt))
            }
            HaEvent::ServerAppFound { replica, pid } => {
                println!("→ the run's ServerApp (pid {pid}) is a child of {replica}");
            }
            HaEvent::Killed {
                replica,
                pid,
                ran_serverapp,
            } => {
                let what = if ran_serverapp {
                    "it ran the ServerApp"
                } else {
                    "the other replica runs the ServerApp"
                };
                println!("✗ SIGKILL {replica} (pid {pid}; {what})");
            }
            HaEvent::StreamReopening { why } => {
                println!("  Exec connection through HAProxy broke ({why}); reconnecting");
            }
            HaEvent::BalancerMarkedDown { replica, after } => {
                println!(
                    "  HAProxy marked {replica} DOWN {} after the kill",
                    secs(after)
                );
            }
            HaEvent::OldServerAppGone { pid, after } => println!(
                "  the killed replica's ServerApp (pid {pid}) is gone ({} after the kill)",
                secs(after)
            ),
            HaEvent::TakenOver {
                replica,
                pid,
                after,
            } => println!(
                "  {replica} took the run over: new ServerApp pid {pid}, {} after the kill",
                secs(after)
            ),
            HaEvent::ServerAppRestarted { after } => println!(
                "  the run's log starts over at round 1, {} after the kill",
                secs(after)
            ),
            HaEvent::Progressing { round, after } => println!(
                "  → the run progresses again: round {round} completed {} after the kill",
                secs(after)
            ),
            HaEvent::RunFinished { status } => println!("✓ run finished: {status}"),
            HaEvent::Stopped {
                name,
                exit_code,
                signal,
            } => {
                let code = match (exit_code, signal) {
                    (Some(code), _) => code.to_string(),
                    (None, Some(SIGTERM)) => "SIGTERM".to_owned(),
                    (None, Some(signal)) => format!("signal {signal}"),
                    (None, None) => "?".to_owned(),
                };
                self.stopped.push(format!("{name} ({code})"));
            }
            HaEvent::PostgresStopped => println!(
                "✓ stopped with SIGTERM, exit codes: {}; PostgreSQL stopped and removed",
                self.stopped.join(", ")
            ),
            HaEvent::SummaryWritten { path } => println!("✓ wrote {}", path.display()),
            _ => {}
        }
    }
}

fn print_results(summary: &HaSummary) {
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    println!();
    println!("round  train loss  eval loss  eval accuracy");
    for round in &summary.rounds {
        println!(
            "{:>5}  {:>10}  {:>9}  {:>13}",
            round.round,
            show(round.train_loss),
            show(round.eval_loss),
            show(round.eval_accuracy)
        );
    }
    println!();
    println!(
        "run {}: {} with {}/{} rounds, final accuracy {} ({} SuperNode(s), database {})",
        summary.run_id,
        summary.run_status,
        summary.rounds_completed,
        summary.rounds_requested,
        show(summary.final_accuracy),
        summary.nodes,
        summary.database
    );
    let role = if summary.killed_ran_serverapp {
        "it ran the ServerApp"
    } else {
        "the ServerApp ran on the other replica"
    };
    let takeover = if summary.taken_over {
        format!(
            "taken over by the other replica: yes (ServerApp restarted from round 1{})",
            if summary.takeover_logged {
                ", its log says `took over run`"
            } else {
                ""
            }
        )
    } else if summary.killed_ran_serverapp {
        "taken over: NO".to_owned()
    } else {
        "taken over: not needed (its ServerApp kept running)".to_owned()
    };
    println!(
        "killed: {} after round {} ({role}) | {takeover}",
        summary.killed_replica, summary.killed_after_round
    );
    let optional = |label: &str, value: Option<f64>| {
        value
            .map(|v| format!(", {label} {v:.1} s"))
            .unwrap_or_default()
    };
    println!(
        "failover: {:.1} s from the kill to the next completed round{}{}{}",
        summary.failover_seconds,
        optional(
            "HAProxy marked it down after",
            summary.balancer_down_seconds
        ),
        optional("new ServerApp after", summary.takeover_seconds),
        optional("log back at round 1 after", summary.restart_seconds),
    );
    let running = summary
        .supernodes
        .iter()
        .filter(|node| node.running)
        .count();
    let warned: Vec<String> = summary
        .supernodes
        .iter()
        .filter(|node| node.warnings > 0)
        .map(|node| format!("{} {}", node.name, node.warnings))
        .collect();
    println!(
        "SuperNodes: {running}/{} kept running; the kill cut {} of their Fleet connection(s) \
         and they reconnected through HAProxy by themselves (every round waits for all of \
         them; warnings they logged after the kill: {}); Exec stream reopened {} time(s)",
        summary.supernodes.len(),
        summary.fleet_connections_cut,
        if warned.is_empty() {
            "none".to_owned()
        } else {
            warned.join(", ")
        },
        summary.stream_reopens
    );
    println!("total: {:.1} s", summary.wall_time_seconds);
}
