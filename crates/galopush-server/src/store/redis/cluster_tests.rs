//! The Redis store on a real Redis Cluster of three masters, one started for each test and torn
//! down after it ([`RedisCluster`]).

use super::test_cluster::RedisCluster;
use super::tests::{check_order, left_after_conformance, limits, push, raw, record, write};
use super::*;
use crate::store::conformance;

/// The port of the master owning each slot, from `CLUSTER SLOTS`.
async fn owners(cluster: &RedisCluster) -> Vec<u16> {
    let mut conn = raw(&format!("redis://127.0.0.1:{}", cluster.ports()[0])).await;
    let ranges: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Vec<Vec<Value>>>(&mut conn)
        .await
        .expect("cluster slots")
        .into_iter()
        .map(|range| {
            let mut range = range.into_iter();
            let (Some(first), Some(last), Some(master)) =
                (range.next(), range.next(), range.next())
            else {
                panic!("a slot range without its master");
            };
            let master: Vec<Value> = redis::from_redis_value(master).expect("master");
            let mut master = master.into_iter();
            let (Some(host), Some(port)) = (master.next(), master.next()) else {
                panic!("a master without its address");
            };
            (
                redis::from_redis_value(first).expect("first slot"),
                redis::from_redis_value(last).expect("last slot"),
                (
                    redis::from_redis_value(host).expect("host"),
                    redis::from_redis_value(port).expect("port"),
                ),
            )
        })
        .collect();
    let mut owners = vec![0; 16384];
    for (first, last, (_, port)) in ranges {
        for slot in first..=last {
            owners[usize::from(slot)] = port;
        }
    }
    assert!(owners.iter().all(|&p| p != 0), "every slot has a master");
    owners
}

/// Every key under `prefix`, from every node, sorted.
async fn keys_under(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut all = Vec::new();
    for port in cluster.ports() {
        let mut conn = raw(&format!("redis://127.0.0.1:{port}")).await;
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .expect("keys");
        all.extend(found);
    }
    all.sort();
    all
}

#[tokio::test]
async fn a_redis_cluster_store_conforms() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let store = RedisStore::open(&cluster.url(), "galopush:", limits())
        .await
        .expect("open");
    conformance::check_store(&store).await;
    check_order(&store, "u").await;
    // Everything is where the conformance check left it, removed boxes leave no keys behind,
    // and a node holds only keys of its own slots (Redis refuses others).
    let keys = Keys::new("galopush:");
    let mut expected = left_after_conformance("galopush:");
    expected.extend([
        keys.login("u"),
        keys.push("u", TermType::Ios),
        keys.ids("u"),
    ]);
    expected.sort();
    expected.dedup();
    assert_eq!(keys_under(&cluster, "galopush:").await, expected);
}

#[tokio::test]
async fn users_on_every_node_work() {
    let Some(cluster) = RedisCluster::start_or_skip().await else {
        return;
    };
    let store = RedisStore::open(&cluster.url(), "galopush:", limits())
        .await
        .expect("open");
    let keys = Keys::new("galopush:");

    // One user per master, and one whose uid needs escaping.
    let owners = owners(&cluster).await;
    let owner = |uid: &str| owners[usize::from(keys::key_slot(keys.login(uid).as_bytes()))];
    let mut users: Vec<String> = Vec::new();
    for port in cluster.ports() {
        let uid = (0..)
            .map(|i| format!("user-{i}"))
            .find(|uid| owner(uid) == *port)
            .expect("a uid");
        users.push(uid);
    }
    users.push("odd}uid%".into());
    let uids: Vec<&str> = users.iter().map(String::as_str).collect();
    let t = TermType::Android;

    // Logins: queued for every user at once, read back in one call spanning the nodes.
    let sets: Vec<_> = uids
        .iter()
        .map(|uid| store.set_login(uid, t, Some(record(uid))))
        .collect();
    let logged_in = store.logged_in(&uids).await.expect("logged in");
    assert_eq!(logged_in, vec![TermMask::from(t); uids.len()]);
    for set in sets {
        set.await.expect("set");
    }
    // A write and a read of one slot in one batch run as one script call, in call order.
    for uid in &uids {
        let set = store.set_login(uid, TermType::Pc, Some(record("pc")));
        assert_eq!(
            store.login(uid, TermType::Pc).await.expect("login"),
            Some(record("pc"))
        );
        set.await.expect("set");
    }
    for uid in &uids {
        assert_eq!(store.login(uid, t).await.expect("login"), Some(record(uid)));
        // The record lives on the master owning the user's slot.
        let mut node = raw(&format!("redis://127.0.0.1:{}", owner(uid))).await;
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys.login(uid))
            .query_async(&mut node)
            .await
            .expect("exists");
        assert!(exists, "{uid} on {}", owner(uid));
    }

    // Offline messages of each kind, for every user in one call (one batch over the nodes).
    let writes = uids
        .iter()
        .flat_map(|uid| {
            [
                write(uid, t, push(&format!("push for {uid}"))),
                write(
                    uid,
                    t,
                    OfflineMessage::Callback {
                        body: Bytes::from(format!("callback for {uid}")),
                    },
                ),
                write(
                    uid,
                    t,
                    OfflineMessage::Im {
                        flag: 1,
                        body: Bytes::from(format!("im for {uid}")),
                    },
                ),
            ]
        })
        .collect();
    let stored = store.store_offline(writes);
    let reads: Vec<_> = uids.iter().map(|uid| store.offline(uid, t)).collect();
    let mut removals = Vec::new();
    for (uid, read) in uids.iter().zip(reads) {
        let o = read.await.expect("offline");
        let p = o.push.expect("push");
        assert_eq!(
            (p.count, p.body),
            (1, Bytes::from(format!("push for {uid}")))
        );
        assert_eq!(o.callbacks.len(), 1);
        assert_eq!(o.ims.len(), 1);
        assert_eq!(o.ims[0].body, Bytes::from(format!("im for {uid}")));
        let key = |item| StoredKey {
            uid: Arc::from(*uid),
            term: t,
            item,
        };
        removals.extend([
            key(OfflineKey::Push {
                version: p.version,
                count: p.count,
            }),
            key(OfflineKey::Callback {
                id: o.callbacks[0].id,
            }),
            key(OfflineKey::Im { id: o.ims[0].id }),
        ]);
    }
    stored.await.expect("durable");
    let removed = store.remove_offline(removals);
    for uid in &uids {
        assert!(store.offline(uid, t).await.expect("read").is_empty());
    }
    removed.await.expect("removed");

    // The queues, whichever nodes hold them.
    let seqs = store
        .inbox_append(vec![
            ("push".into(), Bytes::from("a")),
            ("callback".into(), Bytes::from("b")),
        ])
        .await
        .expect("append");
    let appended = store.inbox_append(vec![("push".into(), Bytes::from("c"))]);
    assert_eq!(store.inbox_load().await.expect("load").len(), 3);
    let seqs = [seqs, appended.await.expect("append")].concat();
    store.inbox_remove(vec![seqs[2]]).await.expect("remove");
    let removed = store.inbox_remove(vec![seqs[0]]);
    let left = store.inbox_load().await.expect("load");
    assert_eq!(
        left.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [seqs[1]],
        "the removal queued before the load is seen"
    );
    removed.await.expect("removed");
    store.inbox_remove(vec![seqs[1]]).await.expect("remove");
    assert!(store.inbox_load().await.expect("load").is_empty());
    let s = store
        .outbox_append(vec![("back".into(), Bytes::from("x"))])
        .await
        .expect("append")[0];
    assert_eq!(
        store.outbox_load().await.expect("load")[0].body,
        Bytes::from("x")
    );
    store.outbox_remove(s).await.expect("remove");
    assert!(store.outbox_load().await.expect("load").is_empty());

    // Each user's ordering holds wherever the user lives.
    for uid in &uids {
        check_order(&store, uid).await;
    }
}
