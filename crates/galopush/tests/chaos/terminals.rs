//! The chaos run's terminals: each asks a router's dispatcher for its comet, connects, registers,
//! acks what it is sent and sends IMs up, and starts again whenever the connection ends — as a
//! phone's app does. The fault injector can make one drop its connection in the middle of a
//! frame, and keep some away at the end of the run so that their messages stay stored.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use galopush_client::{ClientError, Dispatcher, Terminal, Transport};
use galopush_protocol::message::{Down, Up};
use galopush_protocol::{Encoding, Frame, TermType};
use tokio::time::Instant;

use crate::ledger::Ledger;

const TCP: Transport = Transport::Tcp {
    encoding: Encoding::None,
};

/// What the run tells one terminal to do.
#[derive(Default)]
pub struct Control {
    /// Drop the connection in the middle of a frame, once.
    pub drop_mid_frame: AtomicBool,
    /// Stay disconnected until this is false again.
    pub away: AtomicBool,
    /// Close the connection and register again, once.
    pub reregister: AtomicBool,
    /// Registered on a comet right now.
    pub registered: AtomicBool,
}

/// One terminal of the run.
pub struct Spec {
    pub index: usize,
    pub uid: String,
    pub code: String,
    pub term: TermType,
}

impl Spec {
    pub fn new(index: usize) -> Spec {
        let term = [TermType::Android, TermType::Ios, TermType::Pc][index % 3];
        Spec {
            index,
            uid: format!("chaos-{index}"),
            code: format!("code-{index}"),
            term,
        }
    }
}

/// How the terminals behave.
#[derive(Clone)]
pub struct Behaviour {
    /// The routers' dispatchers, tried in turn.
    pub dispatchers: Arc<[Dispatcher]>,
    /// Mean interval between two IMs up of one terminal.
    pub im_up_every: Duration,
    /// Sending IMs up at all (stopped before the final accounting).
    pub sending: Arc<AtomicBool>,
    /// Registrations refused (REGRESP 3), e.g. while the store is down: retried.
    pub refused: Arc<AtomicUsize>,
}

/// Runs terminal `spec` until the task is aborted.
pub async fn run(spec: Spec, control: Arc<Control>, behaviour: Behaviour, ledger: Arc<Ledger>) {
    // Sockets spread over 127.0.0.2–127.0.0.9 so that reconnects do not run out of ports.
    let local_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (spec.index % 8) as u8));
    let mut rng = fastrand::Rng::with_seed(spec.index as u64);
    let mut attempt = 0usize;
    loop {
        while control.away.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        attempt += 1;
        let dispatcher = &behaviour.dispatchers[attempt % behaviour.dispatchers.len()];
        if let Some(mut terminal) = connect(&spec, dispatcher, local_ip, &behaviour).await {
            control.registered.store(true, Ordering::Relaxed);
            session(
                &spec,
                &mut terminal,
                &control,
                &behaviour,
                &ledger,
                &mut rng,
            )
            .await;
            control.registered.store(false, Ordering::Relaxed);
        }
        // Jittered, so that the terminals of a killed comet do not all come back at once.
        tokio::time::sleep(Duration::from_millis(50 + rng.u64(0..450))).await;
    }
}

/// Dispatch, connect, register; `None` when any step fails (it is tried again).
async fn connect(
    spec: &Spec,
    dispatcher: &Dispatcher,
    local_ip: IpAddr,
    behaviour: &Behaviour,
) -> Option<Terminal> {
    let addr = dispatcher.comet_addr(&spec.uid, spec.term).await.ok()?;
    let mut terminal = Terminal::connect_from(&addr, TCP, Some(local_ip))
        .await
        .ok()?;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        terminal.register(&spec.uid, &spec.code, spec.term),
    )
    .await;
    match answer {
        Ok(Ok(0)) => Some(terminal),
        Ok(Ok(_)) => {
            behaviour.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => None,
    }
}

/// One registered connection, until it ends.
async fn session(
    spec: &Spec,
    terminal: &mut Terminal,
    control: &Control,
    behaviour: &Behaviour,
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
) {
    let mut ims_up: Vec<(u32, String)> = Vec::new();
    let mut next_up = Instant::now() + jitter(rng, behaviour.im_up_every);
    loop {
        match terminal.recv_timeout(Duration::from_millis(200)).await {
            Ok(Some((tid, down))) => {
                let (body, offline) = match &down {
                    Down::Push { offline, msg, .. } => (Some(msg), *offline),
                    Down::Callback { msg } | Down::Im { msg, .. } => (Some(msg), 0),
                    Down::ImResp { code } => {
                        if let Some(at) = ims_up.iter().position(|(t, _)| *t == tid) {
                            let (_, body) = ims_up.swap_remove(at);
                            if *code == 0 {
                                ledger.up_accepted(spec.index, &body);
                            }
                        }
                        (None, 0)
                    }
                    Down::Kick { .. } => return,
                    Down::RegResp { .. } | Down::Pong { .. } => (None, 0),
                };
                if let Some(body) = body {
                    ledger.received(spec.index, body, offline);
                    // Now and then the app dies before it acks: the message must come again.
                    if rng.u32(0..1000) == 0 {
                        return;
                    }
                    if terminal.ack(tid, &down).await.is_err() {
                        return;
                    }
                }
            }
            Err(ClientError::Timeout(_)) => {}
            Ok(None) | Err(_) => return,
        }
        if control.drop_mid_frame.swap(false, Ordering::Relaxed) {
            let frame = Frame::new(
                Encoding::None,
                terminal.fresh_tid(),
                Up::Im {
                    msg: Bytes::from_static(b"never finished"),
                },
            )
            .to_bytes()
            .expect("an IM frame encodes");
            let _ = terminal.send_raw(&frame[..frame.len() / 2]).await;
            return;
        }
        if control.away.load(Ordering::Relaxed) || control.reregister.swap(false, Ordering::Relaxed)
        {
            return;
        }
        if behaviour.sending.load(Ordering::Relaxed) && Instant::now() >= next_up {
            next_up = Instant::now() + jitter(rng, behaviour.im_up_every);
            let body = ledger.up_body();
            match terminal.send_im(Bytes::from(body.clone())).await {
                Ok(tid) => ims_up.push((tid, body)),
                Err(_) => return,
            }
        }
    }
}

/// Between half and one and a half times `mean`.
fn jitter(rng: &mut fastrand::Rng, mean: Duration) -> Duration {
    mean / 2 + mean.mul_f64(rng.f64())
}
