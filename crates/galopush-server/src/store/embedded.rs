//! The embedded store: redb in the data directory (`store.path`), crash-safe (every commit is
//! fsynced), with group commit.
//!
//! One writer thread owns all writes: callers queue operations and await their result; the
//! thread takes everything queued, applies it in one transaction and commits once, so a burst
//! of `/pub` calls or offline writes costs one fsync. Login records are also kept in memory
//! (read on every delivery plan); the set of terminals with stored messages is kept in memory so
//! a REGISTER without offline messages never touches the disk.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use galopush_protocol::TermType;
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{
    Durable, LoginRecord, Offline, OfflineLimits, OfflineWrite, QueuedMessage, Store, StoreError,
    StoredKey, UserLogins, resolved,
};

const LOGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("logins");
const OFFLINE: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("offline");
const INBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("inbox");
const OUTBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
/// Most operations folded into one transaction.
const MAX_BATCH: usize = 4096;

/// A [`Store`] on disk.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<Job>,
}

struct Shared {
    db: Database,
    limits: OfflineLimits,
    logins: RwLock<HashMap<Box<str>, UserLogins>>,
    has_offline: RwLock<HashSet<(Box<str>, TermType)>>,
}

enum Op {
    SetLogin(String, TermType, Option<LoginRecord>),
    StoreOffline(Vec<OfflineWrite>),
    RemoveOffline(Vec<StoredKey>),
    QueueAppend(Queue, Vec<(String, Bytes)>),
    QueueRemove(Queue, Vec<u64>),
}

#[derive(Clone, Copy)]
enum Queue {
    Inbox,
    Outbox,
}

impl Queue {
    fn table(self) -> TableDefinition<'static, u64, (&'static str, &'static [u8])> {
        match self {
            Queue::Inbox => INBOX,
            Queue::Outbox => OUTBOX,
        }
    }
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

/// What a committed operation changes in the in-memory indexes.
enum Effect {
    Login(String, TermType, Option<LoginRecord>),
    Offline(String, TermType, bool),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, limits: OfflineLimits) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let file = dir.join("galopush.redb");
        let db = Database::create(&file).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open {} (is another galopush using this data directory?): {e}",
                file.display()
            ))
        })?;
        let txn = db.begin_write().map_err(unavailable)?;
        for table in [INBOX, OUTBOX] {
            txn.open_table(table).map_err(unavailable)?;
        }
        txn.open_table(LOGINS).map_err(unavailable)?;
        txn.open_table(OFFLINE).map_err(unavailable)?;
        txn.open_table(META).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;

        let mut logins = HashMap::new();
        let mut has_offline = HashSet::new();
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
                    has_offline.insert((uid.into(), term));
                }
            }
        }
        let shared = Arc::new(Shared {
            db,
            limits,
            logins: RwLock::new(logins),
            has_offline: RwLock::new(has_offline),
        });
        let (writer, jobs) = mpsc::unbounded_channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("galopush-store".into())
            .spawn(move || write_loop(&thread_shared, jobs))
            .map_err(|e| StoreError::Unavailable(format!("cannot start store writer: {e}")))?;
        Ok(EmbeddedStore { shared, writer })
    }

    /// Queues an operation for the writer thread (in call order); resolves once committed.
    fn write(&self, op: Op) -> Durable<Vec<u64>> {
        let stopped = || StoreError::Unavailable("embedded store writer has stopped".into());
        let (reply, done) = oneshot::channel();
        if self.writer.send(Job { op, reply }).is_err() {
            return resolved(Err(stopped()));
        }
        Box::pin(async move { done.await.map_err(|_| stopped())? })
    }

    fn write_unit(&self, op: Op) -> Durable {
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

fn write_loop(shared: &Shared, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        match apply_batch(shared, &ops) {
            Ok((results, effects)) => {
                apply_effects(shared, effects);
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type BatchOutcome = (Vec<Result<Vec<u64>, StoreError>>, Vec<Effect>);

fn apply_batch(shared: &Shared, ops: &[&Op]) -> Result<BatchOutcome, StoreError> {
    let txn = shared.db.begin_write().map_err(unavailable)?;
    let mut results = Vec::with_capacity(ops.len());
    let mut effects = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let mut next_id = meta
            .get(NEXT_ID)
            .map_err(unavailable)?
            .map_or(0, |v| v.value());
        let mut new_id = || {
            next_id += 1;
            next_id
        };
        for op in ops {
            let result = match op {
                Op::SetLogin(uid, term, record) => {
                    set_login(&txn, uid, *term, record.clone()).map(|_| Vec::new())
                }
                Op::StoreOffline(writes) => {
                    store_offline(&txn, shared.limits, writes, &mut new_id, &mut effects)
                        .map(|_| Vec::new())
                }
                Op::RemoveOffline(keys) => {
                    remove_offline(&txn, keys, &mut effects).map(|_| Vec::new())
                }
                Op::QueueAppend(queue, messages) => {
                    queue_append(&txn, *queue, messages, &mut new_id)
                }
                Op::QueueRemove(queue, seqs) => {
                    queue_remove(&txn, *queue, seqs).map(|_| Vec::new())
                }
            };
            results.push(result);
        }
        meta.insert(NEXT_ID, next_id).map_err(unavailable)?;
    }
    txn.commit().map_err(unavailable)?;
    Ok((results, effects))
}

fn apply_effects(shared: &Shared, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Login(uid, term, record) => {
                let mut logins = shared.logins.write();
                let empty = {
                    let entry = logins.entry(uid.as_str().into()).or_default();
                    entry.set(term, record);
                    entry.is_empty()
                };
                if empty {
                    logins.remove(uid.as_str());
                }
            }
            Effect::Offline(uid, term, present) => {
                let mut index = shared.has_offline.write();
                if present {
                    index.insert((uid.into(), term));
                } else {
                    index.remove(&(Box::from(uid.as_str()), term));
                }
            }
        }
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
    effects: &mut Vec<Effect>,
) -> Result<(), StoreError> {
    if offline.is_empty() {
        table.remove((uid, term.bit())).map_err(unavailable)?;
    } else {
        table
            .insert((uid, term.bit()), offline.encode().as_slice())
            .map_err(unavailable)?;
    }
    effects.push(Effect::Offline(uid.to_owned(), term, !offline.is_empty()));
    Ok(())
}

fn store_offline(
    txn: &redb::WriteTransaction,
    limits: OfflineLimits,
    writes: &[OfflineWrite],
    new_id: &mut impl FnMut() -> u64,
    effects: &mut Vec<Effect>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OFFLINE).map_err(unavailable)?;
    for w in writes {
        let mut offline = load_box(&table, &w.uid, w.term)?;
        offline.apply(&w.message, new_id(), limits);
        save_box(&mut table, &w.uid, w.term, &offline, effects)?;
    }
    Ok(())
}

fn remove_offline(
    txn: &redb::WriteTransaction,
    keys: &[StoredKey],
    effects: &mut Vec<Effect>,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(OFFLINE).map_err(unavailable)?;
    for k in keys {
        let mut offline = load_box(&table, &k.uid, k.term)?;
        if offline.remove(&k.item) {
            save_box(&mut table, &k.uid, k.term, &offline, effects)?;
        }
    }
    Ok(())
}

fn queue_append(
    txn: &redb::WriteTransaction,
    queue: Queue,
    messages: &[(String, Bytes)],
    new_id: &mut impl FnMut() -> u64,
) -> Result<Vec<u64>, StoreError> {
    let mut table = txn.open_table(queue.table()).map_err(unavailable)?;
    let mut seqs = Vec::with_capacity(messages.len());
    for (topic, body) in messages {
        let seq = new_id();
        table
            .insert(seq, (topic.as_str(), &body[..]))
            .map_err(unavailable)?;
        seqs.push(seq);
    }
    Ok(seqs)
}

fn queue_remove(
    txn: &redb::WriteTransaction,
    queue: Queue,
    seqs: &[u64],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(queue.table()).map_err(unavailable)?;
    for seq in seqs {
        table.remove(*seq).map_err(unavailable)?;
    }
    Ok(())
}

fn queue_load(shared: &Shared, queue: Queue) -> Result<Vec<QueuedMessage>, StoreError> {
    let read = shared.db.begin_read().map_err(unavailable)?;
    let table = read.open_table(queue.table()).map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(unavailable)? {
        let (seq, value) = entry.map_err(unavailable)?;
        let (topic, body) = value.value();
        out.push(QueuedMessage {
            seq: seq.value(),
            topic: topic.to_owned(),
            body: Bytes::copy_from_slice(body),
        });
    }
    Ok(out)
}

fn encode_logins(logins: &UserLogins) -> Vec<u8> {
    let mut out = Vec::new();
    for slot in &logins.0 {
        match slot {
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
    for slot in &mut logins.0 {
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
        *slot = Some(LoginRecord {
            code,
            device_token,
            login: tag == 2,
        });
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

    async fn logins(&self, uids: &[&str]) -> Result<Vec<UserLogins>, StoreError> {
        let logins = self.shared.logins.read();
        Ok(uids
            .iter()
            .map(|uid| logins.get(*uid).cloned().unwrap_or_default())
            .collect())
    }

    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> Durable {
        // The cache runs ahead of the disk: a later read sees this write at once. Should the
        // commit fail, the caller requeues the bus message and the write is made again.
        apply_effects(
            &self.shared,
            vec![Effect::Login(uid.to_owned(), term, record.clone())],
        );
        self.write_unit(Op::SetLogin(uid.to_owned(), term, record))
    }

    fn store_offline(&self, writes: Vec<OfflineWrite>) -> Durable {
        if writes.is_empty() {
            return resolved(Ok(()));
        }
        self.write_unit(Op::StoreOffline(writes))
    }

    async fn offline(&self, uid: &str, term: TermType) -> Result<Offline, StoreError> {
        let key = (Box::from(uid), term);
        if !self.shared.has_offline.read().contains(&key) {
            return Ok(Offline::default());
        }
        self.read(move |shared| {
            let read = shared.db.begin_read().map_err(unavailable)?;
            let table = read.open_table(OFFLINE).map_err(unavailable)?;
            match table.get((&*key.0, term.bit())).map_err(unavailable)? {
                Some(v) => Offline::decode(v.value()),
                None => Ok(Offline::default()),
            }
        })
        .await
    }

    fn remove_offline(&self, keys: Vec<StoredKey>) -> Durable {
        if keys.is_empty() {
            return resolved(Ok(()));
        }
        self.write_unit(Op::RemoveOffline(keys))
    }

    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> Durable<Vec<u64>> {
        self.write(Op::QueueAppend(Queue::Inbox, messages))
    }

    fn inbox_remove(&self, seqs: Vec<u64>) -> Durable {
        self.write_unit(Op::QueueRemove(Queue::Inbox, seqs))
    }

    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.read(|shared| queue_load(shared, Queue::Inbox)).await
    }

    fn outbox_append(&self, topic: String, body: Bytes) -> Durable<u64> {
        let done = self.write(Op::QueueAppend(Queue::Outbox, vec![(topic, body)]));
        Box::pin(async move {
            done.await?
                .first()
                .copied()
                .ok_or_else(|| StoreError::Unavailable("outbox append returned no sequence".into()))
        })
    }

    fn outbox_remove(&self, seq: u64) -> Durable {
        self.write_unit(Op::QueueRemove(Queue::Outbox, vec![seq]))
    }

    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.read(|shared| queue_load(shared, Queue::Outbox)).await
    }
}
