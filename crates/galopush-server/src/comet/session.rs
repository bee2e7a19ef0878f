//! One task per connection: it owns the socket, waits for REGISTER, then writes what routers
//! queue for the terminal, runs a transaction per down-message (ack or time-out), answers PING
//! and hands IMs to the business side (SPEC §5, §6).
//!
//! What a terminal can make the connection hold is bounded (SPEC §10): frames of
//! `limits.max_unregistered_frame` until it has registered and `limits.max_body` after, at most
//! `limits.im_inflight` IMs waiting for the bus (beyond that the socket is not read), and
//! `limits.conn_queue_bytes` queued for it (beyond that it is closed as not reading, even in the
//! middle of a write it does not read).
//!
//! Time-outs use one timer per connection, set to the earliest of the idle deadline, the
//! oldest open transaction and, while a write waits on the terminal, `comet.write_timeout`;
//! transactions live in a deque indexed by TID, with their deadlines in two queues (push/IM and
//! callback), each in deadline order because each has one fixed time-out.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use galopush_protocol::message::{
    Down, IMRESP_ACCEPTED, IMRESP_FAILED, PONG_NOT_REGISTERED, PONG_OK, REGRESP_AUTH_FAILED,
    REGRESP_OK, Up,
};
use galopush_protocol::{Encoding, TermType};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until, timeout};

use super::conn::{BURST, Conn, Outbound, Pushed, RouterIdx};
use super::idle::{Parked, Quiet};
use super::transport::{Received, TcpTransport, Transport, TransportError};
use super::{CometShared, ConnSlot};
use crate::link::{
    Delivery, DeliveryId, DeliveryKind, ImUp, Outcome, Registration, SessionInfo, Settle,
};
use crate::metrics::Refusal;

/// The longest id and token a REGISTER may carry, as over TCP where they are 32-byte fields
/// (SPEC §3, §10).
const MAX_ID: usize = 32;

/// Serves one connection from accept to close; it must register by `deadline`. `slot` is the
/// connection's place within the comet's connection limits, given back when this returns.
///
/// An `async` block rather than an `async fn`: an `async fn` keeps its arguments and its
/// bindings of them as two copies in the task, and a TLS transport is over a kilobyte.
///
/// The task is an idle terminal's largest allocation, so what only the first moments need
/// stays out of it: the wait for REGISTER (with the router's answer) runs in a future of its
/// own on the heap, freed once the terminal is registered; the terminal's [`SessionInfo`] is
/// the one its [`Conn`] keeps; open transactions are on the heap only while there are some.
pub fn serve<T: Transport>(
    comet: Arc<CometShared>,
    transport: T,
    slot: ConnSlot,
    deadline: Instant,
) -> impl Future<Output = ()> + Send {
    let mut transport = transport;
    async move {
        let slot = slot;
        let conn = comet.open_conn();
        comet.metrics.connections_unregistered.inc();
        let registered = Box::pin(await_register(&comet, &conn, &mut transport, deadline)).await;
        comet.metrics.connections_unregistered.dec();
        let mut txns = Transactions::new(comet.settings.park_after.is_some() && T::PARKS);
        if let Some(registered) = registered
            && let Some(info) = conn.session()
        {
            comet.metrics.connections(info.term).inc();
            transport.set_max_message(comet.settings.max_body);
            let quiet = Quiet {
                encoding: registered.encoding,
                next_tid: fastrand::u32(..),
                last_seen: Instant::now(),
            };
            let mut session = Session::new(&comet, &conn, info, quiet, &mut txns);
            session.deliver_stored(&mut transport, registered);
            if let Ended::Park(quiet) = session.run(&mut transport).await {
                park(&comet, conn.clone(), info, transport, slot, quiet);
                return;
            }
            end(&comet, &conn, &mut txns, info);
        } else {
            comet.close_conn(conn.id);
            settle_leftovers(&comet, &conn, &mut txns);
        }
        if transport.has_pending() {
            let _ = timeout(comet.settings.write_timeout, transport.flush()).await;
        }
        let _ = timeout(comet.settings.write_timeout, transport.close()).await;
    }
}

/// Serves a parked connection again ([`super::idle`]), in a task of its own, until it ends or
/// is parked again.
pub async fn resume(comet: Arc<CometShared>, parked: Parked) {
    let Parked {
        socket,
        conn,
        slot,
        quiet,
    } = parked;
    let mut txns = Transactions::new(true);
    let Some(info) = conn.session() else {
        // Only registered connections are parked.
        comet.close_conn(conn.id);
        settle_leftovers(&comet, &conn, &mut txns);
        return;
    };
    let mut transport = match TcpStream::from_std(socket) {
        Ok(stream) => TcpTransport::new(stream, comet.settings.max_body),
        Err(e) => {
            tracing::warn!(session = conn.id, error = %e, "cannot take a parked connection back; closing");
            end(&comet, &conn, &mut txns, info);
            return;
        }
    };
    let mut session = Session::new(&comet, &conn, info, quiet, &mut txns);
    if let Ended::Park(quiet) = session.run(&mut transport).await {
        park(&comet, conn.clone(), info, transport, slot, quiet);
        return;
    }
    end(&comet, &conn, &mut txns, info);
    if transport.has_pending() {
        let _ = timeout(comet.settings.write_timeout, transport.flush()).await;
    }
    let _ = timeout(comet.settings.write_timeout, transport.close()).await;
}

/// Hands a registered connection that has been quiet to the comet's watcher
/// ([`super::idle`]); its task ends.
fn park<T: Transport>(
    comet: &Arc<CometShared>,
    conn: Arc<Conn>,
    info: &SessionInfo,
    transport: T,
    slot: ConnSlot,
    quiet: Quiet,
) {
    let socket = match transport.into_socket() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(session = conn.id, error = %e, "cannot park a connection; closing");
            end(comet, &conn, &mut Transactions::default(), info);
            return;
        }
    };
    let parked = Parked {
        socket,
        conn: conn.clone(),
        slot,
        quiet,
    };
    if comet.park(parked).is_err() {
        tracing::debug!(
            session = conn.id,
            "comet shutting down; closing a quiet connection"
        );
        end(comet, &conn, &mut Transactions::default(), info);
    }
}

/// A registered connection has ended: it leaves the comet's table, what it still had open
/// fails, and the routers hear that it closed.
fn end(comet: &CometShared, conn: &Conn, txns: &mut Transactions, info: &SessionInfo) {
    comet.metrics.connections(info.term).dec();
    comet.close_conn(conn.id);
    settle_leftovers(comet, conn, txns);
    comet.closed(info);
}

/// Everything still open when a connection ends fails: queued deliveries and transactions.
fn settle_leftovers(comet: &CometShared, conn: &Conn, txns: &mut Transactions) {
    for item in conn.close() {
        if let Outbound::Deliver { router, delivery } = item {
            fail(comet, router, delivery.id);
        }
    }
    for txn in txns.drain() {
        fail(comet, txn.router, txn.delivery);
    }
}

fn fail(comet: &CometShared, router: RouterIdx, id: DeliveryId) {
    comet.settle(
        router,
        Settle {
            id,
            outcome: Outcome::Failed,
        },
    );
}

fn log_error(comet: &CometShared, conn: &Conn, e: &TransportError) {
    if e.is_too_long() {
        let bound = if conn.session().is_some() {
            Refusal::MaxBody
        } else {
            Refusal::MaxUnregisteredFrame
        };
        comet.metrics.refused(bound);
        comet.metrics.protocol_errors.inc();
        tracing::debug!(session = conn.id, error = %e, "closing connection: frame over the limit");
    } else if matches!(e, TransportError::Slow) {
        comet.metrics.slow_terminals.inc();
        tracing::debug!(session = conn.id, "closing connection: {e}");
    } else if matches!(e, TransportError::Stalled) {
        comet.metrics.slow_terminals.inc();
        tracing::info!(session = conn.id, "closing connection: {e}");
    } else if e.is_protocol() {
        comet.metrics.protocol_errors.inc();
        tracing::info!(session = conn.id, error = %e, "closing connection: protocol error");
    } else {
        tracing::debug!(session = conn.id, error = %e, "connection failed");
    }
}

/// A terminal that registered (who it is, its [`Conn`] keeps): the encoding it registered
/// with, and its stored messages with the router that sent them.
struct Registered {
    encoding: Encoding,
    router: RouterIdx,
    stored: Vec<Delivery>,
}

/// Waits for a REGISTER (SPEC §5) until `deadline` and has it authenticated; `None` if the
/// connection is to be closed.
async fn await_register<T: Transport>(
    comet: &CometShared,
    conn: &Arc<Conn>,
    transport: &mut T,
    deadline: Instant,
) -> Option<Registered> {
    loop {
        let frame = tokio::select! {
            r = transport.recv() => r,
            _ = sleep_until(deadline) => {
                tracing::debug!(session = conn.id, "no REGISTER in time; closing");
                return None;
            }
        };
        let frame = match frame {
            Ok(Received::Frame(f)) => f,
            Ok(Received::Replied) => {
                if let Err(e) = flush(comet, transport).await {
                    log_error(comet, conn, &e);
                    return None;
                }
                continue;
            }
            Ok(Received::Closed) => return None,
            Err(e) => {
                log_error(comet, conn, &e);
                return None;
            }
        };
        let (encoding, tid) = (frame.encoding, frame.tid);
        match frame.message {
            Up::Register(r) => {
                let refuse = |transport: &mut T| {
                    transport.write(
                        encoding,
                        tid,
                        Down::RegResp {
                            code: REGRESP_AUTH_FAILED,
                        },
                    )
                };
                let fits = !r.id.is_empty() && r.id.len() <= MAX_ID && r.token.len() <= MAX_ID;
                let Some(term) = TermType::from_bit(r.term_type).filter(|_| fits) else {
                    tracing::debug!(
                        session = conn.id,
                        term_type = r.term_type,
                        "bad REGISTER refused"
                    );
                    comet.metrics.registrations_refused.inc();
                    refuse(transport);
                    return None;
                };
                let info = SessionInfo {
                    session: conn.id,
                    uid: r.id.into(),
                    term,
                    token: r.token.into(),
                };
                match comet.register(&info).await {
                    Ok((router, Registration::Accepted { stored })) => {
                        transport.write(encoding, tid, Down::RegResp { code: REGRESP_OK });
                        conn.set_registered(info);
                        return Some(Registered {
                            encoding,
                            router,
                            stored,
                        });
                    }
                    Ok((_, Registration::Refused)) => {
                        refuse(transport);
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(session = conn.id, error = %e, "cannot register now; closing");
                        return None;
                    }
                }
            }
            Up::Ping => {
                transport.write(
                    encoding,
                    tid,
                    Down::Pong {
                        code: PONG_NOT_REGISTERED,
                    },
                );
                if let Err(e) = flush(comet, transport).await {
                    log_error(comet, conn, &e);
                    return None;
                }
            }
            Up::Im { .. } => {
                comet.metrics.protocol_errors.inc();
                tracing::info!(session = conn.id, "IM before REGISTER; closing");
                return None;
            }
            Up::PushResp { .. } | Up::CbResp { .. } | Up::ImResp { .. } | Up::KickResp { .. } => {}
        }
    }
}

async fn flush<T: Transport>(comet: &CometShared, transport: &mut T) -> Result<(), TransportError> {
    match timeout(comet.settings.write_timeout, transport.flush()).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Stalled),
    }
}

/// An open transaction: the delivery a TID carries.
struct Txn {
    router: RouterIdx,
    delivery: DeliveryId,
}

/// A connection's open transactions, on the heap only while there are some: an idle
/// connection's task keeps a pointer, not the three deques.
///
/// TIDs are given in sequence, so the transaction a TID names is found by its distance from
/// the oldest one still open: no hashing, and a burst fills one deque. An acked transaction
/// leaves a hole until the ones before it end.
///
/// With `keep_room` (the connection is parked when quiet, which frees it) the deques stay
/// allocated between deliveries, up to [`BURST`] each: a terminal that is sent one message at a
/// time then allocates nothing per message (callgrind: three allocations and their frees, ~400
/// instructions of a unicast delivery).
#[derive(Default)]
struct Transactions {
    open: Option<Box<Open>>,
    keep_room: bool,
}

#[derive(Default)]
struct Open {
    /// Open transactions from TID `first` on.
    open: VecDeque<Option<Txn>>,
    first: u32,
    /// Deadlines of pushes and IMs (`delivery.ack_timeout`), oldest first.
    short: VecDeque<(Instant, u32)>,
    /// Deadlines of callbacks (`delivery.callback_ack_timeout`), oldest first.
    long: VecDeque<(Instant, u32)>,
}

impl Open {
    /// Ends the transaction of `tid`, if it is open.
    fn end(&mut self, tid: u32) -> Option<Txn> {
        let index = tid.wrapping_sub(self.first) as usize;
        let txn = self.open.get_mut(index)?.take();
        while let Some(None) = self.open.front() {
            self.open.pop_front();
            self.first = self.first.wrapping_add(1);
        }
        txn
    }

    fn deadlines(&mut self, class: Class) -> &mut VecDeque<(Instant, u32)> {
        match class {
            Class::Short => &mut self.short,
            Class::Long => &mut self.long,
        }
    }
}

impl Transactions {
    /// No transaction open; `keep_room` as in the type's doc.
    fn new(keep_room: bool) -> Transactions {
        Transactions {
            open: None,
            keep_room,
        }
    }

    /// Whether a transaction is open.
    fn any(&self) -> bool {
        self.open.as_ref().is_some_and(|open| !open.open.is_empty())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let open = self.open.as_ref()?;
        let a = open.short.front().map(|(d, _)| *d);
        let b = open.long.front().map(|(d, _)| *d);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Opens the transaction of `tid`, a TID given after every open one, due to end by `due`.
    fn open(&mut self, tid: u32, txn: Txn, class: Class, due: Instant) {
        let open = self.open.get_or_insert_default();
        if open.open.is_empty() {
            open.first = tid;
        }
        // A burst (a second transaction while one is open) gets room for as many as the
        // connection's queue takes at once, as the queue does.
        if open.open.len() == 1 {
            open.open.reserve(BURST - 1);
            open.deadlines(class).reserve(BURST - 1);
        }
        let index = tid.wrapping_sub(open.first) as usize;
        while open.open.len() < index {
            open.open.push_back(None);
        }
        open.open.push_back(Some(txn));
        open.deadlines(class).push_back((due, tid));
    }

    /// Removes the transactions whose deadline has passed.
    fn expire(&mut self, now: Instant) -> Vec<Txn> {
        let mut out = Vec::new();
        let Some(open) = self.open.as_mut() else {
            return out;
        };
        for class in [Class::Short, Class::Long] {
            while let Some((deadline, tid)) = open.deadlines(class).front().copied() {
                if deadline > now {
                    break;
                }
                open.deadlines(class).pop_front();
                out.extend(open.end(tid));
            }
        }
        self.shrink();
        out
    }

    /// Ends the transaction a terminal acked.
    fn ack(&mut self, tid: u32) -> Option<Txn> {
        let txn = self.open.as_mut()?.end(tid);
        self.shrink();
        txn
    }

    /// Once a burst is over (with no transaction open, the deadlines left are those of acked
    /// ones): gives the memory back, or with `keep_room` keeps deques of up to [`BURST`].
    fn shrink(&mut self) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if !open.open.is_empty() {
            return;
        }
        let small = [
            open.open.capacity(),
            open.short.capacity(),
            open.long.capacity(),
        ]
        .iter()
        .all(|&c| c <= BURST);
        if self.keep_room && small {
            open.short.clear();
            open.long.clear();
        } else {
            self.open = None;
        }
    }

    /// Ends every open transaction.
    fn drain(&mut self) -> impl Iterator<Item = Txn> + use<> {
        self.open
            .take()
            .into_iter()
            .flat_map(|open| open.open.into_iter().flatten())
    }
}

/// Which deadlines a transaction keeps.
#[derive(Clone, Copy)]
enum Class {
    /// Pushes and IMs.
    Short,
    /// Callbacks.
    Long,
}

/// A registered connection.
struct Session<'a> {
    comet: &'a Arc<CometShared>,
    conn: &'a Arc<Conn>,
    info: &'a SessionInfo,
    /// The encoding the terminal registered with, used for down-messages.
    encoding: Encoding,
    next_tid: u32,
    /// When the terminal last sent something.
    last_seen: Instant,
    /// When this task took the connection. A revived connection is not parked again before
    /// `comet.park_after` from here: what revived it (its socket turning readable, a delivery)
    /// is served first, even when the runtime reports the socket's readiness a moment later.
    awake_since: Instant,
    txns: &'a mut Transactions,
    /// Room for the connection's queue, handed to it at each take (see [`Conn::take_into`]);
    /// kept while the transactions keep theirs.
    queue_room: VecDeque<Outbound>,
    /// IMs sent up and not yet answered (`limits.im_inflight`).
    ims_in_flight: usize,
}

/// How a registered connection's loop ended.
enum Ended {
    /// The connection is to be closed.
    Closed,
    /// The connection has been quiet for `comet.park_after` with nothing open: park it.
    Park(Quiet),
}

/// What to do after the connection's queue was taken.
enum AfterQueue {
    Go,
    /// A KICK was written: flush it and close.
    Kicked,
    /// The terminal overflowed its queue: close.
    Slow,
}

impl<'a> Session<'a> {
    fn new(
        comet: &'a Arc<CometShared>,
        conn: &'a Arc<Conn>,
        info: &'a SessionInfo,
        quiet: Quiet,
        txns: &'a mut Transactions,
    ) -> Session<'a> {
        Session {
            comet,
            conn,
            info,
            encoding: quiet.encoding,
            next_tid: quiet.next_tid,
            last_seen: quiet.last_seen,
            awake_since: Instant::now(),
            txns,
            queue_room: VecDeque::new(),
            ims_in_flight: 0,
        }
    }

    /// When the connection may be parked, if it can be: with parking on, nothing open and
    /// nothing buffered, `comet.park_after` after the terminal last spoke or the task took the
    /// connection.
    fn park_at<T: Transport>(&self, transport: &T) -> Option<Instant> {
        let after = self.comet.settings.park_after?;
        let open = self.txns.any() || self.ims_in_flight > 0;
        (!open && transport.can_park()).then_some(self.last_seen.max(self.awake_since) + after)
    }

    /// Writes the terminal's stored messages, each as a transaction with the router that made
    /// them (the one that authenticated the terminal); the loop of [`Session::run`] sends them.
    fn deliver_stored<T: Transport>(&mut self, transport: &mut T, registered: Registered) {
        let now = Instant::now();
        for delivery in registered.stored {
            self.deliver(transport, registered.router, delivery, now);
        }
    }

    async fn run<T: Transport>(&mut self, transport: &mut T) -> Ended {
        // One timer for the connection's life, moved only when something is due earlier than
        // it is set for; when it fires early (the idle deadline moved on), it is set again.
        let timer = sleep_until(self.last_seen + self.comet.settings.idle_timeout);
        tokio::pin!(timer);
        let conn: &Conn = self.conn;
        // Something was queued: take it at the top of the loop.
        let mut woken = false;
        loop {
            if woken {
                woken = false;
                match self.take_queue(transport) {
                    AfterQueue::Go => {}
                    AfterQueue::Kicked => {
                        let _ = self.write(transport, &mut timer, &mut true).await;
                        return Ended::Closed;
                    }
                    AfterQueue::Slow => {
                        self.comet.metrics.slow_terminals.inc();
                        tracing::info!(session = self.conn.id, uid = %self.info.uid, "terminal does not read its messages; closing");
                        return Ended::Closed;
                    }
                }
            }
            if transport.has_pending() {
                if let Err(e) = self.write(transport, &mut timer, &mut woken).await {
                    log_error(self.comet, self.conn, &e);
                    return Ended::Closed;
                }
                if woken {
                    continue;
                }
            }
            let idle_deadline = self.last_seen + self.comet.settings.idle_timeout;
            let mut deadline = self
                .txns
                .next_deadline()
                .map_or(idle_deadline, |d| d.min(idle_deadline));
            if let Some(park_at) = self.park_at(transport) {
                deadline = deadline.min(park_at);
            }
            if deadline < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(deadline);
            }
            // With `limits.im_inflight` IMs unanswered the socket is not read: the terminal's
            // own flood waits in its socket buffers, not in ours.
            let reading = self.ims_in_flight < self.comet.settings.im_inflight;
            tokio::select! {
                biased;
                () = conn.queued() => woken = true,
                r = transport.recv(), if reading => {
                    let frame = match r {
                        Ok(Received::Frame(f)) => Some(f),
                        Ok(Received::Replied) => None,
                        Ok(Received::Closed) => return Ended::Closed,
                        Err(e) => {
                            log_error(self.comet, self.conn, &e);
                            return Ended::Closed;
                        }
                    };
                    self.last_seen = Instant::now();
                    if let Some(frame) = frame {
                        self.on_frame(transport, frame.encoding, frame.tid, frame.message);
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    self.expire(now);
                    if now >= self.last_seen + self.comet.settings.idle_timeout {
                        if !reading {
                            // Not read because it waits for its IMs' answers: not idle.
                            self.last_seen = now;
                            continue;
                        }
                        tracing::debug!(session = self.conn.id, "idle timeout; closing");
                        return Ended::Closed;
                    }
                    if self.park_at(transport).is_some_and(|at| now >= at) {
                        return Ended::Park(Quiet {
                            encoding: self.encoding,
                            next_tid: self.next_tid,
                            last_seen: self.last_seen,
                        });
                    }
                }
            }
        }
    }

    /// Writes what the transport holds for the terminal. A write the socket takes at once does
    /// not touch the timer; one that waits is bounded by `comet.write_timeout` through the
    /// connection's one timer (transactions falling due meanwhile fail as usual), and ends at
    /// once when the terminal's queue overflows meanwhile (`woken` is set when something was
    /// queued). No second timer and no `timeout` future in the connection's task.
    async fn write<T: Transport>(
        &mut self,
        transport: &mut T,
        timer: &mut Pin<&mut Sleep>,
        woken: &mut bool,
    ) -> Result<(), TransportError> {
        if let Poll::Ready(r) =
            std::future::poll_fn(|cx| Poll::Ready(transport.poll_flush(cx))).await
        {
            return r;
        }
        let write_deadline = Instant::now() + self.comet.settings.write_timeout;
        if write_deadline < timer.deadline() || timer.is_elapsed() {
            timer.as_mut().reset(write_deadline);
        }
        let conn: &Conn = self.conn;
        loop {
            tokio::select! {
                r = transport.flush() => return r,
                () = conn.queued(), if !*woken => {
                    *woken = true;
                    if conn.is_slow() {
                        return Err(TransportError::Slow);
                    }
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    if now >= write_deadline {
                        return Err(TransportError::Stalled);
                    }
                    self.expire(now);
                    let next = self
                        .txns
                        .next_deadline()
                        .map_or(write_deadline, |d| d.min(write_deadline));
                    timer.as_mut().reset(next);
                }
            }
        }
    }

    /// Fails the transactions whose ack is overdue.
    fn expire(&mut self, now: Instant) {
        for txn in self.txns.expire(now) {
            fail(self.comet, txn.router, txn.delivery);
        }
    }

    /// Writes what the connection's queue holds (deliveries, a kick, IM answers).
    fn take_queue<T: Transport>(&mut self, transport: &mut T) -> AfterQueue {
        let mut items = std::mem::take(&mut self.queue_room);
        let slow = self.conn.take_into(&mut items);
        // One clock reading for what arrived together, and one allocation for its frames.
        let now = Instant::now();
        transport.reserve(items.iter().map(Outbound::frame_len).sum());
        let mut taken = items.drain(..);
        while let Some(item) = taken.next() {
            match item {
                Outbound::Deliver { router, delivery } => {
                    self.deliver(transport, router, delivery, now)
                }
                Outbound::Kick(reason) => {
                    let tid = self.tid();
                    transport.write(
                        self.encoding,
                        tid,
                        Down::Kick {
                            reason: reason as u8,
                        },
                    );
                    tracing::debug!(session = self.conn.id, uid = %self.info.uid, ?reason, "kicked");
                    // What came after the kick is not written: it settles as failed, so it goes
                    // to the offline rule (or to the terminal's next session).
                    for rest in taken {
                        if let Outbound::Deliver { router, delivery } = rest {
                            fail(self.comet, router, delivery.id);
                        }
                    }
                    return AfterQueue::Kicked;
                }
                Outbound::ImResult {
                    tid,
                    encoding,
                    code,
                } => {
                    self.ims_in_flight = self.ims_in_flight.saturating_sub(1);
                    transport.write(encoding, tid, Down::ImResp { code });
                }
            }
        }
        drop(taken);
        // The room goes back to the queue at the next take, as the transactions' does.
        if self.txns.keep_room && items.capacity() <= BURST {
            self.queue_room = items;
        }
        if slow {
            AfterQueue::Slow
        } else {
            AfterQueue::Go
        }
    }

    fn tid(&mut self) -> u32 {
        self.next_tid = self.next_tid.wrapping_add(1);
        self.next_tid
    }

    /// Writes a delivery and opens its transaction, due an ack from `now` on.
    fn deliver<T: Transport>(
        &mut self,
        transport: &mut T,
        router: RouterIdx,
        d: Delivery,
        now: Instant,
    ) {
        let tid = self.tid();
        let (message, ack_timeout, class) = match d.kind {
            DeliveryKind::Push { offline } => (
                Down::Push {
                    offline,
                    flag: d.flag,
                    msg: d.body,
                },
                self.comet.settings.ack_timeout,
                Class::Short,
            ),
            DeliveryKind::Callback => (
                Down::Callback { msg: d.body },
                self.comet.settings.callback_ack_timeout,
                Class::Long,
            ),
            DeliveryKind::Im => (
                Down::Im {
                    flag: d.flag,
                    msg: d.body,
                },
                self.comet.settings.ack_timeout,
                Class::Short,
            ),
        };
        self.txns.open(
            tid,
            Txn {
                router,
                delivery: d.id,
            },
            class,
            now + ack_timeout,
        );
        transport.write(self.encoding, tid, message);
    }

    fn on_frame<T: Transport>(&mut self, transport: &mut T, encoding: Encoding, tid: u32, up: Up) {
        match up {
            Up::Ping => transport.write(encoding, tid, Down::Pong { code: PONG_OK }),
            Up::PushResp { .. } | Up::CbResp { .. } | Up::ImResp { .. } => {
                if let Some(txn) = self.txns.ack(tid) {
                    self.comet.settle(
                        txn.router,
                        Settle {
                            id: txn.delivery,
                            outcome: Outcome::Acked,
                        },
                    );
                }
            }
            Up::Im { msg } => {
                let im = ImUp {
                    uid: self.info.uid.clone(),
                    term: self.info.term,
                    body: msg,
                };
                self.ims_in_flight += 1;
                if self.ims_in_flight == self.comet.settings.im_inflight {
                    self.comet.metrics.refused(Refusal::ImInflight);
                }
                let conn = self.conn.clone();
                let limit = self.comet.settings.conn_queue_bytes;
                let comet = self.comet.clone();
                // The answer comes back through the queue, so reading goes on meanwhile.
                let task = async move {
                    let code = if comet.im_up(im).await {
                        IMRESP_ACCEPTED
                    } else {
                        IMRESP_FAILED
                    };
                    let answer = Outbound::ImResult {
                        tid,
                        encoding,
                        code,
                    };
                    if let Pushed::Overflowed(_) = conn.push(answer, limit) {
                        comet.metrics.refused(Refusal::ConnQueueBytes);
                    }
                };
                tokio::spawn(task);
            }
            Up::Register(_) => transport.write(encoding, tid, Down::RegResp { code: REGRESP_OK }),
            Up::KickResp { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn txn(delivery: DeliveryId) -> Txn {
        Txn {
            router: 0,
            delivery,
        }
    }

    fn acked(txns: &mut Transactions, tid: u32) -> Option<DeliveryId> {
        txns.ack(tid).map(|t| t.delivery)
    }

    #[test]
    fn acks_in_any_order_end_each_transaction_once() {
        let mut txns = Transactions::default();
        let start = u32::MAX - 1; // the TIDs wrap through 0
        let due = Instant::now() + Duration::from_secs(1);
        for i in 0..4u32 {
            txns.open(start.wrapping_add(i), txn(u64::from(i)), Class::Short, due);
        }
        assert_eq!(acked(&mut txns, start.wrapping_add(2)), Some(2));
        assert_eq!(acked(&mut txns, start.wrapping_add(2)), None, "acked twice");
        assert_eq!(acked(&mut txns, start), Some(0));
        assert_eq!(acked(&mut txns, start.wrapping_add(9)), None, "never given");
        assert_eq!(
            acked(&mut txns, start.wrapping_sub(1)),
            None,
            "before the first"
        );
        assert_eq!(acked(&mut txns, start.wrapping_add(3)), Some(3));
        assert_eq!(acked(&mut txns, start.wrapping_add(1)), Some(1));
        assert!(txns.open.is_none(), "memory given back when all are done");
    }

    #[test]
    fn with_keep_room_a_small_burst_keeps_its_deques_and_a_large_one_does_not() {
        let due = Instant::now() + Duration::from_secs(1);
        let mut txns = Transactions::new(true);
        txns.open(1, txn(1), Class::Short, due);
        txns.open(2, txn(2), Class::Long, due);
        assert_eq!(acked(&mut txns, 1), Some(1));
        assert!(txns.any());
        assert_eq!(acked(&mut txns, 2), Some(2));
        assert!(!txns.any());
        assert!(txns.open.is_some(), "room kept");
        assert_eq!(
            txns.next_deadline(),
            None,
            "no deadline of an acked one is left"
        );
        txns.open(3, txn(3), Class::Short, due);
        assert_eq!(txns.next_deadline(), Some(due));
        assert_eq!(acked(&mut txns, 3), Some(3));
        let tids = 10..10 + 2 * BURST as u32;
        for tid in tids.clone() {
            txns.open(tid, txn(u64::from(tid)), Class::Short, due);
        }
        for tid in tids {
            assert_eq!(acked(&mut txns, tid), Some(u64::from(tid)));
        }
        assert!(
            txns.open.is_none(),
            "a burst past BURST gives its room back"
        );
    }

    #[test]
    fn a_skipped_tid_leaves_a_hole_that_is_never_acked() {
        let mut txns = Transactions::default();
        let due = Instant::now() + Duration::from_secs(1);
        txns.open(10, txn(10), Class::Short, due);
        txns.open(12, txn(12), Class::Long, due);
        assert_eq!(acked(&mut txns, 11), None);
        assert_eq!(acked(&mut txns, 10), Some(10));
        assert_eq!(acked(&mut txns, 12), Some(12));
        txns.open(20, txn(20), Class::Short, due);
        assert_eq!(acked(&mut txns, 20), Some(20));
    }

    #[test]
    fn expired_transactions_end_and_acked_ones_do_not_expire() {
        let mut txns = Transactions::default();
        let now = Instant::now();
        let second = Duration::from_secs(1);
        for (tid, class, due) in [
            (1, Class::Short, now + second),
            (2, Class::Long, now + 5 * second),
            (3, Class::Short, now + 2 * second),
            (4, Class::Short, now + 3 * second),
        ] {
            txns.open(tid, txn(u64::from(tid)), class, due);
        }
        assert_eq!(acked(&mut txns, 3), Some(3));
        assert_eq!(txns.next_deadline(), Some(now + second));
        let ended: Vec<_> = txns
            .expire(now + 3 * second)
            .iter()
            .map(|t| t.delivery)
            .collect();
        assert_eq!(ended, [1, 4]);
        assert_eq!(txns.next_deadline(), Some(now + 5 * second));
        let ended: Vec<_> = txns.drain().map(|t| t.delivery).collect();
        assert_eq!(ended, [2]);
    }
}
