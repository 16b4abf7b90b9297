//! `flower-superlink`: parse flags → validate into a [`Config`] → bind → serve until SIGINT or
//! SIGTERM → exit 0. Bad configuration exits 64 (EX_USAGE), any other failure 1, each with one
//! `error: …` line on stderr.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use flwr_runtime::cli::EX_USAGE;
use flwr_superlink::{Args, Config, SuperLink};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = flwr_runtime::logging::init(args.log_format) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }

    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let signals = flwr_runtime::signal::Signals::install()
            .context("installing SIGINT/SIGTERM handlers")?;
        tracing::info!("Starting Flower SuperLink");
        let superlink = SuperLink::bind(config).await?;
        superlink
            .run(async {
                let signal = signals.recv().await;
                tracing::info!("received {signal}");
            })
            .await?;
        Ok(())
    })
}
