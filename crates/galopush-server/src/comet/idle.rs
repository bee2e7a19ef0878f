//! Parked connections: registered terminals on plain TCP that have been quiet for
//! `comet.park_after`, kept without a task of their own.
//!
//! What an idle terminal costs the server is mostly the runtime's: its task (the connection's
//! future, 768 bytes in jemalloc's size class) and its registration with the runtime's reactor
//! (256 bytes). A parked connection has neither. Its socket is taken out of the runtime and
//! watched by the comet's own epoll set; what its task kept between frames (the encoding it
//! registered with, its next TID, when it last spoke) sits with its socket in one slot of the
//! watcher's table, about 80 bytes, and its [`Conn`] wakes the watcher, through a 32-byte waker,
//! instead of a task. The watcher revives the connection in a task of its own when
//! - its socket turns readable (a frame, or the terminal closing),
//! - something is queued for it (a delivery, a kick, an IM's answer),
//! - its idle deadline (`comet.idle_timeout` after it last spoke) has passed: the revived task
//!   closes it as idle, by the same path as any connection.
//!
//! Only connections with nothing open are parked: no transaction waiting for an ack, no IM
//! waiting for the business side, nothing read and not yet taken, nothing to write. Reviving one
//! costs a task and two `epoll_ctl` calls; it happens once per quiet spell, not per message.
//!
//! Bounds (SPEC §10): the table holds at most the comet's connections
//! (`limits.max_connections`); the watcher's two queues take at most one park and one wake-up
//! per parked connection (a connection's waker is taken by the first [`Conn::push`] that wakes
//! it).

use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::conn::Conn;
use super::{CometShared, ConnSlot, session};
use galopush_protocol::Encoding;

/// How often parked connections are checked against their idle deadline: a parked terminal is
/// closed as idle at most this late.
const SWEEP: Duration = Duration::from_secs(1);

/// Readiness events taken from the epoll set at a time.
const EVENTS: usize = 256;

/// What a registered connection's task keeps between frames, handed to the task that revives it.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// The encoding the terminal registered with, used for down-messages.
    pub encoding: Encoding,
    pub next_tid: u32,
    /// When the terminal last sent something: its idle deadline runs from here.
    pub last_seen: Instant,
}

/// A parked connection.
pub struct Parked {
    pub socket: StdTcpStream,
    pub conn: Arc<Conn>,
    /// Its place within the comet's connection limits, kept while it is parked.
    pub slot: ConnSlot,
    pub quiet: Quiet,
}

/// Where a comet's connection tasks hand their connection over when it has been quiet.
pub struct Parking {
    park: mpsc::UnboundedSender<Parked>,
}

impl Parking {
    /// Hands a connection to the watcher; given back if the watcher has ended (the runtime is
    /// shutting down).
    pub fn park(&self, parked: Parked) -> Result<(), Parked> {
        self.park.send(parked).map_err(|e| e.0)
    }
}

/// The comet's one task that watches parked connections.
pub struct Watcher {
    poll: AsyncFd<Poll>,
    registry: Registry,
    parked: mpsc::UnboundedReceiver<Parked>,
    wakes: mpsc::UnboundedReceiver<Token>,
    /// Cloned into each parked connection's waker.
    wake: mpsc::UnboundedSender<Token>,
    slots: Slots<Parked>,
}

/// A comet's parking and its watcher, to be run by [`Watcher::run`]. Called within the runtime.
pub fn parking() -> io::Result<(Parking, Watcher)> {
    let poll = Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // SAFETY: `AsyncFd::register` needs the descriptor `as_raw_fd` gives to stay open and the
    // same for the `AsyncFd`'s life. It is the epoll set `Poll` owns and closes only when
    // dropped, and the `AsyncFd` owns the `Poll` and is never given another.
    #[allow(unsafe_code)]
    let poll = unsafe { AsyncFd::register(poll) }?;
    let (park, parked) = mpsc::unbounded_channel();
    let (wake, wakes) = mpsc::unbounded_channel();
    Ok((
        Parking { park },
        Watcher {
            poll,
            registry,
            parked,
            wakes,
            wake,
            slots: Slots::default(),
        },
    ))
}

/// Wakes the watcher for one parked connection.
struct Revive {
    wake: mpsc::UnboundedSender<Token>,
    token: Token,
}

impl Wake for Revive {
    fn wake(self: Arc<Self>) {
        let _ = self.wake.send(self.token);
    }
}

/// What woke the watcher.
enum Woke {
    Parked(Parked),
    Revive(Token),
    /// Sockets turned readable; their tokens are in the events.
    Ready,
    Sweep,
}

impl Watcher {
    /// Watches until the comet's connection tasks are all gone (the runtime is shutting down).
    pub async fn run(mut self, comet: Arc<CometShared>) {
        let mut events = Events::with_capacity(EVENTS);
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let woke = tokio::select! {
                parked = self.parked.recv() => match parked {
                    Some(parked) => Woke::Parked(parked),
                    None => return,
                },
                Some(token) = self.wakes.recv() => Woke::Revive(token),
                ready = self.poll.readable_mut() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            tracing::error!(error = %e, "parked connections cannot be watched");
                            return;
                        }
                    };
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        // With the buffer full, more may be ready: the set stays readable.
                        Ok(()) if events.iter().count() < EVENTS => guard.clear_ready(),
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!(error = %e, "parked connections cannot be watched");
                            return;
                        }
                    }
                    Woke::Ready
                }
                _ = sweep.tick() => Woke::Sweep,
            };
            match woke {
                Woke::Parked(parked) => self.park(&comet, parked),
                Woke::Revive(token) => self.revive(&comet, token),
                Woke::Ready => {
                    for event in events.iter() {
                        self.revive(&comet, event.token());
                    }
                }
                Woke::Sweep => {
                    let now = Instant::now();
                    let idle = comet.settings.idle_timeout;
                    let overdue = self.slots.matching(|p| p.quiet.last_seen + idle <= now);
                    for token in overdue {
                        self.revive(&comet, token);
                    }
                }
            }
        }
    }

    /// Takes a connection into the table and its socket into the epoll set; revives it at once
    /// if something was queued for it meanwhile or its idle deadline has passed.
    fn park(&mut self, comet: &Arc<CometShared>, parked: Parked) {
        let fd = parked.socket.as_raw_fd();
        let overdue = parked.quiet.last_seen + comet.settings.idle_timeout <= Instant::now();
        let conn = parked.conn.clone();
        let token = self.slots.insert(parked);
        comet.metrics.connections_parked.inc();
        if let Err(e) = self
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            tracing::warn!(session = conn.id, error = %e, "cannot watch a parked connection");
            if let Some(parked) = self.slots.take(token) {
                self.resume(comet, parked);
            }
            return;
        }
        let waker = Waker::from(Arc::new(Revive {
            wake: self.wake.clone(),
            token,
        }));
        if overdue || !conn.park(waker) {
            self.revive(comet, token);
        }
    }

    /// Gives a parked connection a task again; nothing if `token` names no parked connection
    /// (it was revived already).
    fn revive(&mut self, comet: &Arc<CometShared>, token: Token) {
        if let Some(parked) = self.slots.take(token) {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&parked.socket.as_raw_fd()));
            self.resume(comet, parked);
        }
    }

    fn resume(&self, comet: &Arc<CometShared>, parked: Parked) {
        comet.metrics.connections_parked.dec();
        comet.metrics.revivals.inc();
        tokio::spawn(session::resume(comet.clone(), parked));
    }
}

/// The parked connections, each in a slot named by its index and the slot's generation, so that
/// a late wake-up for a connection revived already cannot revive the one parked there since.
struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

struct Slot<T> {
    generation: u32,
    parked: Option<T>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    fn insert(&mut self, parked: T) -> Token {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    parked: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.parked = Some(parked);
        token(index, slot.generation)
    }

    fn take(&mut self, token: Token) -> Option<T> {
        let (index, generation) = (token.0 as u32, (token.0 >> 32) as u32);
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let parked = slot.parked.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        Some(parked)
    }

    /// The tokens of the occupied slots whose occupant `pick` picks.
    fn matching(&self, pick: impl Fn(&T) -> bool) -> Vec<Token> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let parked = slot.parked.as_ref()?;
                pick(parked).then(|| token(index as u32, slot.generation))
            })
            .collect()
    }
}

const _: () = assert!(
    usize::BITS >= 64,
    "a token holds a 32-bit index and generation"
);

/// A slot's token: its index in the low 32 bits, its generation in the high ones.
fn token(index: u32, generation: u32) -> Token {
    Token((u64::from(generation) << 32 | u64::from(index)) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_one_parking_of_a_slot() {
        let mut slots = Slots::default();
        let first = slots.insert("first");
        let second = slots.insert("second");
        assert_eq!(slots.take(first), Some("first"));
        assert_eq!(slots.take(first), None, "taken already");
        let third = slots.insert("third");
        assert_ne!(third, first, "the slot is reused under a new generation");
        assert_eq!(slots.take(first), None, "a late wake-up of the first");
        assert_eq!(
            slots.matching(|_| true),
            vec![third, second],
            "in slot order"
        );
        assert_eq!(slots.matching(|p| *p == "third"), vec![third]);
        assert_eq!(slots.take(third), Some("third"));
        assert_eq!(slots.take(second), Some("second"));
        assert!(slots.matching(|_| true).is_empty());
    }
}
