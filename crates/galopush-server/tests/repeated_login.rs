//! A `userOnlineState` online=true with the code the login record already has, logged in, is
//! not a new login (SPEC §5): it takes the new deviceToken and kicks no one, so a login the
//! business side retried (or the bus replayed, requeued or redelivered) cannot kick the terminal
//! that registered with the first one — nor the other of Android and iOS. A login with another
//! code, or one for a record that is logged out or absent, kicks as before.

mod common;

use std::sync::{Arc, Mutex};

use galopush_protocol::TermType;
use galopush_protocol::message::KickReason;
use galopush_server::bus::{Ticket, Topic};
use galopush_server::link::{CometCommand, CometLink, SessionInfo};
use galopush_server::router::Router;
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;
use galopush_server::store::{LoginRecord, Store};

/// A comet holding ann's Android terminal, registered with `token`, and her iOS terminal;
/// records the kicks the router sends it, by session (1 Android, 2 iOS).
struct Comet {
    token: &'static str,
    kicks: Mutex<Vec<(u64, KickReason)>>,
}

impl CometLink for Comet {
    fn send(&self, commands: Vec<CometCommand>) {
        for c in commands {
            if let CometCommand::Kick { session, reason } = c {
                self.kicks.lock().expect("lock").push((session, reason));
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        let session = |session, term, token: &str| SessionInfo {
            session,
            uid: Arc::from("ann"),
            term,
            token: Arc::from(token),
        };
        vec![
            session(1, TermType::Android, self.token),
            session(2, TermType::Ios, "ios-code"),
        ]
    }
}

struct World {
    router: Arc<Router>,
    store: Arc<MemoryStore>,
    comet: Arc<Comet>,
}

/// A router whose store holds ann's Android record `record` (if any), and whose comet holds ann
/// on Android (registered with `token`) and on iOS.
fn world(record: Option<LoginRecord>, token: &'static str) -> World {
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    drop(store.set_login("ann", TermType::Android, record));
    let comet = Arc::new(Comet {
        token,
        kicks: Mutex::new(Vec::new()),
    });
    let (router, _) = common::router_with(store.clone(), comet.clone());
    World {
        router,
        store,
        comet,
    }
}

impl World {
    /// Applies a login of ann's Android terminal; returns the kicks sent.
    async fn login(&self, code: &str, device_token: &str) -> Vec<(u64, KickReason)> {
        let login = serde_json::json!({
            "uid": "ann", "termtype": 1, "code": code,
            "deviceToken": device_token, "online": true
        })
        .to_string();
        self.router
            .apply(Topic::UserOnlineState, login.as_bytes(), Ticket::detached())
            .await;
        std::mem::take(&mut *self.comet.kicks.lock().expect("lock"))
    }

    async fn record(&self, term: TermType) -> Option<LoginRecord> {
        self.store.login("ann", term).await.expect("read")
    }
}

#[tokio::test]
async fn a_login_with_the_records_code_kicks_no_one_and_takes_the_new_device_token() {
    let w = world(Some(common::logged_in("c1", "old-token")), "c1");
    drop(w.store.set_login(
        "ann",
        TermType::Ios,
        Some(common::logged_in("ios-code", "")),
    ));
    assert_eq!(w.login("c1", "new-token").await, []);
    assert_eq!(
        w.record(TermType::Android).await,
        Some(common::logged_in("c1", "new-token"))
    );
    // Nothing changed for iOS either: its record stays, its terminal was not kicked.
    assert_eq!(
        w.record(TermType::Ios).await,
        Some(common::logged_in("ios-code", ""))
    );
    // The same login again, as a retry or a replay would bring it: still no kick.
    assert_eq!(w.login("c1", "new-token").await, []);
}

#[tokio::test]
async fn a_login_with_another_code_kicks_with_kick_1_and_kick_2() {
    let w = world(Some(common::logged_in("c1", "")), "c1");
    assert_eq!(
        w.login("c2", "").await,
        [
            (1, KickReason::RepeatLogin),
            (2, KickReason::MutualExclusion)
        ]
    );
    assert_eq!(
        w.record(TermType::Android).await,
        Some(common::logged_in("c2", ""))
    );
}

#[tokio::test]
async fn a_login_for_a_logged_out_or_absent_record_is_a_new_login() {
    let mut out = common::logged_in("c1", "");
    out.login = false;
    let w = world(Some(out), "c1");
    assert_eq!(
        w.login("c1", "").await,
        [
            (1, KickReason::RepeatLogin),
            (2, KickReason::MutualExclusion)
        ]
    );
    assert_eq!(
        w.record(TermType::Android).await,
        Some(common::logged_in("c1", ""))
    );

    let w = world(None, "c1");
    assert_eq!(
        w.login("c1", "").await,
        [
            (1, KickReason::RepeatLogin),
            (2, KickReason::MutualExclusion)
        ]
    );
}
