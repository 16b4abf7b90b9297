//! `flower-loadgen`: flags → [`Config`] → [`flwr_loadgen::run`] → the report as a table or one
//! JSON line. Bad flags, keys or limits exit 64 (EX_USAGE), a test that cannot start exits 1,
//! each after one `error: ...` line on stderr. Failed calls do not change the exit status:
//! they are what the report counts.

use std::process::ExitCode;

use flwr_loadgen::{Args, Config, LoadError};
use flwr_runtime::cli::EX_USAGE;

fn main() -> ExitCode {
    let args = match flwr_runtime::cli::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
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
