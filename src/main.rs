//! `tenancy-fixer`: parse the command line and run the subcommand (see [`tenancy_fixer::cli`]).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tenancy_fixer::cli::Cli;

fn main() -> ExitCode {
    // One TLS provider for the webhook server and the Kubernetes client, before either exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line on stderr, naming what is wrong (a config error names the key).
            eprintln!("tenancy-fixer: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
