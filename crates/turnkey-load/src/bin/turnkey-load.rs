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
    turnkey_load::main(Cli::parse().args, "turnkey-load")
}
