//! `turnkey-load`: the load generator on its own (the same arguments as `turnkey load`).

use std::process::ExitCode;

use clap::Parser;

/// Drive a TURN server and measure it.
#[derive(Debug, Parser)]
#[command(name = "turnkey-load", version)]
struct Cli {
    #[command(flatten)]
    args: turnkey_load::LoadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnkey-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(turnkey_load::run_cli(cli.args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("turnkey-load: {e}");
            ExitCode::from(2)
        }
    }
}
