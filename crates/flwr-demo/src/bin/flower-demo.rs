//! `flower-demo`: flags → [`DemoConfig`] → [`flwr_demo::run_with`] with a printing
//! [`Reporter`] → the results table → exit code (0; 64 for bad flags; 1 for any failure and
//! 130 after SIGINT/SIGTERM, each after one `error: ...` line).
//!
//! The servers run in process groups of their own, so a Ctrl-C in the terminal reaches only
//! this process: it cancels the demo, which then stops them.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flwr_demo::flags::CommonFlags;
use flwr_demo::{DemoConfig, DemoError, Event, Reporter, Summary};
use flwr_runtime::cli::EX_USAGE;
use indicatif::{ProgressBar, ProgressStyle};

/// The shell's status for a process ended by SIGINT.
const EX_INTERRUPTED: u8 = 130;
/// Longest rogue refusal reason shown.
const REASON_CHARS: usize = 120;

/// Run a complete authenticated Flower federation on this machine: a SuperLink with TLS and
/// SuperNode authentication, N SuperNodes training logistic regression on the wine-quality
/// data set with the Rust apps, and a rogue SuperNode that must be refused. Prints per-round
/// loss and accuracy next to a centrally trained baseline and writes summary.json and
/// learning_curve.svg.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Rounds of federated training (`num-server-rounds`).
    #[arg(long, default_value_t = flwr_demo::DEFAULT_ROUNDS,
          value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    #[command(flatten)]
    common: CommonFlags,
    /// Give up on the run after this many seconds [default: 30 + 20 per round].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
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
    if let Err(error) = config.cancel.cancel_on_signals() {
        eprintln!("error: installing SIGINT/SIGTERM handlers: {error:#}");
        return ExitCode::FAILURE;
    }
    let mut printer = Printer::new(config.rounds);
    match flwr_demo::run_with(config, &mut printer) {
        Ok(summary) => {
            printer.finish();
            print_results(&summary);
            ExitCode::SUCCESS
        }
        Err(error) => {
            printer.finish();
            eprintln!("error: {}", first_line(&error, printer.work_dir.as_deref()));
            match error {
                DemoError::Config(_) => ExitCode::from(EX_USAGE),
                DemoError::Cancelled => ExitCode::from(EX_INTERRUPTED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn config(args: Args) -> anyhow::Result<DemoConfig> {
    let mut config = DemoConfig::new(args.common.bin_dir()?);
    args.common.apply(&mut config);
    config.rounds = args.rounds;
    config.run_timeout = args.timeout.map_or_else(
        || DemoConfig::run_timeout_for(args.rounds),
        Duration::from_secs,
    );
    Ok(config)
}

/// The error's first line (process errors continue with log tails, which are in the logs),
/// with where the logs are.
fn first_line(error: &DemoError, work_dir: Option<&Path>) -> String {
    let message = error.to_string();
    let line = message.lines().next().unwrap_or_default();
    match work_dir.map(|dir| dir.join("logs")) {
        Some(logs) if logs.is_dir() => format!("{line} (logs in {})", logs.display()),
        _ => line.to_owned(),
    }
}

/// Prints events as lines on stdout and the run as a progress bar on stderr (or as lines
/// when stderr is not a terminal).
#[derive(Debug)]
struct Printer {
    bar: Option<ProgressBar>,
    rounds: u64,
    work_dir: Option<PathBuf>,
    stopped: Vec<String>,
}

impl Printer {
    fn new(rounds: u64) -> Self {
        Self {
            bar: None,
            rounds,
            work_dir: None,
            stopped: Vec::new(),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    fn start_bar(&mut self) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::new(self.rounds);
        let style = ProgressStyle::with_template(
            "{spinner} round {pos}/{len} [{bar:30.green}] {elapsed:>3} {msg}",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message("waiting for the ServerApp");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Printer {
    fn report(&mut self, event: Event<'_>) {
        match event {
            Event::WorkDirReady { dir, temporary } => {
                self.work_dir = Some(dir.to_owned());
                let note = if temporary {
                    " (temporary; kept only if the demo fails)"
                } else {
                    ""
                };
                self.line(&format!("work dir {}{note}", dir.display()));
            }
            Event::CredentialsWritten { listed, allow_list } => self.line(&format!(
                "✓ credentials: CA + server certificate for localhost/127.0.0.1, {} SuperNode \
                 key pairs, {listed} on the allow-list {}",
                listed + 1,
                allow_list.display()
            )),
            Event::SuperLinkStarted {
                fleet,
                exec,
                metrics,
            } => self.line(&format!(
                "✓ SuperLink up with TLS and node authentication: Fleet API {fleet}, Exec API \
                 {exec}, metrics {metrics}"
            )),
            Event::SuperNodesRegistered { count } => self.line(&format!(
                "✓ {count} SuperNode(s) with listed keys registered"
            )),
            Event::RogueRefused { exit_code, reason } => {
                let code = exit_code.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"));
                let reason = reason
                    .map(|r| {
                        let short: String = r.chars().take(REASON_CHARS).collect();
                        format!(": {short}")
                    })
                    .unwrap_or_default();
                self.line(&format!(
                    "✓ rogue SuperNode (key not on the allow-list) refused, exited with {code}{reason}"
                ));
            }
            Event::FabBuilt { hash, bytes } => self.line(&format!(
                "✓ FAB of the logreg bundle: {bytes} bytes, sha256 {hash}"
            )),
            Event::RunStarted { run_id, rounds } => {
                self.line(&format!(
                    "✓ run {run_id} started through the Exec API (TLS), {rounds} round(s)"
                ));
                self.start_bar();
            }
            Event::RoundStarted { round, rounds } => match &self.bar {
                Some(bar) => bar.set_message(format!("training round {round}")),
                None => println!("  round {round}/{rounds} ..."),
            },
            Event::RoundCompleted { round, rounds } => match &self.bar {
                Some(bar) => bar.set_position(round),
                None => println!("  round {round}/{rounds} done"),
            },
            Event::RunFinished { status } => {
                self.finish();
                self.line(&format!("✓ run finished: {status}"));
            }
            Event::CentralTrained { accuracy } => self.line(&format!(
                "✓ central baseline trained (accuracy {accuracy:.4})"
            )),
            Event::Stopped { name, exit_code } => {
                let code = exit_code.map_or_else(|| "signal".to_owned(), |c| c.to_string());
                self.stopped.push(format!("{name} ({code})"));
                if name == "superlink" {
                    self.line(&format!(
                        "✓ stopped with SIGTERM, exit codes: {}",
                        self.stopped.join(", ")
                    ));
                }
            }
            Event::OutputsWritten { summary, svg } => self.line(&format!(
                "✓ wrote {} and {}",
                summary.display(),
                svg.display()
            )),
            _ => {}
        }
    }
}

fn print_results(summary: &Summary) {
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
    println!();
    let millis = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!("round  train loss  eval loss  eval accuracy  round ms  coordination ms");
    for round in &summary.rounds {
        println!(
            "{:>5}  {:>10}  {:>9}  {:>13}  {:>8}  {:>15}",
            round.round,
            show(round.train_loss),
            show(round.eval_loss),
            show(round.eval_accuracy),
            millis(round.round_ms),
            millis(round.coordination_ms)
        );
    }
    println!(
        "(round ms: fit and evaluate, from the ServerApp pushing its messages to holding every \
         reply; coordination ms: what the slowest ClientApp did not spend computing)"
    );
    println!();
    println!(
        "final accuracy: federated {} ({} SuperNodes, {}/{} rounds of {} local epochs) | \
         central {:.4} ({} epochs on all partitions pooled)",
        show(summary.final_accuracy),
        summary.nodes,
        summary.rounds_completed,
        summary.rounds_requested,
        summary.local_epochs,
        summary.central_accuracy,
        summary.central_epochs
    );
    println!(
        "rogue refused: {} | run status: {} | wall time {:.1} s",
        summary.rogue_refused, summary.run_status, summary.wall_time_seconds
    );
}
