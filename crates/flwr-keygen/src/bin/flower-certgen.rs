//! `flower-certgen`: a CA and a server certificate for the SuperLink's TLS.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;

/// Generate DIR/ca.crt, DIR/ca.key, DIR/server.pem and DIR/server.key: a certificate
/// authority and a server certificate signed by it, for `flower-superlink --ssl-ca-certfile
/// ca.crt --ssl-certfile server.pem --ssl-keyfile server.key` and
/// `flower-supernode --root-certificates ca.crt`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Host names and IP addresses the server is reached under (repeat the flag).
    #[arg(long = "host", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])]
    hosts: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
    days: i64,
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "certificates")]
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
    let files = flwr_keygen::certs::certificate_files(&args.dir, &args.hosts, args.days)
        .context("--host")?;
    flwr_keygen::files::write_all(&files, args.force)?;
    for file in &files {
        println!("wrote {}", file.path.display());
    }
    Ok(())
}
