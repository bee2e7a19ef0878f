//! A `userOnlineState` that may have been applied before (replayed from the inbox after a
//! crash, requeued, or redelivered by nsqd) must not kick the terminal that registered with the
//! code it carries: that terminal exists because of the first application. A first delivery
//! kicks as SPEC §5 says, and a redelivery still kicks a terminal that registered with another
//! code.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;
use galopush_server::bus::{PublishError, Publisher, Retire, Ticket, Topic};
use galopush_server::config::{AuthMode, TopicsConfig};
use galopush_server::link::{CometCommand, CometInfo, CometLink, SessionInfo};
use galopush_server::metrics::Metrics;
use galopush_server::router::{Router, RouterSettings};
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;

struct NoBus;

#[async_trait]
impl Publisher for NoBus {
    async fn publish(&self, _topic: &str, _json: Bytes) -> Result<(), PublishError> {
        Ok(())
    }
}

/// A comet holding one Android terminal of "ann" that registered with `token`; records the
/// kicks the router sends it.
struct Comet {
    token: &'static str,
    kicks: Mutex<Vec<KickReason>>,
}

impl CometLink for Comet {
    fn send(&self, commands: Vec<CometCommand>) {
        for c in commands {
            if let CometCommand::Kick { reason, .. } = c {
                self.kicks.lock().expect("lock").push(reason);
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        vec![SessionInfo {
            session: 1,
            uid: Arc::from("ann"),
            term: TermType::Android,
            token: Arc::from(self.token),
        }]
    }
}

struct Delivery {
    redelivered: bool,
}

impl Retire for Delivery {
    fn retire(self: Box<Self>) {}
    fn requeue(self: Box<Self>) {}
    fn redelivered(&self) -> bool {
        self.redelivered
    }
}

/// Applies a login of ann's Android terminal with code "c1" to a router whose comet holds ann
/// registered with `token`; returns the kicks sent.
async fn kicks_after_login(token: &'static str, redelivered: bool) -> Vec<KickReason> {
    let settings = RouterSettings {
        auth_mode: AuthMode::Business,
        topics: TopicsConfig::default(),
    };
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    let router = Router::new(settings, store, Arc::new(NoBus), Arc::new(Metrics::new()));
    let comet = Arc::new(Comet {
        token,
        kicks: Mutex::new(Vec::new()),
    });
    let info = CometInfo {
        id: "c".into(),
        tcp: "127.0.0.1:1".into(),
        ws: "127.0.0.1:2".into(),
        tls: None,
        wss: None,
    };
    router.join(info, comet.clone(), 1).expect("the only comet");
    let login = br#"{"uid":"ann","termtype":1,"code":"c1","deviceToken":"","online":true}"#;
    let ticket = Ticket::new(Delivery { redelivered });
    router.apply(Topic::UserOnlineState, login, ticket).await;
    comet.kicks.lock().expect("lock").clone()
}

#[tokio::test]
async fn a_first_login_kicks_the_live_terminal_even_with_the_same_code() {
    assert_eq!(
        kicks_after_login("c1", false).await,
        [KickReason::RepeatLogin]
    );
}

#[tokio::test]
async fn a_redelivered_login_spares_the_terminal_that_registered_with_its_code() {
    assert_eq!(kicks_after_login("c1", true).await, []);
}

#[tokio::test]
async fn a_redelivered_login_still_kicks_a_terminal_with_another_code() {
    assert_eq!(
        kicks_after_login("old", true).await,
        [KickReason::RepeatLogin]
    );
}
