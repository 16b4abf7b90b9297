//! How the flower-rs binaries read their command line: `--help` and `--version` print and exit
//! 0; a bad command line is one `error: ...` line on stderr and exit 64 (`EX_USAGE`), so a log
//! or a supervisor shows the whole reason on one line.

use std::process::ExitCode;

/// sysexits.h `EX_USAGE`: the command was used incorrectly.
pub const EX_USAGE: u8 = 64;

/// Parses the process's arguments; on `Err` the binary returns the exit code as it is (the
/// help, version or error has been printed).
pub fn parse<A: clap::Parser>() -> Result<A, ExitCode> {
    A::try_parse().map_err(|error| {
        if error.use_stderr() {
            eprintln!("{}", one_line(&error.render().to_string()));
            ExitCode::from(EX_USAGE)
        } else {
            // --help / --version.
            let _ = error.print();
            ExitCode::SUCCESS
        }
    })
}

/// clap's rendering of an error ("error: ...", maybe continued on indented lines, a blank line,
/// then tips and usage) as its first paragraph on one line.
pub fn one_line(rendered: &str) -> String {
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    if first.is_empty() {
        return "error: invalid arguments (see --help)".to_owned();
    }
    first.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[arg(long)]
        port: u16,
    }

    fn rendered(args: &[&str]) -> String {
        let error = <Args as clap::Parser>::try_parse_from(args).unwrap_err();
        one_line(&error.render().to_string())
    }

    #[test]
    fn a_clap_error_is_its_first_paragraph_on_one_line() {
        assert_eq!(
            rendered(&["x"]),
            "error: the following required arguments were not provided: --port <PORT>"
        );
        assert_eq!(
            rendered(&["x", "--port", "70000"]),
            "error: invalid value '70000' for '--port <PORT>': 70000 is not in 0..=65535"
        );
        let unknown = rendered(&["x", "--nope"]);
        assert_eq!(unknown, "error: unexpected argument '--nope' found");
        assert_eq!(one_line("\n\n"), "error: invalid arguments (see --help)");
    }
}
