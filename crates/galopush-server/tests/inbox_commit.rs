//! The embedded inbox applies a message while its append is being committed (issue 16):
//! `/pub` still answers only once the message is durable, but its deliveries may go out before.
//! Here the store's commit is held open by the test, so "before" is certain, not a race:
//! - the delivery goes out while the commit is held, and the answer waits for the commit;
//! - a message applied and settled before its commit is retired once, after the commit, and is
//!   not applied again;
//! - a commit that fails is answered as an error; what went out stays out, and the message is
//!   neither retired nor taken again (the publisher sends it again: a duplicate, not a loss);
//! - messages are applied in the order they were accepted, and kept in that order;
//! - a message retired before the store takes it for writing is never written: a request all
//!   of whose messages are so is answered at once, without its commit.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};
use galopush_server::bus::embedded::{EmbeddedInbox, InboxSettings};
use galopush_server::bus::{AcceptError, Gate, Intake, Topic};
use galopush_server::link::{CometCommand, CometLink, Delivery, Outcome, SessionInfo, Settle};
use galopush_server::metrics::Metrics;
use galopush_server::router::{CometIdx, Router};
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;
use galopush_server::store::{
    LoggedIn, LoginRecord, Offline, OfflineWrite, QueuedMessage, Store, StoreError, StoreFuture,
    StoredKey, Unwritten,
};
use tokio::sync::{Notify, watch};

/// Upper bound for what should happen at once; generous for a loaded machine.
const SOON: Duration = Duration::from_secs(15);

/// The memory store, whose inbox appends commit only when the test says so (`Some(true)`) or
/// fail (`Some(false)`), whose offline writes fail on demand, and which records the inbox
/// deletes. With `takes_at_commit`, it takes the messages of an append when the commit is let
/// go (as the embedded store takes them when it builds its transaction) instead of at the call.
struct Gated {
    inner: Arc<MemoryStore>,
    takes_at_commit: bool,
    commit: watch::Sender<Option<bool>>,
    offline_fails: AtomicBool,
    removed: Mutex<Vec<u64>>,
}

#[async_trait]
impl Store for Gated {
    async fn login(&self, uid: &str, term: TermType) -> Result<Option<LoginRecord>, StoreError> {
        self.inner.login(uid, term).await
    }
    async fn logged_in(&self, uids: &[&str]) -> Result<Vec<TermMask>, StoreError> {
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
        if self.offline_fails.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Unavailable("test outage".into())) });
        }
        self.inner.store_offline(writes)
    }
    fn offline(&self, uid: &str, term: TermType) -> StoreFuture<Offline> {
        self.inner.offline(uid, term)
    }
    fn remove_offline(&self, keys: Vec<StoredKey>) -> StoreFuture {
        self.inner.remove_offline(keys)
    }
    fn inbox_append(&self, messages: Vec<(String, Bytes)>) -> StoreFuture<Vec<u64>> {
        // Put in order at the call, as every store does; kept only if the commit succeeds.
        let appended = self.inner.inbox_append(messages);
        let mut commit = self.commit.subscribe();
        let inner = self.inner.clone();
        Box::pin(async move {
            let seqs = appended.await?;
            let outcome = *commit
                .wait_for(Option::is_some)
                .await
                .map_err(|_| StoreError::Unavailable("test over".into()))?;
            if outcome == Some(true) {
                Ok(seqs)
            } else {
                inner.inbox_remove(seqs).await?;
                Err(StoreError::Unavailable(
                    "the test failed this commit".into(),
                ))
            }
        })
    }
    fn inbox_append_unless_retired(
        &self,
        messages: Vec<(String, Bytes)>,
        unwritten: Arc<Unwritten>,
    ) -> StoreFuture<Vec<u64>> {
        if !self.takes_at_commit {
            for i in 0..messages.len() {
                unwritten.take(i);
            }
            return self.inbox_append(messages);
        }
        let mut commit = self.commit.subscribe();
        let inner = self.inner.clone();
        Box::pin(async move {
            let outcome = *commit
                .wait_for(Option::is_some)
                .await
                .map_err(|_| StoreError::Unavailable("test over".into()))?;
            let taken: Vec<bool> = (0..messages.len()).map(|i| unwritten.take(i)).collect();
            if outcome != Some(true) {
                return Err(StoreError::Unavailable(
                    "the test failed this commit".into(),
                ));
            }
            let written = messages
                .into_iter()
                .zip(&taken)
                .filter_map(|(m, taken)| taken.then_some(m))
                .collect();
            let mut seqs = inner.inbox_append(written).await?.into_iter();
            // An unwritten message's number is never used.
            Ok(taken
                .iter()
                .map(|&t| if t { seqs.next().unwrap_or(0) } else { 0 })
                .collect())
        })
    }
    fn inbox_remove(&self, seqs: Vec<u64>) -> StoreFuture {
        self.removed.lock().expect("lock").extend(&seqs);
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

/// A comet holding ann's Android terminal; keeps what it is sent.
#[derive(Default)]
struct Comet {
    delivered: Mutex<Vec<Delivery>>,
    arrived: Notify,
}

impl CometLink for Comet {
    fn send(&self, commands: Vec<CometCommand>) {
        for c in commands {
            if let CometCommand::Deliver(d) = c {
                self.delivered.lock().expect("lock").push(d);
                self.arrived.notify_waiters();
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        vec![SessionInfo {
            session: 1,
            uid: Arc::from("ann"),
            term: TermType::Android,
            token: Arc::from("c"),
        }]
    }
}

impl Comet {
    /// Waits until `n` deliveries have arrived; returns them all.
    async fn deliveries(&self, n: usize) -> Vec<Delivery> {
        tokio::time::timeout(SOON, async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let delivered = self.delivered.lock().expect("lock");
                    if delivered.len() >= n {
                        return delivered.clone();
                    }
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} deliveries in time"))
    }
}

struct World {
    store: Arc<Gated>,
    router: Arc<Router>,
    comet: Arc<Comet>,
    idx: CometIdx,
    inbox: Arc<EmbeddedInbox>,
}

async fn world() -> World {
    world_taking(false).await
}

async fn world_taking(takes_at_commit: bool) -> World {
    let store = Arc::new(Gated {
        inner: Arc::new(MemoryStore::new(OfflineLimits::default())),
        takes_at_commit,
        commit: watch::channel(None).0,
        offline_fails: AtomicBool::new(false),
        removed: Mutex::new(Vec::new()),
    });
    store
        .set_login("ann", TermType::Android, Some(common::logged_in("c", "")))
        .await
        .expect("login");
    let comet = Arc::new(Comet::default());
    let (router, idx) = common::router_with(store.clone(), comet.clone());
    let settings = InboxSettings {
        durable: true,
        max_in_flight: 64,
        inbox_pending: 64,
    };
    let inbox = EmbeddedInbox::start(store.clone(), router.clone(), settings, Gate::opened())
        .await
        .expect("inbox");
    World {
        store,
        router,
        comet,
        idx,
        inbox,
    }
}

fn push(body: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"receivers":[{{"uid":"ann","termtype":1}}],"flag":0,"body":"{body}"}}"#
    ))
}

impl World {
    /// `/pub?topic=push` of `bodies` (one request), answered in a task of its own.
    fn publish(&self, bodies: &[&str]) -> tokio::task::JoinHandle<Result<(), AcceptError>> {
        let inbox = self.inbox.clone();
        let bodies = bodies.iter().map(|b| push(b)).collect();
        tokio::spawn(async move { inbox.accept("push", bodies).await })
    }

    fn ack(&self, d: &Delivery) {
        let settle = Settle {
            id: d.id,
            outcome: Outcome::Acked,
        };
        self.router.settled(self.idx, settle);
    }

    /// Shuts the inbox down (retirements committed) and returns what it deleted.
    async fn drained(&self) -> Vec<u64> {
        self.inbox.drain(SOON).await;
        self.store.removed.lock().expect("lock").clone()
    }

    /// The bodies the inbox holds, in its order.
    async fn kept(&self) -> Vec<Bytes> {
        let inbox = self.store.inbox_load().await.expect("inbox");
        inbox.into_iter().map(|m| m.body).collect()
    }

    fn metrics(&self) -> &Metrics {
        self.router.metrics()
    }
}

#[tokio::test]
async fn a_message_goes_out_before_its_commit_and_is_retired_once_after_it() {
    let w = world().await;
    let answer = w.publish(&["first"]);
    let delivered = w.comet.deliveries(1).await;
    assert_eq!(delivered[0].body, Bytes::from("first"));
    assert!(!answer.is_finished(), "no answer before the commit");
    // Acked while the commit is still held: the retirement waits for its sequence number.
    w.ack(&delivered[0]);
    w.store.commit.send_replace(Some(true));
    answer.await.expect("task").expect("accepted once durable");
    assert_eq!(w.drained().await, [1], "deleted once, after its commit");
    assert_eq!(
        w.comet.delivered.lock().expect("lock").len(),
        1,
        "applied once"
    );
    assert!(w.store.inbox_load().await.expect("inbox").is_empty());
    let push = w.metrics().topic(Topic::Push);
    assert_eq!(push.received.get(), 1);
    assert_eq!(push.retired.get(), 1);
    assert_eq!(push.requeued.get(), 0);
    assert_eq!(w.metrics().inbox_pending.get(), 0);
}

#[tokio::test]
async fn a_message_acked_after_its_commit_is_retired_once() {
    let w = world().await;
    let answer = w.publish(&["late ack"]);
    let delivered = w.comet.deliveries(1).await;
    w.store.commit.send_replace(Some(true));
    answer.await.expect("task").expect("accepted");
    w.ack(&delivered[0]);
    assert_eq!(w.drained().await, [1]);
    assert_eq!(w.comet.delivered.lock().expect("lock").len(), 1);
    assert_eq!(w.metrics().topic(Topic::Push).retired.get(), 1);
}

#[tokio::test]
async fn a_failed_commit_is_an_error_and_the_message_is_neither_retired_nor_taken_again() {
    let w = world().await;
    let answer = w.publish(&["not kept"]);
    let delivered = w.comet.deliveries(1).await;
    w.store.commit.send_replace(Some(false));
    let refused = answer.await.expect("task");
    assert!(
        matches!(refused, Err(AcceptError::Unavailable(_))),
        "{refused:?}"
    );
    // The delivery that went out settles; nothing is deleted, nothing applied again.
    w.ack(&delivered[0]);
    assert_eq!(w.drained().await, Vec::<u64>::new());
    assert_eq!(w.comet.delivered.lock().expect("lock").len(), 1);
    assert!(w.store.inbox_load().await.expect("inbox").is_empty());
    let push = w.metrics().topic(Topic::Push);
    assert_eq!(push.retired.get(), 0);
    assert_eq!(push.requeued.get(), 0);
    assert_eq!(w.metrics().inbox_pending.get(), 0, "its inbox slot is free");
}

#[tokio::test]
async fn a_failed_commit_whose_delivery_failed_is_not_requeued() {
    let w = world().await;
    let answer = w.publish(&["failed twice"]);
    let delivered = w.comet.deliveries(1).await;
    w.store.commit.send_replace(Some(false));
    assert!(answer.await.expect("task").is_err());
    // The terminal did not ack, and storing it offline fails too: the message's ticket fails,
    // which would take it again — but it was never accepted.
    w.store.offline_fails.store(true, Ordering::SeqCst);
    let settle = Settle {
        id: delivered[0].id,
        outcome: Outcome::Failed,
    };
    w.router.settled(w.idx, settle);
    assert_eq!(w.drained().await, Vec::<u64>::new());
    assert_eq!(w.comet.delivered.lock().expect("lock").len(), 1);
    assert_eq!(
        w.metrics().store_errors.get(),
        1,
        "the offline write failed"
    );
    assert_eq!(w.metrics().topic(Topic::Push).requeued.get(), 0);
}

#[tokio::test]
async fn messages_are_applied_and_kept_in_the_order_they_were_accepted() {
    let w = world().await;
    let mut answers = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..6 {
        let one = format!("single {i}");
        answers.push(w.publish(&[&one]));
        // Each request is taken before the next is sent, as a publisher awaiting nothing
        // would see if its requests arrived one after the other.
        w.comet.deliveries(bodies.len() + 1).await;
        bodies.push(one);
    }
    let batch: Vec<String> = (0..4).map(|i| format!("batch {i}")).collect();
    let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
    answers.push(w.publish(&refs));
    bodies.extend(batch);
    // Every one applied while no commit has happened yet, in acceptance order.
    let delivered = w.comet.deliveries(bodies.len()).await;
    let got: Vec<Bytes> = delivered.iter().map(|d| d.body.clone()).collect();
    let want: Vec<Bytes> = bodies.iter().map(|b| Bytes::from(b.clone())).collect();
    assert_eq!(got, want);
    w.store.commit.send_replace(Some(true));
    for a in answers {
        a.await.expect("task").expect("accepted");
    }
    // The inbox keeps them in the same order, which a replay after a crash applies.
    let kept = w.kept().await;
    let want_kept: Vec<Bytes> = bodies.iter().map(|b| push(b)).collect();
    assert_eq!(kept, want_kept);
    for d in &delivered {
        w.ack(d);
    }
    let mut removed = w.drained().await;
    removed.sort_unstable();
    assert_eq!(removed, (1..=10).collect::<Vec<u64>>(), "each deleted once");
    assert_eq!(w.comet.delivered.lock().expect("lock").len(), bodies.len());
}

#[tokio::test]
async fn a_request_all_acked_before_its_write_is_taken_is_answered_without_writing() {
    let w = world_taking(true).await;
    let answer = w.publish(&["quick one", "quick two"]);
    let delivered = w.comet.deliveries(2).await;
    w.ack(&delivered[0]);
    w.ack(&delivered[1]);
    // The commit is still held: the answer comes from the acks.
    tokio::time::timeout(SOON, answer)
        .await
        .expect("answered before any commit")
        .expect("task")
        .expect("accepted: every message is done");
    w.store.commit.send_replace(Some(true));
    assert_eq!(w.drained().await, Vec::<u64>::new(), "nothing to delete");
    assert!(w.store.inbox_load().await.expect("inbox").is_empty());
    assert_eq!(w.comet.delivered.lock().expect("lock").len(), 2);
    let push = w.metrics().topic(Topic::Push);
    assert_eq!(push.retired.get(), 2);
    assert_eq!(w.metrics().inbox_unwritten.get(), 2);
    assert_eq!(w.metrics().inbox_pending.get(), 0);
}

#[tokio::test]
async fn only_the_messages_not_yet_retired_are_written_and_later_deleted() {
    let w = world_taking(true).await;
    let answer = w.publish(&["acked early", "acked late"]);
    let delivered = w.comet.deliveries(2).await;
    w.ack(&delivered[0]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!answer.is_finished(), "one message still needs its write");
    w.store.commit.send_replace(Some(true));
    answer.await.expect("task").expect("accepted once durable");
    assert_eq!(
        w.kept().await,
        [push("acked late")],
        "only the one not done is written"
    );
    w.ack(&delivered[1]);
    assert_eq!(w.drained().await, [1], "deleted once: the written one");
    assert!(w.store.inbox_load().await.expect("inbox").is_empty());
    assert_eq!(w.metrics().topic(Topic::Push).retired.get(), 2);
    assert_eq!(w.metrics().inbox_unwritten.get(), 1);
}
