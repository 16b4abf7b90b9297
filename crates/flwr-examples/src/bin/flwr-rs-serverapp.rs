//! Drop-in for `flwr-serverapp` running the example ServerApps (see the crate docs).

use std::process::ExitCode;

use clap::Parser;
use flwr::server::{run_serverapp, LogTee, ServerAppArgs};
use flwr_examples::{server_registry, AppChoice};

/// Run the example ServerApps for the runs a SuperLink has pending.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    app: ServerAppArgs,
    /// Serve every run with this app instead of choosing by the FAB's serverapp reference.
    #[arg(long, value_enum)]
    app_name: Option<AppChoice>,
}

fn main() -> ExitCode {
    let tee = LogTee::new();
    let writer = tee.clone();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(move || writer.writer())
        .init();
    let cli = Cli::parse();
    match run(&cli, tee) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, tee: LogTee) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut registry = server_registry(cli.app_name);
    tracing::info!("Starting Flower ServerApp (Rust; apps {registry:?})");
    let mut options = cli.app.options();
    options.logs = Some(tee);
    runtime.block_on(run_serverapp(&mut registry, &options))?;
    Ok(())
}
