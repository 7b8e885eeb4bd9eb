//! `turnkey`: the binary. Thin by design: config, wiring, the metrics registry, signals and
//! shutdown. Protocol logic lives in the library crates.

mod cli;
mod config;
mod datadir;
mod serve;

use clap::Parser as _;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(*args),
        Command::Creds(args) => serve::creds(args),
        Command::CheckConfig(args) => check_config(&args.file),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnkey: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let f = config::load_file(path)?;
    config::validate(&f)?;
    println!("{}: ok", path.display());
    Ok(())
}
