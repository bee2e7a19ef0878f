//! The `galopush client` command: a terminal in the shell. It dispatches, connects (plain or
//! over TLS) and registers, prints and acks every message that arrives, sends each line of its
//! input as an IM, and keeps the connection alive with PINGs. The binary only parses arguments.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::message::{IMRESP_ACCEPTED, PONG_OK, REGRESP_OK};
use galopush_protocol::{Down, TermType, Up};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::dispatch::{BusinessApi, Dispatcher};
use crate::error::{ClientError, Result};
use crate::terminal::{Terminal, Transport};
use crate::tls::{Tls, Trust};

/// How often the shell pings by default: well within the comet's idle timeout (SPEC §5).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(60);

/// What `galopush client` was asked to do.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The router's public HTTP base (the dispatcher), e.g. `http://127.0.0.1:5150`.
    pub http: String,
    /// The business API's base (for `login`), e.g. `http://127.0.0.1:5152`.
    pub api: String,
    /// The business API's bearer token, when it has one.
    pub api_token: Option<String>,
    pub uid: String,
    pub token: String,
    pub term: TermType,
    pub transport: Transport,
    /// The comet to connect to; when set, the dispatcher is not asked.
    pub addr: Option<String>,
    /// First log the user in by publishing a `userOnlineState` with `token` as its code.
    pub login: bool,
    /// Time between PINGs; zero sends none.
    pub ping_interval: Duration,
    /// Ask the dispatcher with `tls=1` and connect over TLS (WSS for a Web terminal).
    pub tls: bool,
    /// A PEM file of CA certificates to trust instead of the system's roots: for the comet,
    /// the dispatcher and the API.
    pub ca: Option<PathBuf>,
}

/// Runs the shell until the comet kicks the terminal or closes the connection.
///
/// Each line of `input` is sent as an IM (empty lines are skipped); the end of `input` stops
/// only the sending, not the session. Every line written to `output` is flushed at once.
pub async fn run(
    opts: ShellOptions,
    input: impl AsyncBufRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
) -> Result<()> {
    let trust = match &opts.ca {
        Some(path) => Trust::ca_file(path)?,
        None => Trust::system(),
    };
    let tls = opts.tls.then(|| Tls::new(&trust)).transpose()?;
    let dispatcher = Dispatcher::with_trust(&opts.http, &trust)?;
    if opts.login {
        BusinessApi::with_trust(&opts.api, opts.api_token.as_deref(), &trust)?
            .login(&opts.uid, opts.term, &opts.token)
            .await?;
        say(
            &mut output,
            &format!("logged in uid={} termtype={}", opts.uid, opts.term),
        )
        .await?;
    }
    let addr = match opts.addr {
        Some(addr) => addr,
        None if opts.tls => dispatcher.comet_addr_tls(&opts.uid, opts.term).await?,
        None => dispatcher.comet_addr(&opts.uid, opts.term).await?,
    };
    let mut terminal = match &tls {
        Some(tls) => Terminal::connect_tls(&addr, opts.transport, tls, None).await?,
        None => Terminal::connect(&addr, opts.transport).await?,
    };
    let code = terminal.register(&opts.uid, &opts.token, opts.term).await?;
    if code != REGRESP_OK {
        say(&mut output, &format!("register failed: code {code}")).await?;
        return Err(ClientError::Rejected(code));
    }
    let over = if tls.is_some() { " over TLS" } else { "" };
    say(&mut output, &format!("registered on {addr}{over}")).await?;

    let mut lines = Some(input.lines());
    let mut ims_in_flight = HashSet::new();
    let mut pings = (!opts.ping_interval.is_zero()).then(|| {
        let mut pings =
            tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        pings
    });

    loop {
        tokio::select! {
            received = terminal.recv() => {
                let Some((tid, down)) = received? else {
                    say(&mut output, "connection closed by the comet").await?;
                    return Ok(());
                };
                if let Some(line) = describe(tid, &down, &mut ims_in_flight) {
                    say(&mut output, &line).await?;
                }
                if let Down::Kick { .. } = down {
                    // The comet closes right after a KICK and does not wait for the KICKRESP,
                    // so failing to send it changes nothing.
                    let _ = terminal.ack(tid, &down).await;
                    return Ok(());
                }
                terminal.ack(tid, &down).await?;
            }
            line = next_line(&mut lines) => {
                match line? {
                    Some(line) => {
                        let body = line.trim_end_matches('\r');
                        if !body.is_empty() {
                            let tid = terminal.send_im(Bytes::copy_from_slice(body.as_bytes())).await?;
                            ims_in_flight.insert(tid);
                        }
                    }
                    None => lines = None,
                }
            }
            () = next_ping(&mut pings) => {
                let tid = terminal.fresh_tid();
                terminal.send(tid, Up::Ping).await?;
            }
        }
    }
}

/// The line printed for a message from the comet, if any: every down-message, the IMRESP to
/// an IM this shell sent (which it takes out of `ims_in_flight`), and a PONG that is not ok.
fn describe(tid: u32, down: &Down, ims_in_flight: &mut HashSet<u32>) -> Option<String> {
    Some(match down {
        Down::Push { offline, flag, msg } => {
            format!(
                "push tid={tid} offline={offline} flag={flag}: {}",
                text(msg)
            )
        }
        Down::Callback { msg } => format!("callback tid={tid}: {}", text(msg)),
        Down::Im { flag, msg } => format!("im tid={tid} flag={flag}: {}", text(msg)),
        Down::Kick { reason } => format!("kick reason={reason}"),
        Down::ImResp { code } if ims_in_flight.remove(&tid) => {
            let outcome = if *code == IMRESP_ACCEPTED {
                "accepted"
            } else {
                "failed"
            };
            format!("im sent tid={tid} {outcome}")
        }
        Down::ImResp { code } => format!("imresp tid={tid} code={code}"),
        Down::Pong { code } if *code == PONG_OK => return None,
        Down::Pong { code } => format!("pong code={code}"),
        Down::RegResp { code } => format!("regresp tid={tid} code={code}"),
    })
}

/// The next input line; pending forever once the input has ended.
async fn next_line<R: AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Lines<R>>,
) -> Result<Option<String>> {
    match lines {
        Some(lines) => Ok(lines.next_line().await?),
        None => std::future::pending().await,
    }
}

/// When the next PING is due; never when PINGs are off.
async fn next_ping(pings: &mut Option<Interval>) {
    match pings {
        Some(pings) => {
            pings.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A message body as printable text.
fn text(msg: &Bytes) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(msg)
}

/// Writes one line and flushes it.
async fn say(output: &mut (impl AsyncWrite + Unpin), line: &str) -> Result<()> {
    output.write_all(format!("{line}\n").as_bytes()).await?;
    output.flush().await?;
    Ok(())
}
