//! The `galopush` binary: parses the command line, loads the configuration and starts the part
//! asked for. Nothing else lives here.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Parser, Subcommand};
use galopush_client::shell::ShellOptions;
use galopush_client::{Encoding, TermType, Transport, WebFraming};
use galopush_server::config::Config;
use galopush_server::start::StartError;

/// jemalloc instead of glibc's malloc: a delivery allocates and frees a dozen small objects
/// across threads, and glibc's malloc was a fifth of the server's user-space instructions. In
/// interleaved runs (BENCHMARKS.md) jemalloc cut the server's CPU per unicast delivery by 17%
/// with the same RSS per idle connection; mimalloc, tried first, grew RSS by ~45%.
///
/// Built with its `background_threads` feature: jemalloc otherwise returns freed pages only when
/// it is next called, so a server gone quiet after a burst kept its peak RSS for good (165 MiB
/// after a million fan-out deliveries); its background thread gives it back within the decay
/// time (20 MiB 20 s later).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILT_FROM_COMMIT"),
    ")"
);

/// galopush: a push gateway for mobile and web terminals. Documentation: docs/ in the source
/// repository (configuration.md, operations.md, protocol.md, business.md).
#[derive(Parser)]
#[command(
    version = VERSION,
    about,
    after_help = "Documentation: docs/ in the source repository (configuration.md, \
                  operations.md, protocol.md, business.md, architecture.md)."
)]
struct Cli {
    /// TOML configuration file (docs/configuration.md); every key can also be set by
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
    /// A cluster router: login records, routing, kicks, dispatch; comets join it over gRPC.
    Router,
    /// A cluster comet: terminal connections; joins every router in comet.router_rpc.
    Comet,
    /// A terminal in the shell: dispatch, connect, register, print and ack what arrives; each
    /// line typed becomes an IM.
    Client(ClientArgs),
    /// The load generator: many terminals, publishing, latency percentiles, throughput,
    /// server memory.
    Bench(Box<galopush_bench::BenchArgs>),
    /// The configuration in force (file, environment and defaults; secrets redacted), every
    /// key with its default, or a file checked.
    Config(ConfigArgs),
}

/// What `galopush config` prints.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Every key with its default and what it does, as a commented TOML file.
    #[arg(long, conflicts_with_all = ["check", "markdown"])]
    defaults: bool,
    /// Check FILE with the `GALOPUSH_*` environment, as a start would (secrets such as
    /// api.token usually come from there): exit 0 if it can be used, 2 naming the bad key.
    #[arg(long, value_name = "FILE", conflicts_with = "markdown")]
    check: Option<PathBuf>,
    /// The reference of every key as Markdown (docs/configuration.md).
    #[arg(long)]
    markdown: bool,
}

/// Runs `galopush config`.
fn config_command(args: ConfigArgs, file: Option<&PathBuf>) -> ExitCode {
    use galopush_server::config::reference;
    if args.defaults {
        print!("{}", reference::defaults_toml());
        return ExitCode::SUCCESS;
    }
    if args.markdown {
        print!("{}", reference::markdown());
        return ExitCode::SUCCESS;
    }
    if let Some(path) = args.check {
        return match Config::from_env(Some(&path)) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("galopush: bad configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    match load_config(file) {
        Ok(config) => {
            print!("{}", reference::effective_toml(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// How `galopush client` connects.
#[derive(clap::Args)]
struct ClientArgs {
    /// The router's public HTTP address (the dispatcher), http:// or https://.
    #[arg(long, default_value = "http://127.0.0.1:5150")]
    http: String,
    /// The business API's address, where --login publishes, http:// or https://.
    #[arg(long, default_value = "http://127.0.0.1:5152")]
    api: String,
    /// The business API's bearer token (api.token), for --login.
    #[arg(long, env = "GALOPUSH_API__TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// The user id to register as.
    #[arg(long)]
    uid: String,
    /// The token to register with (the `code` of the user's login record).
    #[arg(long)]
    token: String,
    /// Terminal type: Android, iOS, WinPhone, Web or PC.
    #[arg(long, default_value = "Android")]
    termtype: TermType,
    /// Body encoding of a TCP terminal (0 none, 1 bit-not, 2 pair-swap, 3 ring-xor).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    encoding: u8,
    /// Framing of a Web terminal.
    #[arg(long, value_enum, default_value_t = Framing::Compatible)]
    framing: Framing,
    /// Connect to this comet `host:port` instead of asking the dispatcher.
    #[arg(long)]
    addr: Option<String>,
    /// First publish a userOnlineState with the token as code (demos with the embedded bus).
    #[arg(long)]
    login: bool,
    /// Seconds between PINGs (0: none).
    #[arg(long, default_value_t = 60)]
    ping: u64,
    /// Connect over TLS: ask the dispatcher with tls=1 and connect to the comet's TLS listener
    /// (its WSS listener for Web terminals); --addr then names a TLS listener.
    #[arg(long)]
    tls: bool,
    /// A PEM file of CA certificates to trust instead of the system's roots, for the comet,
    /// the dispatcher and the API.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Framing {
    Compatible,
    Plain,
}

impl ClientArgs {
    fn options(self) -> ShellOptions {
        let transport = if self.termtype == TermType::Web {
            Transport::Web {
                framing: match self.framing {
                    Framing::Compatible => WebFraming::Compatible,
                    Framing::Plain => WebFraming::Plain,
                },
            }
        } else {
            Transport::Tcp {
                encoding: Encoding::from_bits(self.encoding),
            }
        };
        ShellOptions {
            http: self.http,
            api: self.api,
            api_token: self.api_token,
            uid: self.uid,
            token: self.token,
            term: self.termtype,
            transport,
            addr: self.addr,
            login: self.login,
            ping_interval: Duration::from_secs(self.ping),
            tls: self.tls,
            ca: self.ca,
        }
    }
}

/// Keeps SIGHUP from ending the process (its default action): with `[tls]` it reloads the
/// certificate (the server listens for it too); without, it is only logged. Service managers
/// send it for "reload".
fn survive_sighup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP received");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
    }
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

/// A server part, started with its configuration and a future that resolves on shutdown.
type Part = fn(
    Config,
    Pin<Box<dyn Future<Output = ()> + Send>>,
) -> Pin<Box<dyn Future<Output = Result<(), StartError>>>>;

/// Loads the configuration, sets up logging and runs a server part to the end.
fn serve(config: Option<&PathBuf>, part: Part) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    galopush_server::logging::init(&config.log);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let run = async {
        survive_sighup();
        part(config, Box::pin(shutdown_signal())).await
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("galopush: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone => serve(cli.config.as_ref(), |config, stop| {
            Box::pin(galopush_server::standalone::run(config, stop))
        }),
        Command::Router => serve(cli.config.as_ref(), |config, stop| {
            Box::pin(galopush_server::cluster::run_router(config, stop))
        }),
        Command::Comet => serve(cli.config.as_ref(), |config, stop| {
            Box::pin(galopush_server::cluster::run_comet(config, stop))
        }),
        Command::Bench(args) => galopush_bench::main(*args),
        Command::Config(args) => config_command(args, cli.config.as_ref()),
        Command::Client(args) => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let input = tokio::io::BufReader::new(tokio::io::stdin());
            match rt.block_on(galopush_client::shell::run(
                args.options(),
                input,
                tokio::io::stdout(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("galopush client: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
