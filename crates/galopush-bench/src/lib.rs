//! `galopush bench`, the load generator: many terminals against a server that speaks the
//! galopush protocol, driven only through its public surfaces (the dispatcher, the comet's TCP
//! and WebSocket listeners, plain or TLS, nsqd-style `/pub` and `/mpub`, over HTTP or HTTPS),
//! with the measurements a push gateway is judged by; or, for comparison, the same scenarios
//! against an MQTT 3.1.1 broker at QoS 1 (`--target mqtt://host:port`).
//!
//! - [`BenchArgs`]: the command line, which is also the library's input.
//! - [`run`]: one run (idle, unicast, fanout or storm), returning a [`Report`].
//! - [`plot`]: runs drawn side by side into an SVG file.
//! - [`main`]: what `galopush bench` does: a runtime, a run, the report on stdout (and drawn
//!   with `--plot`), the exit code; or, for `galopush bench plot`, saved runs drawn.
//!
//! Every terminal acks what it receives and checks it was meant for it; the bodies carry their
//! send time, so each delivery's publish-to-receive latency lands in an HDR histogram.
#![forbid(unsafe_code)]

mod args;
mod body;
mod error;
mod fleet;
mod mqtt;
mod plot;
mod publish;
mod report;
mod run;
mod soak;
mod system;

use std::process::ExitCode;

pub use args::{BenchArgs, Framing, MessageKind, Scenario, TransportKind, parse_duration};
pub use error::BenchError;
pub use report::{
    CometShare, ConnectReport, DeliveryReport, ErrorReport, Latency, Phase, Rate, Report,
    ServerReport,
};
pub use run::run;
pub use soak::Sample;

use std::path::Path;

/// Draws `runs` (reports, e.g. read back from `--json`) into the SVG file `path`, one row per
/// scenario with deliveries, one line per run.
pub fn plot(path: &Path, runs: &[Report]) -> Result<(), String> {
    plot::draw(path, runs)
}

/// Runs `galopush bench`: prints the report (text, or JSON with `--json`) and exits 0 when
/// nothing was lost and nothing failed, 1 when something was, 2 when the run could not be made.
pub fn main(args: BenchArgs) -> ExitCode {
    if args.scenario == Scenario::Plot {
        let drawn = match &args.plot {
            Some(path) => plot::read_runs(&args.runs).and_then(|runs| plot::draw(path, &runs)),
            None => Err("plot needs --plot FILE.svg".to_owned()),
        };
        return match drawn {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("galopush bench plot: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build().map_err(BenchError::Runtime) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("galopush bench: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if let Some(path) = &args.plot
                && let Err(e) = plot::draw(path, std::slice::from_ref(&report))
            {
                eprintln!("galopush bench: --plot: {e}");
            }
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("galopush bench: {e}");
            ExitCode::from(2)
        }
    }
}
