//! The embedded store: redb in the data directory (`store.path`), crash-safe (every commit is
//! fsynced), with group commit.
//!
//! One writer thread owns all writes: callers queue operations and await their result; the
//! thread takes everything queued, applies it in one transaction and commits once, so a burst
//! of `/pub` calls or offline writes costs one fsync. Reads of stored messages go through the
//! same queue, so they see every write queued before them.
//!
//! An inbox append may leave messages out ([`Store::inbox_append_unless_retired`]): the writer
//! holds such an append for up to [`APPEND_WINDOW`] from its call before taking its messages,
//! and writes only those not yet retired; a batch that then has nothing to write commits
//! nothing. On loopback most unicast messages are acked within that window, so they never reach
//! the disk and need no delete. The whole batch waits with its oldest held append, for what is
//! left of that append's window: under load most of it has passed while the batch before was
//! committed, and writes are still grouped into one commit (letting the rest go ahead made 9%
//! more commits). A batch with a read of stored messages does not wait: a registering terminal
//! is not kept waiting for the window.
//!
//! Two indexes live in memory: the login records (read on every delivery plan; updated when a
//! write is queued, so a later read sees it at once) and which terminals may have stored
//! messages (so a REGISTER without any never waits for the writer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use galopush_protocol::{TermMask, TermType};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    LoggedIn, LoginRecord, Offline, OfflineLimits, OfflineWrite, QueuedMessage, Store, StoreError,
    StoreFuture, StoredKey, Unwritten, UserLogins, resolved,
};
use crate::sharded::FastMap;

const LOGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("logins");
const OFFLINE: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("offline");
/// The inbox and outbox as earlier versions kept them, a row per message; moved to the batch
/// tables when a store is opened.
const OLD_INBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("inbox");
const OLD_OUTBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("outbox");
/// The inbox and outbox: a row per append (an `/mpub` is one row), keyed by the first message's
/// sequence number, holding the messages with their own numbers. One B-tree insert per request
/// and one small write per row per batch of removals, instead of an insert and a delete per
/// message: callgrind had those at 16k instructions of a unicast delivery's 36k.
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox-batches");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox-batches");
/// Which messages of a row are removed while others are not, keyed as the row: a bitmap by
/// position in the row (bit `i % 8` of byte `i / 8`). The row itself is deleted, with its
/// bitmap, once every message is removed. Written instead of rewriting the row's remaining
/// messages, which copied the whole batch (an `/mpub` of 100 retired in pieces: ~60k
/// instructions per piece, ~600 of a unicast delivery under callgrind). A build from before this
/// table ignores it: it would deliver the removed messages of a part-removed row once more.
const INBOX_REMOVED: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox-removed");
const OUTBOX_REMOVED: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox-removed");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
/// Most operations folded into one transaction.
const MAX_BATCH: usize = 4096;
/// How long the writer holds an inbox append whose messages may be retired before it takes
/// them (from when the append was queued): what is acked meanwhile is never written. It delays
/// the `200` of a request that is not all acked by as much (one that is answers at its last
/// ack), and the writes queued with it; deliveries do not wait for it. Unicast paced at
/// 25,000/s on loopback (BENCHMARKS.md, round five): 2 ms left 28–46% of the messages
/// unwritten, 5 ms 80–99%, 10 ms 98–99%; 5 ms keeps four publishers of 100-message `/mpub`s
/// above 80,000/s even when every request has a message acked late.
const APPEND_WINDOW: Duration = Duration::from_millis(5);

/// A terminal's entry in the stored-messages index.
#[derive(Debug, Default, Clone, Copy)]
struct Stored {
    /// Writes queued and not yet committed (or failed).
    queued: u32,
    /// The committed box holds something.
    present: bool,
}

type Terminal = (Box<str>, TermType);

/// A [`Store`] on disk.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<Job>,
}

struct Shared {
    db: Database,
    limits: OfflineLimits,
    logins: RwLock<FastMap<Box<str>, UserLogins>>,
    stored: Mutex<FastMap<Terminal, Stored>>,
}

enum Op {
    SetLogin(String, TermType, Option<LoginRecord>),
    StoreOffline(Vec<OfflineWrite>),
    RemoveOffline(Vec<StoredKey>),
    QueueAppend(Queue, Vec<(String, Bytes)>, Option<Retirable>),
    QueueRemove(Queue, Vec<u64>),
}

/// An inbox append's messages that may be retired before the writer takes them.
struct Retirable {
    unwritten: Arc<Unwritten>,
    queued: Instant,
}

impl Op {
    /// Until when the writer holds this inbox append: its window's end, while some of its
    /// messages may still be retired unwritten.
    fn held_until(&self) -> Option<Instant> {
        match self {
            Op::QueueAppend(_, messages, Some(r))
                if (0..messages.len()).any(|i| r.unwritten.is_waiting(i)) =>
            {
                Some(r.queued + APPEND_WINDOW)
            }
            _ => None,
        }
    }

    /// Takes the messages of an append to write them: for each, whether it is written (those
    /// retired first are not). `None` for every other operation.
    fn take(&self) -> Option<Vec<bool>> {
        match self {
            Op::QueueAppend(_, messages, Some(r)) => {
                Some((0..messages.len()).map(|i| r.unwritten.take(i)).collect())
            }
            Op::QueueAppend(_, messages, None) => Some(vec![true; messages.len()]),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Queue {
    Inbox,
    Outbox,
}

impl Queue {
    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Queue::Inbox => INBOX,
            Queue::Outbox => OUTBOX,
        }
    }

    fn removed_table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Queue::Inbox => INBOX_REMOVED,
            Queue::Outbox => OUTBOX_REMOVED,
        }
    }

    fn old_table(self) -> TableDefinition<'static, u64, (&'static str, &'static [u8])> {
        match self {
            Queue::Inbox => OLD_INBOX,
            Queue::Outbox => OLD_OUTBOX,
        }
    }
}

enum Job {
    Write {
        op: Op,
        reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
    },
    ReadOffline {
        terminal: Terminal,
        reply: oneshot::Sender<Result<Offline, StoreError>>,
    },
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

fn stopped() -> StoreError {
    StoreError::Unavailable("embedded store writer has stopped".into())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, with a page cache of at most `cache_bytes`; each
    /// write transaction's duration goes into `commits` (`galopush_store_commit_seconds`).
    pub fn open(
        dir: &Path,
        limits: OfflineLimits,
        cache_bytes: usize,
        commits: Histogram,
    ) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let file = dir.join("galopush.redb");
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&file)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open {} (is another galopush using this data directory?): {e}",
                    file.display()
                ))
            })?;
        let txn = db.begin_write().map_err(unavailable)?;
        for queue in [Queue::Inbox, Queue::Outbox] {
            txn.open_table(queue.table()).map_err(unavailable)?;
            txn.open_table(queue.removed_table()).map_err(unavailable)?;
            migrate_queue(&txn, queue)?;
        }
        txn.open_table(LOGINS).map_err(unavailable)?;
        txn.open_table(OFFLINE).map_err(unavailable)?;
        let next_id = txn
            .open_table(META)
            .and_then(|meta| Ok(meta.get(NEXT_ID)?.map_or(0, |v| v.value())))
            .map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;

        let mut logins = FastMap::default();
        let mut stored = FastMap::default();
        {
            let read = db.begin_read().map_err(unavailable)?;
            let table = read.open_table(LOGINS).map_err(unavailable)?;
            for entry in table.iter().map_err(unavailable)? {
                let (uid, value) = entry.map_err(unavailable)?;
                logins.insert(uid.value().into(), decode_logins(value.value())?);
            }
            let table = read.open_table(OFFLINE).map_err(unavailable)?;
            for entry in table.iter().map_err(unavailable)? {
                let (key, _) = entry.map_err(unavailable)?;
                let (uid, bit) = key.value();
                if let Some(term) = TermType::from_bit(bit) {
                    let present = Stored {
                        queued: 0,
                        present: true,
                    };
                    stored.insert((uid.into(), term), present);
                }
            }
        }
        let shared = Arc::new(Shared {
            db,
            limits,
            logins: RwLock::new(logins),
            stored: Mutex::new(stored),
        });
        // Bounded by the callers, not here: see `Store`.
        let (writer, jobs) = mpsc::unbounded_channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("galopush-store".into())
            .spawn(move || write_loop(&thread_shared, jobs, &commits, next_id))
            .map_err(|e| StoreError::Unavailable(format!("cannot start store writer: {e}")))?;
        Ok(EmbeddedStore { shared, writer })
    }

    /// Queues an operation for the writer thread (in call order); resolves once committed.
    fn write(&self, op: Op) -> StoreFuture<Vec<u64>> {
        let (reply, done) = oneshot::channel();
        if self.writer.send(Job::Write { op, reply }).is_err() {
            return resolved(Err(stopped()));
        }
        Box::pin(async move { done.await.map_err(|_| stopped())? })
    }

    fn write_unit(&self, op: Op) -> StoreFuture {
        let done = self.write(op);
        Box::pin(async move { done.await.map(drop) })
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store read failed: {e}")))?
    }
}

/// `next_id`: the last sequence number handed out. Numbers are handed out here and the last one
/// is saved with every commit: a number given to a message that was not written may be given
/// again after a restart, which nothing notices.
fn write_loop(
    shared: &Shared,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    commits: &Histogram,
    mut next_id: u64,
) {
    let mut batch = Vec::new();
    while jobs.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let read = batch
            .iter()
            .any(|job| matches!(job, Job::ReadOffline { .. }));
        let held_until = batch
            .iter()
            .filter_map(|job| match job {
                Job::Write { op, .. } => op.held_until(),
                Job::ReadOffline { .. } => None,
            })
            .min();
        if let Some(wait) = held_until
            .filter(|_| !read)
            .and_then(|t| t.checked_duration_since(Instant::now()))
        {
            std::thread::sleep(wait);
        }
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Write { op, reply } => writes.push((op, reply)),
                Job::ReadOffline { terminal, reply } => reads.push((terminal, reply)),
            }
        }
        if !writes.is_empty() {
            let ops: Vec<&Op> = writes.iter().map(|(op, _)| op).collect();
            let taken: Vec<Option<Vec<bool>>> = ops.iter().map(|op| op.take()).collect();
            let writes_nothing = taken
                .iter()
                .all(|t| t.as_ref().is_some_and(|t| !t.contains(&true)));
            let outcome = if writes_nothing {
                Ok(number_only(&ops, &mut next_id))
            } else {
                let started = Instant::now();
                let outcome = apply_batch(shared, &ops, &taken, &mut next_id);
                commits.observe(started.elapsed().as_secs_f64());
                outcome
            };
            settle_index(shared, &ops, outcome.as_ref().ok().map(|(_, boxes)| boxes));
            match outcome {
                Ok((results, _)) => {
                    for ((_, reply), result) in writes.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "embedded store commit failed");
                    for (_, reply) in writes {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        // Reads come after the commit of everything queued before them.
        for (terminal, reply) in reads {
            let _ = reply.send(read_box(shared, &terminal));
        }
    }
}

/// Committed box states of a batch: whether each touched terminal still has stored messages.
type Boxes = HashMap<Terminal, bool>;
type BatchOutcome = (Vec<Result<Vec<u64>, StoreError>>, Boxes);

/// Hands out the next sequence number.
fn new_id(next_id: &mut u64) -> u64 {
    *next_id += 1;
    *next_id
}

/// A batch of appends none of whose messages is written: their numbers, and no transaction.
fn number_only(ops: &[&Op], next_id: &mut u64) -> BatchOutcome {
    let results = ops
        .iter()
        .map(|op| match op {
            Op::QueueAppend(_, messages, _) => {
                Ok(messages.iter().map(|_| new_id(next_id)).collect())
            }
            _ => Ok(Vec::new()),
        })
        .collect();
    (results, Boxes::new())
}

/// Applies `ops` in one transaction; `taken` says, for each append, which messages to write.
fn apply_batch(
    shared: &Shared,
    ops: &[&Op],
    taken: &[Option<Vec<bool>>],
    next_id: &mut u64,
) -> Result<BatchOutcome, StoreError> {
    let txn = shared.db.begin_write().map_err(unavailable)?;
    let mut results = Vec::with_capacity(ops.len());
    let mut boxes = Boxes::new();
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let mut new_id = || new_id(next_id);
        for (op, taken) in ops.iter().zip(taken) {
            let result = match op {
                Op::SetLogin(uid, term, record) => {
                    set_login(&txn, uid, *term, record.clone()).map(|_| Vec::new())
                }
                Op::StoreOffline(writes) => {
                    store_offline(&txn, shared.limits, writes, &mut new_id, &mut boxes)
                        .map(|_| Vec::new())
                }
                Op::RemoveOffline(keys) => {
                    remove_offline(&txn, keys, &mut boxes).map(|_| Vec::new())
                }
                Op::QueueAppend(queue, messages, _) => {
                    let taken = taken.as_deref().unwrap_or_default();
                    queue_append(&txn, *queue, messages, taken, &mut new_id)
                }
                Op::QueueRemove(queue, seqs) => {
                    queue_remove(&txn, *queue, seqs).map(|_| Vec::new())
                }
            };
            results.push(result);
        }
        meta.insert(NEXT_ID, *next_id).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)?;
    Ok((results, boxes))
}

/// Brings the stored-messages index up to date after a batch: its queued writes are no longer
/// pending, and (if it committed) the boxes it touched are present or not. A terminal leaves the
/// index only when nothing is queued for it and its box is empty.
fn settle_index(shared: &Shared, ops: &[&Op], committed: Option<&Boxes>) {
    let mut index = shared.stored.lock();
    for op in ops {
        if let Op::StoreOffline(writes) = op {
            for w in writes {
                if let Some(entry) = index.get_mut(&(Box::from(&*w.uid), w.term)) {
                    entry.queued = entry.queued.saturating_sub(1);
                }
            }
        }
    }
    if let Some(boxes) = committed {
        for (terminal, present) in boxes {
            index.entry(terminal.clone()).or_default().present = *present;
        }
    }
    let touched: Vec<Terminal> = ops
        .iter()
        .flat_map(|op| -> Vec<Terminal> {
            match op {
                Op::StoreOffline(writes) => writes
                    .iter()
                    .map(|w| (Box::from(&*w.uid), w.term))
                    .collect(),
                Op::RemoveOffline(keys) => {
                    keys.iter().map(|k| (Box::from(&*k.uid), k.term)).collect()
                }
                _ => Vec::new(),
            }
        })
        .collect();
    for terminal in touched {
        if let Some(entry) = index.get(&terminal)
            && entry.queued == 0
            && !entry.present
        {
            index.remove(&terminal);
        }
    }
}

fn read_box(shared: &Shared, terminal: &Terminal) -> Result<Offline, StoreError> {
    let read = shared.db.begin_read().map_err(unavailable)?;
    let table = read.open_table(OFFLINE).map_err(unavailable)?;
    match table
        .get((&*terminal.0, terminal.1.bit()))
        .map_err(unavailable)?
    {
        Some(v) => Offline::decode(v.value()),
        None => Ok(Offline::default()),
    }
}

fn set_login(
    txn: &redb::WriteTransaction,
    uid: &str,
    term: TermType,
    record: Option<LoginRecord>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(LOGINS).map_err(unavailable)?;
    let mut logins = match table.get(uid).map_err(unavailable)? {
        Some(v) => decode_logins(v.value())?,
        None => UserLogins::default(),
    };
    logins.set(term, record);
    if logins.is_empty() {
        table.remove(uid).map_err(unavailable)?;
    } else {
        table
            .insert(uid, encode_logins(&logins).as_slice())
            .map_err(unavailable)?;
    }
    Ok(())
}

fn load_box(
    table: &redb::Table<(&str, u8), &[u8]>,
    uid: &str,
    term: TermType,
) -> Result<Offline, StoreError> {
    match table.get((uid, term.bit())).map_err(unavailable)? {
        Some(v) => Offline::decode(v.value()),
        None => Ok(Offline::default()),
    }
}

fn save_box(
    table: &mut redb::Table<(&str, u8), &[u8]>,
    uid: &str,
    term: TermType,
    offline: &Offline,
    boxes: &mut Boxes,
) -> Result<(), StoreError> {
    if offline.is_empty() {
        table.remove((uid, term.bit())).map_err(unavailable)?;
    } else {
        table
            .insert((uid, term.bit()), offline.encode().as_slice())
            .map_err(unavailable)?;
    }
    boxes.insert((uid.into(), term), !offline.is_empty());
    Ok(())
}

fn store_offline(
    txn: &redb::WriteTransaction,
    limits: OfflineLimits,
    writes: &[OfflineWrite],
    new_id: &mut impl FnMut() -> u64,
    boxes: &mut Boxes,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OFFLINE).map_err(unavailable)?;
    for w in writes {
        let mut offline = load_box(&table, &w.uid, w.term)?;
        offline.apply(&w.message, new_id(), limits);
        save_box(&mut table, &w.uid, w.term, &offline, boxes)?;
    }
    Ok(())
}

fn remove_offline(
    txn: &redb::WriteTransaction,
    keys: &[StoredKey],
    boxes: &mut Boxes,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OFFLINE).map_err(unavailable)?;
    for k in keys {
        let mut offline = load_box(&table, &k.uid, k.term)?;
        if offline.remove(&k.item) {
            save_box(&mut table, &k.uid, k.term, &offline, boxes)?;
        }
    }
    Ok(())
}

/// One queued message in a batch row.
struct Queued<'a> {
    seq: u64,
    topic: &'a str,
    body: &'a [u8],
}

/// A batch row: for each message, its sequence number (u64), topic (u16 length, bytes) and body
/// (u32 length, bytes), big-endian.
fn encode_batch(messages: &[Queued<'_>]) -> Result<Vec<u8>, StoreError> {
    // Sized up front: a broadcast's row is megabytes, which doubling would copy over and over.
    let size = messages
        .iter()
        .map(|m| 14 + m.topic.len() + m.body.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for m in messages {
        let topic_len = u16::try_from(m.topic.len())
            .map_err(|_| StoreError::Unavailable("topic name too long to queue".into()))?;
        let body_len = u32::try_from(m.body.len())
            .map_err(|_| StoreError::Unavailable("message too long to queue".into()))?;
        out.put_u64(m.seq);
        out.put_u16(topic_len);
        out.put_slice(m.topic.as_bytes());
        out.put_u32(body_len);
        out.put_slice(m.body);
    }
    Ok(out)
}

/// The messages of a batch row, read in place, in order; a malformed row yields one error and
/// ends.
struct BatchReader<'a> {
    data: &'a [u8],
}

impl<'a> BatchReader<'a> {
    fn read(&mut self) -> Result<Queued<'a>, StoreError> {
        let bad = || StoreError::Corrupt("queued batch is cut short".into());
        let data = &mut self.data;
        if data.len() < 10 {
            return Err(bad());
        }
        let seq = data.get_u64();
        let topic_len = usize::from(data.get_u16());
        let topic = data.get(..topic_len).ok_or_else(bad)?;
        let topic = std::str::from_utf8(topic)
            .map_err(|_| StoreError::Corrupt("queued topic is not UTF-8".into()))?;
        *data = &data[topic_len..];
        if data.len() < 4 {
            return Err(bad());
        }
        let body_len = data.get_u32() as usize;
        let body = data.get(..body_len).ok_or_else(bad)?;
        *data = &data[body_len..];
        Ok(Queued { seq, topic, body })
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<Queued<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.data.is_empty() {
            return None;
        }
        let read = self.read();
        if read.is_err() {
            self.data = &[];
        }
        Some(read)
    }
}

/// Moves a queue kept a row per message (earlier versions) into batch rows, one per message,
/// with their sequence numbers unchanged.
fn migrate_queue(txn: &redb::WriteTransaction, queue: Queue) -> Result<(), StoreError> {
    let moved = {
        let old = txn.open_table(queue.old_table()).map_err(unavailable)?;
        let mut rows = txn.open_table(queue.table()).map_err(unavailable)?;
        let mut moved = 0usize;
        for entry in old.iter().map_err(unavailable)? {
            let (seq, value) = entry.map_err(unavailable)?;
            let (topic, body) = value.value();
            let seq = seq.value();
            let row = encode_batch(&[Queued { seq, topic, body }])?;
            rows.insert(seq, &row[..]).map_err(unavailable)?;
            moved += 1;
        }
        moved
    };
    txn.delete_table(queue.old_table()).map_err(unavailable)?;
    if moved > 0 {
        tracing::info!(moved, "queued messages moved to batch rows");
    }
    Ok(())
}

/// Numbers every message and writes those `taken` says to write in one row.
fn queue_append(
    txn: &redb::WriteTransaction,
    queue: Queue,
    messages: &[(String, Bytes)],
    taken: &[bool],
    new_id: &mut impl FnMut() -> u64,
) -> Result<Vec<u64>, StoreError> {
    let seqs: Vec<u64> = messages.iter().map(|_| new_id()).collect();
    let queued: Vec<Queued<'_>> = seqs
        .iter()
        .zip(messages)
        .zip(taken)
        .filter(|(_, taken)| **taken)
        .map(|((seq, (topic, body)), _)| Queued {
            seq: *seq,
            topic,
            body,
        })
        .collect();
    let Some(first) = queued.first().map(|m| m.seq) else {
        return Ok(seqs);
    };
    let row = encode_batch(&queued)?;
    let mut table = txn.open_table(queue.table()).map_err(unavailable)?;
    table.insert(first, &row[..]).map_err(unavailable)?;
    Ok(seqs)
}

fn queue_remove(
    txn: &redb::WriteTransaction,
    queue: Queue,
    seqs: &[u64],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(queue.table()).map_err(unavailable)?;
    let mut removed = txn.open_table(queue.removed_table()).map_err(unavailable)?;
    let mut gone = seqs.to_vec();
    gone.sort_unstable();
    gone.dedup();
    let mut in_row = Vec::new();
    // Walks the numbers in order: one lookup finds a row (the greatest key not above the
    // number), and every number up to the row's last message is settled with it.
    let mut i = 0;
    while let Some(&seq) = gone.get(i) {
        let row = {
            let mut rows = table.range(..=seq).map_err(unavailable)?;
            let Some(entry) = rows.next_back() else {
                i += 1;
                continue;
            };
            let (key, value) = entry.map_err(unavailable)?;
            in_row.clear();
            for m in (BatchReader {
                data: value.value(),
            }) {
                in_row.push(m?.seq);
            }
            key.value()
        };
        let last = in_row.last().copied().unwrap_or(row);
        let next = i + gone[i..].partition_point(|&s| s <= last);
        let these = &gone[i..next];
        let mut marks = removed
            .get(row)
            .map_err(unavailable)?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        marks.resize(in_row.len().div_ceil(8), 0);
        let mut changed = false;
        for (at, seq) in in_row.iter().enumerate() {
            if !marked(&marks, at) && these.binary_search(seq).is_ok() {
                marks[at / 8] |= 1 << (at % 8);
                changed = true;
            }
        }
        let left = (0..in_row.len()).any(|at| !marked(&marks, at));
        if !left {
            table.remove(row).map_err(unavailable)?;
            removed.remove(row).map_err(unavailable)?;
        } else if changed {
            removed.insert(row, &marks[..]).map_err(unavailable)?;
        }
        i = next.max(i + 1);
    }
    Ok(())
}

/// Whether the message at position `at` of a row is marked removed in its bitmap.
fn marked(marks: &[u8], at: usize) -> bool {
    marks.get(at / 8).is_some_and(|b| b & (1 << (at % 8)) != 0)
}

fn queue_load(shared: &Shared, queue: Queue) -> Result<Vec<QueuedMessage>, StoreError> {
    let read = shared.db.begin_read().map_err(unavailable)?;
    let table = read.open_table(queue.table()).map_err(unavailable)?;
    let removed = read
        .open_table(queue.removed_table())
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(unavailable)? {
        let (row, value) = entry.map_err(unavailable)?;
        let marks = removed.get(row.value()).map_err(unavailable)?;
        let marks = marks.as_ref().map_or(&[][..], |m| m.value());
        for (at, m) in (BatchReader {
            data: value.value(),
        })
        .enumerate()
        {
            let m = m?;
            if marked(marks, at) {
                continue;
            }
            out.push(QueuedMessage {
                seq: m.seq,
                topic: m.topic.to_owned(),
                body: Bytes::copy_from_slice(m.body),
            });
        }
    }
    Ok(out)
}

fn encode_logins(logins: &UserLogins) -> Vec<u8> {
    let mut out = Vec::new();
    for term in TermType::ALL {
        match logins.get(term) {
            None => out.put_u8(0),
            Some(r) => {
                out.put_u8(if r.login { 2 } else { 1 });
                for text in [&r.code, &r.device_token] {
                    out.put_u32(text.len() as u32);
                    out.put_slice(text.as_bytes());
                }
            }
        }
    }
    out
}

fn decode_logins(mut data: &[u8]) -> Result<UserLogins, StoreError> {
    let corrupt = || StoreError::Corrupt("login record".into());
    let mut logins = UserLogins::default();
    for term in TermType::ALL {
        if !data.has_remaining() {
            return Err(corrupt());
        }
        let tag = data.get_u8();
        if tag == 0 {
            continue;
        }
        let mut texts = [String::new(), String::new()];
        for text in &mut texts {
            if data.remaining() < 4 {
                return Err(corrupt());
            }
            let n = data.get_u32() as usize;
            if data.remaining() < n {
                return Err(corrupt());
            }
            *text = String::from_utf8(data[..n].to_vec()).map_err(|_| corrupt())?;
            data.advance(n);
        }
        let [code, device_token] = texts;
        logins.set(
            term,
            Some(LoginRecord {
                code,
                device_token,
                login: tag == 2,
            }),
        );
    }
    Ok(logins)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        Ok(self
            .shared
            .logins
            .read()
            .get(uid)
            .and_then(|l| l.get(term).cloned()))
    }

    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
        let logins = self.shared.logins.read();
        Ok(uids
            .iter()
            .map(|uid| logins.get(*uid).map_or(TermMask(0), UserLogins::mask))
            .collect())
    }

    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture {
        // The cache runs ahead of the disk: a later read sees this write at once. Should the
        // commit fail, the caller requeues the bus message and the write is made again.
        // The write is queued under the cache's lock, as in `log_in`.
        let mut logins = self.shared.logins.write();
        let entry = logins.entry(uid.into()).or_default();
        entry.set(term, record.clone());
        if entry.is_empty() {
            logins.remove(uid);
        }
        self.write_unit(Op::SetLogin(uid.to_owned(), term, record))
    }

    fn log_in(&self, uid: &str, term: TermType, record: LoginRecord) -> StoreFuture<LoggedIn> {
        // Read, replaced and queued for the disk under one lock of the cache, which every login
        // write takes: the disk gets the writes in the order the cache did.
        let mut logins = self.shared.logins.write();
        let entry = logins.entry(uid.into()).or_default();
        let replaced = entry.get(term).cloned();
        entry.set(term, Some(record.clone()));
        let durable = self.write_unit(Op::SetLogin(uid.to_owned(), term, Some(record)));
        drop(logins);
        resolved(Ok(LoggedIn { replaced, durable }))
    }

    fn forget_device_token(&self, uid: &str, term: TermType, token: &str) -> StoreFuture {
        // Checked, changed and queued under the cache's lock, as in `log_in`.
        let mut logins = self.shared.logins.write();
        let Some(entry) = logins.get_mut(uid) else {
            return resolved(Ok(()));
        };
        let Some(record) = entry.get(term).filter(|r| r.device_token == token) else {
            return resolved(Ok(()));
        };
        let record = LoginRecord {
            device_token: String::new(),
            ..record.clone()
        };
        entry.set(term, Some(record.clone()));
        self.write_unit(Op::SetLogin(uid.to_owned(), term, Some(record)))
    }

    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture {
        if writes.is_empty() {
            return resolved(Ok(()));
        }
        {
            let mut index = self.shared.stored.lock();
            for w in &writes {
                index
                    .entry((Box::from(&*w.uid), w.term))
                    .or_default()
                    .queued += 1;
            }
        }
        self.write_unit(Op::StoreOffline(writes))
    }

    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        let terminal: Terminal = (uid.into(), term);
        if !self.shared.stored.lock().contains_key(&terminal) {
            return resolved(Ok(Offline::default()));
        }
        let (reply, done) = oneshot::channel();
        if self
            .writer
            .send(Job::ReadOffline { terminal, reply })
            .is_err()
        {
            return resolved(Err(stopped()));
        }
        Box::pin(async move { done.await.map_err(|_| stopped())? })
    }

    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        if keys.is_empty() {
            return resolved(Ok(()));
        }
        self.write_unit(Op::RemoveOffline(keys))
    }

    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.write(Op::QueueAppend(Queue::Inbox, messages, None))
    }

    fn inbox_append_unless_retired(
        &self,
        messages: Vec<(String, Bytes)>,
        unwritten: Arc<Unwritten>,
    ) -> StoreFuture<Vec<u64>> {
        let retirable = Retirable {
            unwritten,
            queued: Instant::now(),
        };
        self.write(Op::QueueAppend(Queue::Inbox, messages, Some(retirable)))
    }

    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture {
        self.write_unit(Op::QueueRemove(Queue::Inbox, seqs))
    }

    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.read(|shared| queue_load(shared, Queue::Inbox)).await
    }

    fn outbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.write(Op::QueueAppend(Queue::Outbox, messages, None))
    }

    fn outbox_remove(&self, seq: u64) -> StoreFuture {
        self.write_unit(Op::QueueRemove(Queue::Outbox, vec![seq]))
    }

    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.read(|shared| queue_load(shared, Queue::Outbox)).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::commit_histogram;

    type Rows = Vec<(u64, Vec<u8>)>;

    /// The sequence numbers the inbox loads.
    async fn inbox_seqs(store: &EmbeddedStore) -> Vec<u64> {
        let loaded = store.inbox_load().await.expect("load");
        loaded.iter().map(|m| m.seq).collect()
    }

    /// The rows of a queue and their removal bitmaps, as committed.
    fn rows(store: &EmbeddedStore, queue: Queue) -> (Rows, Rows) {
        let read = store.shared.db.begin_read().expect("read");
        let dump = |def: TableDefinition<u64, &[u8]>| {
            read.open_table(def)
                .expect("table")
                .iter()
                .expect("iter")
                .map(|e| {
                    let (k, v) = e.expect("entry");
                    (k.value(), v.value().to_vec())
                })
                .collect::<Vec<_>>()
        };
        (dump(queue.table()), dump(queue.removed_table()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_removed_in_pieces_is_marked_not_rewritten_and_deleted_when_all_are_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = crate::metrics::Metrics::new();
        let open = || {
            EmbeddedStore::open(
                dir.path(),
                OfflineLimits::default(),
                1 << 20,
                metrics.store_commit_seconds.clone(),
            )
        };
        let store = open().expect("open");
        let bodies: Vec<(String, Bytes)> = (0..10)
            .map(|i| ("push".to_owned(), Bytes::from(format!("m{i}"))))
            .collect();
        let seqs = store.inbox_append(bodies).await.expect("append");
        let (before, _) = rows(&store, Queue::Inbox);
        store
            .inbox_remove(vec![seqs[0], seqs[9], seqs[3]])
            .await
            .expect("remove");
        let (after, marks) = rows(&store, Queue::Inbox);
        assert_eq!(after, before, "the row is not rewritten");
        assert_eq!(marks, vec![(seqs[0], vec![0b0000_1001, 0b0000_0010])]);
        // Removing one again, or a number of no row, changes nothing.
        store
            .inbox_remove(vec![seqs[3], seqs[9] + 100])
            .await
            .expect("remove");
        assert_eq!(rows(&store, Queue::Inbox).1, marks);
        assert!(
            metrics
                .render()
                .contains("galopush_store_commit_seconds_count 3"),
            "each write timed: an append and two removals"
        );
        drop(store);

        // The writer thread lets the file go once it has seen the store dropped.
        let mut reopened = open();
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            reopened = open();
        }
        let store = reopened.expect("reopen");
        let left = inbox_seqs(&store).await;
        let expected: Vec<u64> = [1, 2, 4, 5, 6, 7, 8].iter().map(|&i| seqs[i]).collect();
        assert_eq!(left, expected, "the marks outlive a restart");
        store.inbox_remove(expected).await.expect("remove");
        assert_eq!(
            rows(&store, Queue::Inbox),
            (Vec::new(), Vec::new()),
            "the row and its marks go together"
        );
        assert!(store.inbox_load().await.expect("load").is_empty());
    }

    fn pushes(n: usize) -> Vec<(String, Bytes)> {
        (0..n)
            .map(|i| ("push".to_owned(), Bytes::from(format!("m{i}"))))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_retired_before_the_writer_takes_them_are_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = crate::metrics::Metrics::new();
        let store = EmbeddedStore::open(
            dir.path(),
            OfflineLimits::default(),
            1 << 20,
            metrics.store_commit_seconds.clone(),
        )
        .expect("open");
        let some = Unwritten::new(4);
        assert!(some.retire(1) && some.retire(3));
        let seqs = store
            .inbox_append_unless_retired(pushes(4), some.clone())
            .await
            .expect("append");
        assert!(seqs.is_sorted() && seqs.len() == 4, "{seqs:?}");
        assert!(!some.retire(0), "taken by the writer: being written");
        assert_eq!(inbox_seqs(&store).await, [seqs[0], seqs[2]]);
        let (written, _) = rows(&store, Queue::Inbox);
        assert_eq!(written.len(), 1, "one row");
        assert_eq!(written[0].0, seqs[0]);

        // Every message retired first: nothing to write, no transaction, numbers still new.
        let all = Unwritten::new(2);
        assert!(all.retire(0) && all.retire(1));
        tokio::time::timeout(Duration::from_secs(5), all.all_done())
            .await
            .expect("all done at once");
        let more = store
            .inbox_append_unless_retired(pushes(2), all)
            .await
            .expect("append");
        assert!(more[0] > seqs[3] && more[1] > more[0], "{more:?}");
        assert_eq!(inbox_seqs(&store).await, [seqs[0], seqs[2]]);
        assert!(
            metrics
                .render()
                .contains("galopush_store_commit_seconds_count 1"),
            "only the append that wrote something committed"
        );

        // An inbox append behind a held one waits for it: numbers keep the order of the calls.
        let held = Unwritten::new(1);
        let first = store.inbox_append_unless_retired(pushes(1), held);
        let second = store.inbox_append(pushes(1));
        let login = store.set_login("ann", TermType::Pc, None);
        let (first, second, login) = tokio::join!(first, second, login);
        let (first, second) = (first.expect("append")[0], second.expect("append")[0]);
        login.expect("login");
        assert!(first < second, "{first} then {second}");
        assert_eq!(inbox_seqs(&store).await, [seqs[0], seqs[2], first, second]);

        // Whichever comes first, the retirement or the writer, the inbox agrees with it.
        let raced = Unwritten::new(1);
        let append = store.inbox_append_unless_retired(pushes(1), raced.clone());
        let unwritten = raced.retire(0);
        let last = append.await.expect("append")[0];
        let kept = inbox_seqs(&store).await.contains(&last);
        assert_eq!(kept, !unwritten);
        assert!(last > second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_kept_a_row_per_message_is_moved_to_batches_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::create(dir.path().join("galopush.redb")).expect("create");
            let txn = db.begin_write().expect("write");
            {
                let mut inbox = txn.open_table(OLD_INBOX).expect("inbox");
                inbox.insert(7, ("push", &b"seven"[..])).expect("insert");
                inbox.insert(9, ("callback", &b"nine"[..])).expect("insert");
                let mut outbox = txn.open_table(OLD_OUTBOX).expect("outbox");
                outbox.insert(8, ("msgUpward", &b"up"[..])).expect("insert");
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(NEXT_ID, 9).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let store = EmbeddedStore::open(
            dir.path(),
            OfflineLimits::default(),
            1 << 20,
            commit_histogram(),
        )
        .expect("open");
        let inbox: Vec<_> = store
            .inbox_load()
            .await
            .expect("load")
            .into_iter()
            .map(|m| (m.seq, m.topic, m.body))
            .collect();
        assert_eq!(
            inbox,
            vec![
                (7, "push".to_owned(), Bytes::from("seven")),
                (9, "callback".to_owned(), Bytes::from("nine")),
            ]
        );
        let outbox = store.outbox_load().await.expect("load");
        assert_eq!(
            (outbox[0].seq, outbox[0].body.clone()),
            (8, Bytes::from("up"))
        );
        store.inbox_remove(vec![7]).await.expect("remove");
        let fresh = store
            .inbox_append(vec![("push".into(), Bytes::from("ten"))])
            .await
            .expect("append");
        assert_eq!(fresh, vec![10], "numbers go on from the old ones");
        let left = inbox_seqs(&store).await;
        assert_eq!(left, vec![9, 10]);
    }
}
