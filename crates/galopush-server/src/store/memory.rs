//! The memory store: everything in process memory, lost on exit. For tests and demos only
//! (`store.kind = "memory"`).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};
use parking_lot::Mutex;

use super::{
    LoggedIn, LoginRecord, Offline, OfflineLimits, OfflineWrite, QueuedMessage, Store, StoreError,
    StoreFuture, StoredKey, UserLogins, resolved,
};

/// A [`Store`] in memory.
#[derive(Default)]
pub struct MemoryStore {
    limits: OfflineLimits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    logins: HashMap<String, UserLogins>,
    offline: HashMap<(String, TermType), Offline>,
    inbox: BTreeMap<u64, (String, Bytes)>,
    outbox: BTreeMap<u64, (String, Bytes)>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl MemoryStore {
    pub fn new(limits: OfflineLimits) -> MemoryStore {
        MemoryStore {
            limits,
            state: Mutex::default(),
        }
    }
}

fn queued(map: &BTreeMap<u64, (String, Bytes)>) -> Vec<QueuedMessage> {
    map.iter()
        .map(|(seq, (topic, body))| QueuedMessage {
            seq: *seq,
            topic: topic.clone(),
            body: body.clone(),
        })
        .collect()
}

#[async_trait]
impl Store for MemoryStore {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .logins
            .get(uid)
            .and_then(|l| l.get(term).cloned()))
    }

    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
        let state = self.state.lock();
        Ok(uids
            .iter()
            .map(|uid| state.logins.get(*uid).map_or(TermMask(0), UserLogins::mask))
            .collect())
    }

    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture {
        let mut state = self.state.lock();
        match record {
            Some(record) => state
                .logins
                .entry(uid.to_owned())
                .or_default()
                .set(term, Some(record)),
            None => {
                if let Some(l) = state.logins.get_mut(uid) {
                    l.set(term, None);
                    if l.is_empty() {
                        state.logins.remove(uid);
                    }
                }
            }
        }
        resolved(Ok(()))
    }

    fn log_in(&self, uid: &str, term: TermType, record: LoginRecord) -> StoreFuture<LoggedIn> {
        let mut state = self.state.lock();
        let logins = state.logins.entry(uid.to_owned()).or_default();
        let replaced = logins.get(term).cloned();
        logins.set(term, Some(record));
        resolved(Ok(LoggedIn {
            replaced,
            durable: resolved(Ok(())),
        }))
    }

    fn forget_device_token(&self, uid: &str, term: TermType, token: &str) -> StoreFuture {
        let mut state = self.state.lock();
        if let Some(logins) = state.logins.get_mut(uid)
            && let Some(record) = logins.get(term).filter(|r| r.device_token == token)
        {
            let record = LoginRecord {
                device_token: String::new(),
                ..record.clone()
            };
            logins.set(term, Some(record));
        }
        resolved(Ok(()))
    }

    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture {
        let mut state = self.state.lock();
        for w in writes {
            let id = state.next_id();
            state
                .offline
                .entry((w.uid.to_string(), w.term))
                .or_default()
                .apply(&w.message, id, self.limits);
        }
        resolved(Ok(()))
    }

    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        resolved(Ok(self
            .state
            .lock()
            .offline
            .get(&(uid.to_owned(), term))
            .cloned()
            .unwrap_or_default()))
    }

    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        let mut state = self.state.lock();
        for k in keys {
            let slot = (k.uid.to_string(), k.term);
            if let Some(o) = state.offline.get_mut(&slot) {
                o.remove(&k.item);
                if o.is_empty() {
                    state.offline.remove(&slot);
                }
            }
        }
        resolved(Ok(()))
    }

    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        let mut state = self.state.lock();
        let seqs = messages
            .into_iter()
            .map(|m| {
                let seq = state.next_id();
                state.inbox.insert(seq, m);
                seq
            })
            .collect();
        resolved(Ok(seqs))
    }

    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture {
        let mut state = self.state.lock();
        for s in seqs {
            state.inbox.remove(&s);
        }
        resolved(Ok(()))
    }

    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        Ok(queued(&self.state.lock().inbox))
    }

    fn outbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        let mut state = self.state.lock();
        let seqs = messages
            .into_iter()
            .map(|message| {
                let seq = state.next_id();
                state.outbox.insert(seq, message);
                seq
            })
            .collect();
        resolved(Ok(seqs))
    }

    fn outbox_remove(&self, seq: u64) -> StoreFuture {
        self.state.lock().outbox.remove(&seq);
        resolved(Ok(()))
    }

    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        Ok(queued(&self.state.lock().outbox))
    }
}
