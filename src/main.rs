//! The `portcullis` binary: parse the command line, run the command, map errors to exit codes
//! (1 for failures, 2 for usage errors, which clap reports itself).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::commands::execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
