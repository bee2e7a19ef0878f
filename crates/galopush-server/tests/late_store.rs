//! Several routers: a comet sends a terminal's REGISTER to one router (by a hash of the uid),
//! which reads the terminal's stored messages; the other routers hear of the session a moment
//! later (`opened`). A message another router planned in between saw the terminal as not live
//! and stored it after that read — the routers' writes to the shared store are not ordered with
//! each other. Found by the chaos run (RELIABILITY.md): such a message waited in the store until
//! the terminal's next REGISTER. Now the router that stored it sends it when it hears of the
//! session.
//!
//! The same after a router's restart: it replays its inbox as it starts, before the comets
//! (which kept their terminals) have joined it again, so a message for a terminal online on a
//! comet is stored. Found by the chaos run's burst-then-kill fault (RELIABILITY.md); the router
//! now sends such messages when the comet joins with the session.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_server::bus::{Ticket, Topic};
use galopush_server::link::{CometCommand, CometInfo, CometLink, Registration, SessionInfo};
use galopush_server::store::Store;
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;

/// A comet with `live` sessions (none by default); records the bodies delivered to it.
#[derive(Default)]
struct Comet {
    live: Vec<SessionInfo>,
    delivered: Mutex<Vec<Bytes>>,
}

impl Comet {
    /// Waits until something was delivered, then checks it was `body` alone.
    async fn wait_delivered(&self, body: &'static str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.delivered.lock().expect("lock").is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stored message {body:?} never reached the live session"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*self.delivered.lock().expect("lock"), [Bytes::from(body)]);
    }
}

impl CometLink for Comet {
    fn send(&self, commands: Vec<CometCommand>) {
        for c in commands {
            if let CometCommand::Deliver(d) = c {
                self.delivered.lock().expect("lock").push(d.body);
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        self.live.clone()
    }
}

#[tokio::test]
async fn a_message_stored_by_another_router_during_a_register_reaches_the_session() {
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    store
        .set_login("bo", TermType::Android, Some(common::logged_in("c", "")))
        .await
        .expect("login");
    let comet = Arc::new(Comet::default());
    let (owner, owner_comet) = common::router_with(store.clone(), comet.clone());
    let (other, other_comet) = common::router_with(store.clone(), comet.clone());
    let session = SessionInfo {
        session: 7,
        uid: Arc::from("bo"),
        term: TermType::Android,
        token: Arc::from("c"),
    };
    // The other router has heard of another router's sessions before: there are several.
    let earlier = SessionInfo {
        session: 6,
        uid: Arc::from("al"),
        term: TermType::Pc,
        token: Arc::from("a"),
    };
    other.opened(other_comet, &earlier);

    // The owner registers bo: nothing is stored yet.
    match owner.register(owner_comet, session.clone()).await {
        Ok(Registration::Accepted { stored }) => assert!(stored.is_empty()),
        other => panic!("expected the REGISTER accepted, got {other:?}"),
    }
    // The other router has not heard of the session: its push is stored.
    let push = serde_json::json!({
        "receivers": [{"uid": "bo", "termtype": 1}], "flag": 0, "body": "while registering"
    })
    .to_string();
    other
        .apply(Topic::Push, push.as_bytes(), Ticket::detached())
        .await;
    assert!(comet.delivered.lock().expect("lock").is_empty());
    // Now it hears of the session: the stored push goes to it.
    other.opened(other_comet, &session);
    comet.wait_delivered("while registering").await;
}

#[tokio::test]
async fn a_session_another_router_registered_gets_nothing_when_this_one_stored_nothing() {
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    // A push stored long before, by no router of these: the owner's REGISTER sends it.
    store
        .set_login("cy", TermType::Ios, Some(common::logged_in("c", "")))
        .await
        .expect("login");
    let comet = Arc::new(Comet::default());
    let (owner, owner_comet) = common::router_with(store.clone(), comet.clone());
    let (other, other_comet) = common::router_with(store.clone(), comet.clone());
    let push = serde_json::json!({
        "receivers": [{"uid": "cy", "termtype": 2}], "flag": 0, "body": "stored before"
    })
    .to_string();
    owner
        .apply(Topic::Push, push.as_bytes(), Ticket::detached())
        .await;
    let session = SessionInfo {
        session: 8,
        uid: Arc::from("cy"),
        term: TermType::Ios,
        token: Arc::from("c"),
    };
    match owner.register(owner_comet, session.clone()).await {
        Ok(Registration::Accepted { stored }) => assert_eq!(stored.len(), 1),
        other => panic!("expected the REGISTER accepted, got {other:?}"),
    }
    // The other router stored nothing for cy: hearing of the session sends nothing again.
    other.opened(other_comet, &session);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(comet.delivered.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_message_stored_before_a_comet_joins_reaches_the_session_it_joins_with() {
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    store
        .set_login("di", TermType::Pc, Some(common::logged_in("d", "")))
        .await
        .expect("login");
    // A router just restarted: one comet is back, the one di is on is not yet.
    let (router, _) = common::router_with(store.clone(), Arc::new(Comet::default()));
    let push = serde_json::json!({
        "receivers": [{"uid": "di", "termtype": 16}], "flag": 0, "body": "replayed before the join"
    })
    .to_string();
    router
        .apply(Topic::Callback, push.as_bytes(), Ticket::detached())
        .await;
    // di's comet joins with the session it kept: the stored callback goes to it.
    let comet = Arc::new(Comet {
        live: vec![SessionInfo {
            session: 9,
            uid: Arc::from("di"),
            term: TermType::Pc,
            token: Arc::from("d"),
        }],
        ..Comet::default()
    });
    let info = CometInfo {
        id: "kept".into(),
        tcp: "127.0.0.1:3".into(),
        ws: "127.0.0.1:4".into(),
        tls: None,
        wss: None,
    };
    router.join(info, comet.clone(), 1).expect("a second comet");
    comet.wait_delivered("replayed before the join").await;
}
