//! The `flwr-serverapp` loop (BEHAVIOR.md §4.5):
//!
//! ```text
//! PullServerAppInputs until a run is pending (every 3 s, even with --run-once)
//! GetRun; start uploading logs (PushLogs)
//! read the FAB: run_config = [tool.flwr.app.config] + the run's overrides
//! UpdateRunStatus running
//! load the app named by the FAB and run it with the Grid
//! PushServerAppOutputs{context}
//! UpdateRunStatus finished:completed, or finished:failed with the error
//! (nothing when the run was stopped); --run-once → exit
//! ```

use std::time::Duration;

use crate::app_spec::AppSpec;
use crate::context::{Context, RunStatus};
use crate::error::AppError;
use crate::server::grid::{Grid, GridError, ServerAppInputs, DEFAULT_ADDRESS};
use crate::server::logs::LogTee;
use crate::server::ServerAppLoader;
use crate::transport::{ChannelArgs, RetryPolicy};

/// Log upload cadence of the reference.
const LOG_INTERVAL: Duration = Duration::from_millis(200);

/// Command-line flags of `flwr-serverapp` (CLI.md §3.1), for a Rust drop-in binary.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerAppArgs {
    /// Address of the SuperLink's ServerAppIo API.
    #[arg(long, default_value = DEFAULT_ADDRESS, env = "FLWR_SERVERAPPIO_API_ADDRESS")]
    pub serverappio_api_address: String,
    /// Exit after one run (still waits until a run is pending).
    #[arg(long)]
    pub run_once: bool,
    /// `--insecure`, `--flwr-dir` and the message size limit.
    #[command(flatten)]
    pub channel: ChannelArgs,
}

impl ServerAppArgs {
    /// Options for [`run_serverapp`] from these flags.
    pub fn options(&self) -> ServerAppOptions {
        ServerAppOptions {
            run_once: self.run_once,
            max_message_size: self.channel.max_message_size(),
            ..ServerAppOptions::new(&self.serverappio_api_address)
        }
    }
}

/// How [`run_serverapp`] connects and polls.
#[derive(Clone, Debug)]
pub struct ServerAppOptions {
    /// ServerAppIo address, `host:port`.
    pub address: String,
    /// Return after one run.
    pub run_once: bool,
    /// Pause between `PullServerAppInputs` polls (3 s in the reference).
    pub input_poll_interval: Duration,
    /// Pause between `PullTaskRes` polls of the [`Grid`] (3 s in the reference).
    pub reply_poll_interval: Duration,
    /// Retry rule for `UNAVAILABLE`.
    pub retry: RetryPolicy,
    /// Largest message received or sent, in bytes (512 MiB, as the reference).
    pub max_message_size: usize,
    /// Where the app's log output is captured for `PushLogs`; `None` uploads nothing.
    pub logs: Option<LogTee>,
}

impl ServerAppOptions {
    /// Defaults of `flwr-serverapp` for `address`.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            run_once: false,
            input_poll_interval: Duration::from_secs(3),
            reply_poll_interval: Duration::from_secs(3),
            retry: RetryPolicy::default(),
            max_message_size: flwr_proto::MAX_MESSAGE_SIZE,
            logs: None,
        }
    }
}

/// Why the ServerApp loop stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// A ServerAppIo call outside of an app run failed.
    #[error(transparent)]
    Grid(#[from] GridError),
}

/// Runs ServerApps for the SuperLink's pending runs, as `flwr-serverapp` does.
///
/// App failures do not end the loop: they mark the run `finished:failed` (with
/// `run_once`, the function then returns `Ok`, as the reference exits 0).
///
/// # Errors
///
/// [`RunnerError`] when polling for runs or reporting a run's final status fails.
pub async fn run_serverapp<L: ServerAppLoader + ?Sized>(
    loader: &mut L,
    options: &ServerAppOptions,
) -> Result<(), RunnerError> {
    let base = Grid::connect_lazy(&options.address)?
        .with_max_message_size(options.max_message_size)
        .with_retry(options.retry)
        .with_poll_interval(options.reply_poll_interval);
    loop {
        let Some(inputs) = base.pull_inputs().await? else {
            tokio::time::sleep(options.input_poll_interval).await;
            continue;
        };
        let run_id = inputs.run.run_id;
        tracing::info!("Starting run {run_id} of {}", inputs.run.fab_id);
        if let Some(logs) = &options.logs {
            logs.set_capturing(true);
        }
        let mut grid = base.clone();
        let uploader = options.logs.clone().map(|logs| {
            let grid = grid.clone();
            // Aborted below, once the run is over; the last lines go up after that.
            flwr_runtime::task::spawn("log-uploader", async move {
                loop {
                    tokio::time::sleep(LOG_INTERVAL).await;
                    upload(&grid, run_id, &logs).await;
                }
            })
        });
        let status = match run_one(loader, &mut grid, inputs).await {
            Ok(()) => Some(RunStatus::completed()),
            Err(error) if error.is_run_stopped() => {
                tracing::info!("Run ID {run_id} stopped.");
                None
            }
            Err(error) => {
                tracing::error!("ServerApp raised an exception: {error}");
                Some(RunStatus::failed(error.message()))
            }
        };
        if let Some(task) = uploader {
            task.abort();
        }
        if let Some(logs) = &options.logs {
            upload(&grid, run_id, logs).await;
            logs.set_capturing(false);
        }
        if let Some(status) = status {
            base.update_run_status(run_id, status).await?;
        }
        if options.run_once {
            return Ok(());
        }
    }
}

/// Everything between pulling the inputs and the final status update.
async fn run_one<L: ServerAppLoader + ?Sized>(
    loader: &mut L,
    grid: &mut Grid,
    inputs: ServerAppInputs,
) -> Result<(), AppError> {
    let ServerAppInputs {
        mut context,
        run,
        fab,
    } = inputs;
    let run_id = run.run_id;
    grid.set_run(run_id).await?;
    let spec = AppSpec::from_fab(&fab.content)
        .map_err(|error| AppError::with_type("ValueError", error.to_string()))?;
    context.run_config = spec.run_config(&run.override_config);
    grid.update_run_status(run_id, RunStatus::running()).await?;
    let app = loader.load(&spec, &run)?;
    tracing::info!("Running ServerApp `{}`", spec.serverapp);
    let mut updated: Context = context;
    app.run(grid, &mut updated).await?;
    grid.push_outputs(run_id, updated).await?;
    Ok(())
}

/// Pushes what the tee collected; a failed upload loses those lines but not the run.
async fn upload(grid: &Grid, run_id: u64, logs: &LogTee) {
    let chunks = logs.take();
    if chunks.is_empty() {
        return;
    }
    if let Err(error) = grid.push_logs(run_id, chunks).await {
        // Not through tracing: that would feed the tee and loop.
        eprintln!("uploading run logs failed: {error}");
    }
}
