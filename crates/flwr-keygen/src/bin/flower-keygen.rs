//! `flower-keygen`: SuperNode authentication keys for a SuperLink and N SuperNodes.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;

/// Generate ECDSA P-384 key pairs for SuperNode authentication, in the layout of Flower's
/// guide: DIR/server_credentials{,.pub}, DIR/client_credentials_N{,.pub} and
/// DIR/client_public_keys.csv (the list for `flower-superlink --auth-list-public-keys`).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of SuperNode key pairs.
    #[arg(long, short = 'n', default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=10000))]
    supernodes: u16,
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "keys")]
    dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let files = flwr_keygen::keys::key_files(&args.dir, usize::from(args.supernodes))
        .context("generating keys")?;
    flwr_keygen::files::write_all(&files, args.force)?;
    for file in &files {
        println!("wrote {}", file.path.display());
    }
    Ok(())
}
