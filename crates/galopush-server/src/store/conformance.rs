//! The behaviour every [`Store`] must have, as one async test suite run against each
//! implementation (memory, embedded, Redis).

use std::sync::Arc;

use bytes::Bytes;
use galopush_protocol::{TermMask, TermType};

use super::offline::OfflineMessage;
use super::{LoginRecord, OfflineKey, OfflineWrite, Store, StoredKey};

fn record(code: &str) -> LoginRecord {
    LoginRecord {
        code: code.into(),
        device_token: format!("dev-{code}"),
        login: true,
    }
}

fn write(uid: &str, term: TermType, message: OfflineMessage) -> OfflineWrite {
    OfflineWrite {
        uid: Arc::from(uid),
        term,
        message,
    }
}

/// Runs every check; `max_callbacks` and `max_ims` must be 3 and 2 in the store under test.
pub async fn check_store(store: &dyn Store) {
    logins(store).await;
    offline(store).await;
    queues(store).await;
}

async fn logins(store: &dyn Store) {
    assert_eq!(
        store.login("u1", TermType::Android).await.expect("read"),
        None
    );
    store
        .set_login("u1", TermType::Android, Some(record("a")))
        .await
        .expect("set");
    store
        .set_login("u1", TermType::Web, Some(record("w")))
        .await
        .expect("set");
    assert_eq!(
        store.login("u1", TermType::Android).await.expect("read"),
        Some(record("a"))
    );
    let all = store.logged_in(&["u1", "nobody"]).await.expect("logged in");
    assert_eq!(
        all,
        [
            TermMask::from(TermType::Android).with(TermType::Web),
            TermMask(0)
        ]
    );
    let mut out = record("a");
    out.login = false;
    store
        .set_login("u1", TermType::Android, Some(out.clone()))
        .await
        .expect("logout");
    assert_eq!(
        store.login("u1", TermType::Android).await.expect("read"),
        Some(out)
    );
    store
        .set_login("u1", TermType::Android, None)
        .await
        .expect("remove");
    assert_eq!(
        store.login("u1", TermType::Android).await.expect("read"),
        None
    );
    assert!(
        store
            .login("u1", TermType::Web)
            .await
            .expect("read")
            .is_some(),
        "other terminal types are untouched"
    );
    log_in(store).await;
    forget_device_token(store).await;
}

/// A dead token is cleared only from a record that still holds it.
async fn forget_device_token(store: &dyn Store) {
    let t = TermType::Ios;
    store
        .set_login("u1", t, Some(record("i")))
        .await
        .expect("set");
    store
        .forget_device_token("u1", t, "an older token")
        .await
        .expect("forget");
    assert_eq!(
        store.login("u1", t).await.expect("read"),
        Some(record("i")),
        "a newer login's token stays"
    );
    store
        .forget_device_token("u1", t, "dev-i")
        .await
        .expect("forget");
    let mut forgotten = record("i");
    forgotten.device_token = String::new();
    assert_eq!(store.login("u1", t).await.expect("read"), Some(forgotten));
    store
        .forget_device_token("nobody", t, "dev-i")
        .await
        .expect("no record: nothing to do");
    assert_eq!(store.login("nobody", t).await.expect("read"), None);
    store.set_login("u1", t, None).await.expect("remove");
}

/// `log_in` answers the record it replaced, and the new one is what a read sees.
async fn log_in(store: &dyn Store) {
    let t = TermType::Pc;
    let first = store.log_in("u1", t, record("p")).await.expect("log in");
    assert_eq!(first.replaced, None);
    first.durable.await.expect("durable");
    let mut again = record("p");
    again.device_token = "new-token".into();
    let second = store.log_in("u1", t, again.clone()).await.expect("log in");
    assert_eq!(second.replaced, Some(record("p")));
    assert!(second.is_repeat("p"), "same code, logged in");
    assert!(!second.is_repeat("q"), "another code");
    second.durable.await.expect("durable");
    assert_eq!(store.login("u1", t).await.expect("read"), Some(again));
    let mut out = record("p");
    out.login = false;
    store
        .set_login("u1", t, Some(out.clone()))
        .await
        .expect("logout");
    let third = store.log_in("u1", t, record("p")).await.expect("log in");
    assert_eq!(third.replaced, Some(out));
    assert!(!third.is_repeat("p"), "a logged-out record is not repeated");
    third.durable.await.expect("durable");
    store.set_login("u1", t, None).await.expect("remove");
}

async fn offline(store: &dyn Store) {
    let t = TermType::Ios;
    assert!(store.offline("u2", t).await.expect("read").is_empty());
    let mut writes = Vec::new();
    for b in ["p1", "p2", "p3"] {
        writes.push(write("u2", t, OfflineMessage::Push { body: b.into() }));
    }
    for b in ["c1", "c2", "c1", "c3", "c4"] {
        writes.push(write("u2", t, OfflineMessage::Callback { body: b.into() }));
    }
    for (i, b) in ["i1", "i2", "i3"].into_iter().enumerate() {
        let flag = (i % 2) as u8;
        writes.push(write(
            "u2",
            t,
            OfflineMessage::Im {
                flag,
                body: b.into(),
            },
        ));
    }
    store.store_offline(writes).await.expect("store");
    let o = store.offline("u2", t).await.expect("read");
    let push = o.push.clone().expect("push stored");
    assert_eq!((push.count, push.body.clone()), (3, Bytes::from("p3")));
    let callbacks: Vec<_> = o.callbacks.iter().map(|c| c.body.clone()).collect();
    assert_eq!(
        callbacks,
        vec!["c2", "c3", "c4"],
        "deduplicated, oldest dropped"
    );
    let ims: Vec<_> = o.ims.iter().map(|c| (c.flag, c.body.clone())).collect();
    assert_eq!(ims, vec![(1, Bytes::from("i2")), (0, Bytes::from("i3"))]);
    assert!(
        store
            .offline("u2", TermType::Android)
            .await
            .expect("read")
            .is_empty()
    );

    // A push stored after the one being delivered survives its ack.
    store
        .store_offline(vec![write(
            "u2",
            t,
            OfflineMessage::Push { body: "p4".into() },
        )])
        .await
        .expect("store");
    let uid: Arc<str> = Arc::from("u2");
    let key = |item| StoredKey {
        uid: uid.clone(),
        term: t,
        item,
    };
    store
        .remove_offline(vec![
            key(OfflineKey::Push {
                version: push.version,
                count: push.count,
            }),
            key(OfflineKey::Callback {
                id: o.callbacks[0].id,
            }),
            key(OfflineKey::Im { id: o.ims[1].id }),
        ])
        .await
        .expect("remove");
    let o2 = store.offline("u2", t).await.expect("read");
    let p = o2.push.clone().expect("newer push kept");
    assert_eq!((p.count, p.body.clone()), (1, Bytes::from("p4")));
    assert_eq!(o2.callbacks.len(), 2);
    assert_eq!(o2.ims.len(), 1);
    assert_eq!(o2.ims[0].body, Bytes::from("i2"));

    let mut rest = vec![key(OfflineKey::Push {
        version: p.version,
        count: 1,
    })];
    rest.extend(
        o2.callbacks
            .iter()
            .map(|c| key(OfflineKey::Callback { id: c.id })),
    );
    rest.push(key(OfflineKey::Im { id: o2.ims[0].id }));
    store.remove_offline(rest).await.expect("remove");
    assert!(store.offline("u2", t).await.expect("read").is_empty());
}

async fn queues(store: &dyn Store) {
    let seqs = store
        .inbox_append(vec![
            ("push".into(), Bytes::from("a")),
            ("callback".into(), Bytes::from("b")),
            ("push".into(), Bytes::from("c")),
        ])
        .await
        .expect("append");
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence increases");
    store.inbox_remove(vec![seqs[1]]).await.expect("remove");
    let left = store.inbox_load().await.expect("load");
    let bodies: Vec<_> = left
        .iter()
        .map(|m| (m.topic.as_str(), m.body.clone()))
        .collect();
    assert_eq!(
        bodies,
        vec![("push", Bytes::from("a")), ("push", Bytes::from("c"))]
    );
    store
        .inbox_remove(vec![seqs[0], seqs[2]])
        .await
        .expect("remove");
    assert!(store.inbox_load().await.expect("load").is_empty());

    // Several appends, removals across them in any order, a removal repeated: what is left
    // comes back in sequence order with its own numbers.
    let mut all = Vec::new();
    for batch in [&["1", "2", "3"][..], &["4"], &["5", "6"]] {
        let messages = batch
            .iter()
            .map(|b| ("push".to_owned(), Bytes::from(b.to_string())))
            .collect();
        all.extend(store.inbox_append(messages).await.expect("append"));
    }
    store
        .inbox_remove(vec![all[5], all[0], all[3]])
        .await
        .expect("remove");
    store
        .inbox_remove(vec![all[0], all[4]])
        .await
        .expect("remove again");
    let left = store.inbox_load().await.expect("load");
    let left: Vec<_> = left.iter().map(|m| (m.seq, m.body.clone())).collect();
    assert_eq!(
        left,
        vec![(all[1], Bytes::from("2")), (all[2], Bytes::from("3"))]
    );
    store
        .inbox_remove(vec![all[1], all[2]])
        .await
        .expect("remove");
    assert!(store.inbox_load().await.expect("load").is_empty());

    let s1 = store
        .outbox_append(vec![("msgUpward".into(), Bytes::from("x"))])
        .await
        .expect("append")[0];
    let s2 = store
        .outbox_append(vec![("back".into(), Bytes::from("y"))])
        .await
        .expect("append")[0];
    assert!(s1 < s2);
    store.outbox_remove(s1).await.expect("remove");
    let left = store.outbox_load().await.expect("load");
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].seq, left[0].topic.as_str()), (s2, "back"));
    // Several in one write: in order, each removed on its own.
    let many = store
        .outbox_append(vec![
            ("r".into(), Bytes::from("1")),
            ("r".into(), Bytes::from("2")),
            ("r".into(), Bytes::from("3")),
        ])
        .await
        .expect("append");
    assert!(many.len() == 3 && s2 < many[0] && many[0] < many[1] && many[1] < many[2]);
    store.outbox_remove(many[1]).await.expect("remove");
    let left = store.outbox_load().await.expect("load");
    let bodies: Vec<&[u8]> = left.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, [&b"y"[..], b"1", b"3"]);
    for seq in [many[0], many[2]] {
        store.outbox_remove(seq).await.expect("remove");
    }
    store.outbox_remove(s2).await.expect("remove");
}
