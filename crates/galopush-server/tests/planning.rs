//! Planning a down-message asks the store which terminal types are logged in only for
//! receivers with a wanted type that is not live, and when that question fails nothing of the
//! message goes out (it is retried whole, so live terminals do not get it twice).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};
use galopush_server::bus::{Retire, Ticket, Topic};
use galopush_server::link::{CometCommand, CometLink, SessionInfo};
use galopush_server::router::Router;
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;
use galopush_server::store::{
    LoggedIn, LoginRecord, Offline, OfflineWrite, QueuedMessage, Store, StoreError, StoreFuture,
    StoredKey,
};

/// The memory store, counting the `logged_in` questions and failing them on demand.
struct Watched {
    inner: MemoryStore,
    questions: AtomicUsize,
    failing: AtomicBool,
}

#[async_trait]
impl Store for Watched {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        self.inner.login(uid, term).await
    }
    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
        self.questions.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test outage".into()));
        }
        self.inner.logged_in(uids).await
    }
    fn set_login(&self, uid: &str, term: TermType, record: Option<LoginRecord>) -> StoreFuture {
        self.inner.set_login(uid, term, record)
    }
    fn log_in(&self, uid: &str, term: TermType, record: LoginRecord) -> StoreFuture<LoggedIn> {
        self.inner.log_in(uid, term, record)
    }
    fn forget_device_token(&self, uid: &str, term: TermType, token: &str) -> StoreFuture {
        self.inner.forget_device_token(uid, term, token)
    }
    fn store_offline(&self, writes: Vec<OfflineWrite>) -> StoreFuture {
        self.inner.store_offline(writes)
    }
    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        self.inner.offline(uid, term)
    }
    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        self.inner.remove_offline(keys)
    }
    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.inner.inbox_append(messages)
    }
    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture {
        self.inner.inbox_remove(seqs)
    }
    async fn inbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.inner.inbox_load().await
    }
    fn outbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        self.inner.outbox_append(messages)
    }
    fn outbox_remove(&self, seq: u64) -> StoreFuture {
        self.inner.outbox_remove(seq)
    }
    async fn outbox_load(&self) -> Result<Vec<QueuedMessage>, StoreError> {
        self.inner.outbox_load().await
    }
}

/// A comet holding "live" on Android; records what it is sent.
#[derive(Default)]
struct Comet {
    delivered: Mutex<usize>,
}

impl CometLink for Comet {
    fn send(&self, commands: Vec<CometCommand>) {
        let n = commands
            .iter()
            .filter(|c| matches!(c, CometCommand::Deliver(_)))
            .count();
        *self.delivered.lock().expect("lock") += n;
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        vec![SessionInfo {
            session: 1,
            uid: Arc::from("live"),
            term: TermType::Android,
            token: Arc::from("t"),
        }]
    }
}

/// Records whether the message was retired or requeued.
struct Fate(Arc<Mutex<Option<&'static str>>>);

impl Retire for Fate {
    fn retire(self: Box<Self>) {
        *self.0.lock().expect("lock") = Some("retired");
    }
    fn requeue(self: Box<Self>) {
        *self.0.lock().expect("lock") = Some("requeued");
    }
}

struct Setup {
    router: Arc<Router>,
    store: Arc<Watched>,
    comet: Arc<Comet>,
}

async fn setup() -> Setup {
    let store = Arc::new(Watched {
        inner: MemoryStore::new(OfflineLimits::default()),
        questions: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
    });
    store
        .set_login("away", TermType::Android, Some(common::logged_in("c", "")))
        .await
        .expect("login");
    let comet = Arc::new(Comet::default());
    let (router, _) = common::router_with(store.clone(), comet.clone());
    Setup {
        router,
        store,
        comet,
    }
}

async fn push(router: &Router, receivers: &str) -> Option<&'static str> {
    let fate = Arc::new(Mutex::new(None));
    let json = format!(r#"{{"receivers":[{receivers}],"flag":0,"body":"hi"}}"#);
    let ticket = Ticket::new(Fate(fate.clone()));
    router.apply(Topic::Push, json.as_bytes(), ticket).await;
    // The ticket's clones live on in deliveries in flight; report what is known now.
    *fate.lock().expect("lock")
}

#[tokio::test]
async fn a_push_to_live_terminals_only_asks_the_store_nothing() {
    let s = setup().await;
    push(&s.router, r#"{"uid":"live","termtype":1}"#).await;
    assert_eq!(*s.comet.delivered.lock().expect("lock"), 1);
    assert_eq!(s.store.questions.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_push_to_an_absent_terminal_asks_once_and_stores_it() {
    let s = setup().await;
    push(
        &s.router,
        r#"{"uid":"live","termtype":1},{"uid":"away","termtype":1},{"uid":"nobody","termtype":1}"#,
    )
    .await;
    assert_eq!(*s.comet.delivered.lock().expect("lock"), 1);
    assert_eq!(s.store.questions.load(Ordering::SeqCst), 1);
    let stored = s
        .store
        .offline("away", TermType::Android)
        .await
        .expect("read");
    assert_eq!(stored.push.map(|p| p.count), Some(1));
}

#[tokio::test]
async fn when_the_store_cannot_answer_nothing_goes_out_and_the_message_is_requeued() {
    let s = setup().await;
    s.store.failing.store(true, Ordering::SeqCst);
    let fate = push(
        &s.router,
        r#"{"uid":"live","termtype":1},{"uid":"away","termtype":1}"#,
    )
    .await;
    assert_eq!(*s.comet.delivered.lock().expect("lock"), 0);
    assert_eq!(fate, Some("requeued"));
}
