//! `turnkey`: the binary. Thin by design: config, wiring, the metrics registry, signals and
//! shutdown. Protocol logic lives in the library crates.

mod addrs;
mod advertise;
mod banner;
mod cli;
mod config;
mod datadir;
mod docgen;
mod fastpath;
mod fdlimit;
mod fleet;
mod fleet_cmd;
mod fleet_relay;
mod fleet_sessions;
mod issuer;
mod issuer_fleet;
mod obs;
mod preflight;
mod proc_cpu;
mod process;
mod secret;
mod serve;
mod sessions;
mod sessions_cmd;
mod turns;

use clap::FromArgMatches as _;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    // `turnkey gen-docs DIR`, for packagers, is not part of the CLI it documents (so it appears
    // in neither the man pages nor the completions).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "gen-docs" {
        return match docgen::generate(std::path::Path::new(&args[2])) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("turnkey: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = match Cli::from_arg_matches(&cli::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Load(args) => return load(*args),
        Command::Serve(args) => serve::serve(*args),
        Command::Creds(args) => serve::creds(args),
        Command::Secret(args) => match args.action {
            cli::SecretAction::Generate { out } => secret::generate(out.as_deref()),
        },
        Command::CheckConfig(args) => check_config(&args.file),
        Command::Issuer(args) => serve::issuer(*args),
        Command::Keys(args) if args.redis.redis.is_some() => fleet_cmd::keys(args),
        Command::Keys(args) => keys(args),
        Command::Sessions(args) => sessions_cmd::sessions(args),
        Command::Fleet(args) => fleet_cmd::fleet(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnkey: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `turnkey load`: exit 0 when the run passed its gates, 1 when it did not, 2 when it could not run.
fn load(args: turnkey_load::LoadArgs) -> std::process::ExitCode {
    turnkey_load::main(args, "turnkey load")
}

fn keys(args: cli::KeysArgs) -> anyhow::Result<()> {
    use cli::KeysAction;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    match args.action {
        KeysAction::Create { max_ttl, monthly_bandwidth_bytes, admin } => {
            datadir::ensure(&args.data_dir)?;
            let opts = turnkey_issuer::KeyOptions { max_ttl, monthly_bandwidth_bytes, admin };
            println!("{}", turnkey_issuer::keys_create(&args.data_dir, opts, now)?.trim_end());
        }
        KeysAction::List => print!("{}", turnkey_issuer::keys_list(&args.data_dir)?),
        KeysAction::Delete { id } => turnkey_issuer::keys_delete(&args.data_dir, &id)?,
    }
    Ok(())
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let settings = config::Settings::load(Some(path), toml::Table::new())?;
    println!("{}: ok", path.display());
    // Warnings go to stderr: stdout stays the one `ok` line scripts compare.
    for line in turns::config_warnings(&settings) {
        eprintln!("{line}");
    }
    Ok(())
}
