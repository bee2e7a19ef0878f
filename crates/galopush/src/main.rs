//! The `galopush` binary: parses the command line, loads the configuration and starts the part
//! asked for. Nothing else lives here.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use galopush_server::config::Config;

/// galopush: a push gateway for mobile and web terminals.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (SPEC §9); every key can also be set by
    /// GALOPUSH_<SECTION>__<KEY>.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Router, comet, embedded bus and embedded store in one process.
    Standalone,
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    Config::from_env(path.map(PathBuf::as_path)).map_err(|e| {
        eprintln!("galopush: bad configuration: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("galopush: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone => {
            let config = match load_config(cli.config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            galopush_server::logging::init(&config.log);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(galopush_server::standalone::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("galopush: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
