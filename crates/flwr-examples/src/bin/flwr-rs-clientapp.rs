//! Drop-in for `flwr-clientapp` serving the example ClientApps (see the crate docs).

use std::process::ExitCode;

use clap::Parser;
use flwr::client::ClientAppArgs;
use flwr_examples::{client_registry, AppChoice};

/// Run the example ClientApps against a SuperNode's ClientAppIo API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    app: ClientAppArgs,
    /// Serve every run with this app instead of choosing by the FAB's clientapp reference.
    #[arg(long, value_enum)]
    app_name: Option<AppChoice>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut registry = client_registry(cli.app_name);
    tracing::info!("Starting Flower ClientApp (Rust; apps {registry:?})");
    runtime.block_on(cli.app.options().run(&mut registry))?;
    Ok(())
}
