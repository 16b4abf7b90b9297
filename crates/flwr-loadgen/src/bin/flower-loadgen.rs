//! `flower-loadgen`: flags → [`Config`] → [`flwr_loadgen::run`] → the report as a table or one
//! JSON line. Bad flags, keys or limits exit 64 (EX_USAGE), a test that cannot start exits 1,
//! each after one `error: ...` line on stderr. Failed calls do not change the exit status:
//! they are what the report counts.

use std::process::ExitCode;

use clap::Parser as _;
use flwr_loadgen::{Args, Config, LoadError};

/// `EX_USAGE` from sysexits.h: the command was used incorrectly.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("{}", one_line(&error.to_string()));
            return ExitCode::from(EX_USAGE);
        }
    };
    let json = args.json;
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if config.generate_only {
        let flwr_loadgen::KeySource::Generate(dir) = &config.keys else {
            eprintln!("error: --generate-only needs --generate-keys DIR");
            return ExitCode::from(EX_USAGE);
        };
        return match flwr_loadgen::generate_keys(dir, config.nodes) {
            Ok(()) => {
                println!(
                    "wrote {} node key pairs, the SuperLink key pair and client_public_keys.csv to {}",
                    config.nodes,
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: --generate-keys: {error}");
                ExitCode::from(EX_USAGE)
            }
        };
    }
    let keys_flag = match &config.keys {
        flwr_loadgen::KeySource::Generate(_) => "--generate-keys",
        _ => "--keys",
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flwr_loadgen::run(config)) {
        Ok(report) if json => {
            println!("{}", report.to_json_line());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(LoadError::Keys(error)) => {
            eprintln!("error: {keys_flag}: {error}");
            ExitCode::from(EX_USAGE)
        }
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                LoadError::Limit(_) | LoadError::Secret(_) => ExitCode::from(EX_USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// clap's message on one line: its `error: ...` sentence with the argument lines that belong
/// to it, without the usage and `--help` hints that follow.
fn one_line(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect();
    if parts.is_empty() {
        return "error: invalid arguments (see --help)".to_owned();
    }
    parts.join(" ")
}
