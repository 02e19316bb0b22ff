//! The `zdcflow` binary: parse arguments, run, print the error chain on one line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = zdcflow::cli::Cli::parse();
    match zdcflow::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
