//! The flags `flower-demo` and `flower-ha-demo` share, flattened into each binary's own
//! (`#[command(flatten)]`), and how they fill a [`DemoConfig`].

use std::path::{Path, PathBuf};

use clap::builder::TypedValueParser as _;

use crate::{DemoConfig, DemoError};

/// The federation's size, training and directories: the flags both demos take.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonFlags {
    /// SuperNodes that train (`flower-demo` starts one more, unlisted, as the rogue).
    #[arg(long, default_value_t = crate::DEFAULT_NODES,
          value_parser = clap::value_parser!(u16).range(1..=32).map(usize::from))]
    pub nodes: usize,
    /// Local epochs per round on each SuperNode (`local-epochs`); `flower-demo`'s central
    /// baseline trains rounds × this many epochs.
    #[arg(long, default_value_t = crate::DEFAULT_LOCAL_EPOCHS,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub local_epochs: u64,
    /// Gradient descent step size (`learning-rate`).
    #[arg(long, default_value_t = crate::DEFAULT_LEARNING_RATE)]
    pub learning_rate: f64,
    /// Keep credentials, logs and everything else the demo writes in this directory
    /// [default: a temporary directory, removed after a successful run and kept after a
    /// failure].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where to write the summary (`flower-demo`: summary.json and learning_curve.svg;
    /// `flower-ha-demo`: ha_summary.json).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// Directory holding flower-superlink, flower-supernode, flwr-rs-serverapp and
    /// flwr-rs-clientapp [default: the directory of this executable].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The app bundle to run [default: crates/flwr-examples/app/logreg of this repository].
    #[arg(long)]
    pub app_dir: Option<PathBuf>,
}

impl CommonFlags {
    /// `--bin-dir`, or the directory of the running executable.
    ///
    /// # Errors
    ///
    /// [`DemoError::Config`] when the executable cannot be located.
    pub fn bin_dir(&self) -> Result<PathBuf, DemoError> {
        if let Some(dir) = &self.bin_dir {
            return Ok(dir.clone());
        }
        let exe = std::env::current_exe().map_err(|error| {
            DemoError::Config(format!(
                "locating this executable (pass --bin-dir): {error}"
            ))
        })?;
        exe.parent().map(Path::to_path_buf).ok_or_else(|| {
            DemoError::Config("the executable has no parent directory (pass --bin-dir)".into())
        })
    }

    /// Copies the flags into `config` (its `bin_dir` is set at creation, from [`Self::bin_dir`]).
    pub fn apply(self, config: &mut DemoConfig) {
        config.nodes = self.nodes;
        config.local_epochs = self.local_epochs;
        config.learning_rate = self.learning_rate;
        config.work_dir = self.work_dir;
        config.out_dir = self.out_dir;
        if let Some(dir) = self.app_dir {
            config.app_dir = dir;
        }
    }
}
