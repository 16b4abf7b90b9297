//! `flower-supernode`: parse flags → validate into a `Config` → run the node → exit code.
//!
//! Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 64 (EX_USAGE) for a bad command
//! line, 1 when the node gives up on the SuperLink. Failures end with one `error: ...` line on
//! stderr.

use std::process::ExitCode;

use flwr_runtime::cli::EX_USAGE;
use flwr_runtime::signal::Signals;
use flwr_supernode::Args;

fn main() -> ExitCode {
    let cli = match flwr_runtime::cli::parse::<Args>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(error) = flwr_runtime::logging::init(cli.log_format) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let operations = match cli.operations() {
        Ok(operations) => operations,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = match cli.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    match run(config, operations) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: flwr_supernode::Config,
    operations: flwr_supernode::Operations,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let signals = Signals::install().context("installing SIGINT/SIGTERM handlers")?;
        let shutdown = async move {
            let signal = signals.recv().await;
            tracing::info!("Received {signal}");
        };
        flwr_supernode::run_operated(config, operations, shutdown).await?;
        Ok(())
    })
}
