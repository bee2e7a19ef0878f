//! The store: login records, offline messages, and the embedded bus's inbox and outbox.
//!
//! One trait, [`Store`], with three implementations: [`memory`] (tests), [`embedded`] (redb on
//! disk, standalone) and Redis (cluster). Only what must outlive a process lives here; where
//! terminals are is soft state kept by the router.

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod memory;
pub mod offline;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};

pub use offline::{Offline, OfflineKey, OfflineLimits, OfflineWrite, StoredItem, StoredPush};

/// What the business side said about one terminal of a user (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRecord {
    /// The token the terminal must REGISTER with.
    pub code: String,
    /// Push token for the phone's push service (APNs for iOS, FCM for Android); empty: none.
    pub device_token: String,
    /// False once the business side logged the terminal out.
    pub login: bool,
}

/// A user's login records, at most one per terminal type. Kept sparse (most users have one or
/// two terminal types) because the embedded store holds every user's records in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLogins(Vec<(TermType, LoginRecord)>);

impl UserLogins {
    pub fn get(&self, term: TermType) -> Option<&LoginRecord> {
        self.0.iter().find(|(t, _)| *t == term).map(|(_, r)| r)
    }

    /// Sets (`Some`) or removes (`None`) the record of one terminal type.
    pub fn set(&mut self, term: TermType, record: Option<LoginRecord>) {
        self.0.retain(|(t, _)| *t != term);
        if let Some(record) = record {
            let at = self.0.partition_point(|(t, _)| *t < term);
            self.0.insert(at, (term, record));
        }
        self.0.shrink_to_fit();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The terminal types that have a record.
    pub fn mask(&self) -> TermMask {
        self.0.iter().fold(TermMask(0), |m, (t, _)| m.with(*t))
    }

    /// The records, in terminal-type order.
    pub fn iter(&self) -> impl Iterator<Item = (TermType, &LoginRecord)> {
        self.0.iter().map(|(t, r)| (*t, r))
    }
}

/// What [`Store::log_in`] found and did.
pub struct LoggedIn {
    /// The record the login replaced, as it was just before: with the same code and
    /// `login = true`, the login is a repeat (SPEC §5), which kicks no one.
    pub replaced: Option<LoginRecord>,
    /// Resolves once the new record is durable.
    pub durable: StoreFuture,
}

impl LoggedIn {
    /// Whether the login only repeats the one the record already holds: same code, logged in.
    pub fn is_repeat(&self, code: &str) -> bool {
        self.replaced
            .as_ref()
            .is_some_and(|r| r.login && r.code == code)
    }
}

/// A stored message named for removal: whose it is and which item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub uid: Arc<str>,
    pub term: TermType,
    pub item: OfflineKey,
}

/// A message kept in the inbox or outbox until it is retired or delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub seq: u64,
    pub topic: String,
    pub body: Bytes,
}

/// The messages of one inbox append, each claimed first either by the store, to write it, or by
/// its retirement: a message retired (delivered and acked, or stored offline) before the store
/// took it is done, its effect durable (SPEC §7), and is not written at all. On a live unicast
/// load most messages are acked within a few milliseconds, before the commit they would wait for.
#[derive(Debug)]
pub struct Unwritten {
    /// Per message: [`Unwritten::WAITING`], [`Unwritten::TAKEN`] or [`Unwritten::DONE`].
    claims: Box<[AtomicU8]>,
    /// Messages claimed by their retirement.
    done: AtomicUsize,
    /// Told once every message is claimed by its retirement.
    all_done: tokio::sync::Notify,
}

impl Unwritten {
    const WAITING: u8 = 0;
    const TAKEN: u8 = 1;
    const DONE: u8 = 2;

    /// `n` messages, none claimed yet.
    pub fn new(n: usize) -> Arc<Unwritten> {
        Arc::new(Unwritten {
            claims: (0..n).map(|_| AtomicU8::new(Unwritten::WAITING)).collect(),
            done: AtomicUsize::new(0),
            all_done: tokio::sync::Notify::new(),
        })
    }

    fn claim(&self, i: usize, to: u8) -> bool {
        self.claims.get(i).is_some_and(|c| {
            c.compare_exchange(Unwritten::WAITING, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// Whether message `i` is claimed by neither yet.
    pub fn is_waiting(&self, i: usize) -> bool {
        self.claims
            .get(i)
            .is_some_and(|c| c.load(Ordering::Acquire) == Unwritten::WAITING)
    }

    /// The store takes message `i` to write it: false when its retirement came first (write
    /// nothing for it).
    pub fn take(&self, i: usize) -> bool {
        self.claim(i, Unwritten::TAKEN)
    }

    /// Message `i` is retired: true when the store had not taken it, so it is not and will not
    /// be written (nothing to delete); false when it is being written (delete it once written).
    pub fn retire(&self, i: usize) -> bool {
        if !self.claim(i, Unwritten::DONE) {
            return false;
        }
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.claims.len() {
            self.all_done.notify_one();
        }
        true
    }

    /// Resolves once every message was retired before the store took it: the whole append is
    /// done without a write.
    pub async fn all_done(&self) {
        if self.done.load(Ordering::Acquire) < self.claims.len() {
            self.all_done.notified().await;
        }
    }
}

/// Why the store could not do what was asked. Callers treat every error as "not durable":
/// the bus message is requeued, nothing is acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A store operation put in order at the call: a write resolves once durable, a read sees every
/// write called before it. Dropping the future does not cancel a write.
pub type StoreFuture<T = ()> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A [`StoreFuture`] that is already resolved.
pub fn resolved<T: Send + 'static>(result: Result<T, StoreError>) -> StoreFuture<T> {
    Box::pin(std::future::ready(result))
}

/// Everything the router and the embedded bus keep durably.
///
/// Writes, and the read of a terminal's stored messages, return a [`StoreFuture`]: an
/// implementation puts the operation in order before it returns, so a write called before a
/// read is seen by it even if neither has been awaited yet. Callers can go on without awaiting
/// durability and await it elsewhere. The router relies on this to decide "live or stored" and
/// "registered, read its stored messages" under one lock per user.
///
/// An implementation queues operations in call order without waiting (the order is what the
/// router relies on, and it is decided under locks that cannot wait). That queue is bounded by
/// its callers, not by itself (SPEC §10): every write holds the [`Ticket`](crate::bus::Ticket)
/// of a bus message until it is durable, and bus messages are bounded (`limits.inbox_pending`,
/// nsqd's RDY); the rest come one per registration (bounded by `limits.max_connections`), per
/// acked stored message (at most a terminal's offline limits per connection), per IM
/// (`limits.im_inflight` per connection, `limits.outbox_pending`) and per batch of retirements.
/// A slow store therefore holds up retirement, the inbox fills and `/pub` answers `503`; a
/// refusal here instead would requeue a broadcast with more offline receivers than the bound
/// for ever.
///
/// The async reads (`login`, `logins`, the queue loads) must also see every write called
/// before them: the router queues a login record without awaiting it and reads it back on the
/// next REGISTER or delivery plan. (The embedded store's in-memory records run ahead of the
/// disk; Redis sends reads down the same ordered stream as writes.)
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One login record.
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError>;

    /// Which terminal types of each user have a login record, in the order asked (one round
    /// trip where possible). Planning a down-message needs no more than this, for every
    /// receiver of every message, so it is kept cheaper than reading the records.
    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError>;

    /// Creates, replaces (`Some`) or removes (`None`) a login record.
    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture;

    /// Writes a login record (`userOnlineState` online = true) and answers, in one step that no
    /// other write to the record comes between (routers sharing a store included), the record
    /// it replaced. Resolves as soon as that is known (the embedded and memory stores: at once;
    /// Redis: when the script answered); the write's durability is [`LoggedIn::durable`]. The
    /// write is made even when the record does not change: the record read may be ahead of the
    /// disk (the embedded store) after a commit that failed.
    fn log_in(&self, uid: &str, term: TermType, record: LoginRecord) -> StoreFuture<LoggedIn>;

    /// Clears the deviceToken of a login record whose push service declared the token dead
    /// (SPEC §12), in one step with respect to other writes to the record, and only if the
    /// record still holds `token`: a newer login may have brought another.
    fn forget_device_token(&self, uid: &str, term: TermType, token: &str) -> StoreFuture;

    /// Applies the offline rule to each write (SPEC §6).
    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture;

    /// A terminal's stored messages, including every write called before this.
    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline>;

    /// Removes delivered messages (a push only if no newer one was stored meanwhile).
    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture;

    /// Appends inbound bus messages to the inbox; resolves to their sequence numbers.
    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>>;

    /// [`Store::inbox_append`], leaving out each message whose retirement claims it in
    /// `unwritten` before the store takes it; resolves to a sequence number for every message,
    /// written or not (an unwritten one's is never used). A store that writes at the call (the
    /// memory store, Redis) takes them all at once, as this default does; the embedded store
    /// takes them when it builds the transaction.
    fn inbox_append_unless_retired(
        &self,
        messages: Vec<(String, Bytes)>,
        unwritten: Arc<Unwritten>,
    ) -> StoreFuture<Vec<u64>> {
        // Nothing can be retired yet: the caller applies the messages after this call.
        for i in 0..messages.len() {
            unwritten.take(i);
        }
        self.inbox_append(messages)
    }

    /// Retires inbox messages.
    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture;

    /// Every inbox message not yet retired, oldest first.
    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Appends outbound bus messages to the outbox in one write; resolves to their sequence
    /// numbers, in order.
    fn outbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>>;

    /// Removes a delivered outbox message.
    fn outbox_remove(&self, seq: u64) -> StoreFuture;

    /// Every outbox message not yet delivered, oldest first.
    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OfflineLimits {
        OfflineLimits {
            max_callbacks: 3,
            max_ims: 2,
        }
    }

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::check_store(&memory::MemoryStore::new(limits())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_conforms_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = embedded::EmbeddedStore::open(
                dir.path(),
                limits(),
                1 << 20,
                crate::metrics::commit_histogram(),
            )
            .expect("open");
            conformance::check_store(&store).await;
            store
                .set_login(
                    "kept",
                    TermType::Pc,
                    Some(LoginRecord {
                        code: "c".into(),
                        device_token: String::new(),
                        login: true,
                    }),
                )
                .await
                .expect("set");
            store
                .store_offline(vec![OfflineWrite {
                    uid: Arc::from("kept"),
                    term: TermType::Pc,
                    message: offline::OfflineMessage::Im {
                        flag: 1,
                        body: Bytes::from("still here"),
                    },
                }])
                .await
                .expect("store");
            store
                .inbox_append(vec![("push".into(), Bytes::from("pending"))])
                .await
                .expect("inbox");
        }
        // The writer thread ends once the store is dropped; give it a moment to release the file.
        let mut attempts = 0;
        let store = loop {
            match embedded::EmbeddedStore::open(
                dir.path(),
                limits(),
                1 << 20,
                crate::metrics::commit_histogram(),
            ) {
                Ok(s) => break s,
                Err(e) if attempts < 250 => {
                    attempts += 1;
                    tracing::debug!(error = %e, "store still open, retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("store did not reopen: {e}"),
            }
        };
        assert_eq!(
            store
                .login("kept", TermType::Pc)
                .await
                .expect("read")
                .map(|r| r.code),
            Some("c".to_owned())
        );
        let o = store.offline("kept", TermType::Pc).await.expect("read");
        assert_eq!(
            o.ims.front().map(|i| i.body.clone()),
            Some(Bytes::from("still here"))
        );
        let inbox = store.inbox_load().await.expect("inbox");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].body, Bytes::from("pending"));
    }
}
