//! The `sallyport` binary: parse the command line, run the subcommand, print
//! the error chain. Everything else lives in the library (`src/lib.rs`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sallyport::commands::Cli::parse();
    match sallyport::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sallyport: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
