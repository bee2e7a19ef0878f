//! The router's hot paths, without sockets: planning a down-message into deliveries and
//! settling them (per delivery, for one receiver and for a broadcast), and looking a user up in
//! the location table. Run with `cargo bench -p galopush-server --bench router`.

use std::hint::black_box;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use galopush_protocol::TermType;
use galopush_server::bus::{PublishError, Publisher, Ticket, Topic};
use galopush_server::config::{AuthMode, TopicsConfig};
use galopush_server::link::{CometCommand, CometInfo, CometLink, Outcome, SessionInfo, Settle};
use galopush_server::metrics::Metrics;
use galopush_server::router::sessions::{Location, Sessions};
use galopush_server::router::{CometIdx, Router, RouterSettings};
use galopush_server::store::memory::MemoryStore;
use galopush_server::store::offline::OfflineLimits;

/// The business side is not part of these paths.
struct NoBus;

#[async_trait]
impl Publisher for NoBus {
    async fn publish(&self, _topic: &str, _json: Bytes) -> Result<(), PublishError> {
        Ok(())
    }
}

/// A comet that acks every delivery as soon as the router hands it over, so each iteration
/// pays for planning and settling and the table of deliveries in flight stays empty.
struct AckingComet {
    router: OnceLock<Weak<Router>>,
    /// The comet's number at the router, known once it joined.
    joined_as: OnceLock<CometIdx>,
    sessions: Vec<SessionInfo>,
}

impl CometLink for AckingComet {
    fn send(&self, commands: Vec<CometCommand>) {
        let router = self.router.get().and_then(Weak::upgrade).expect("router");
        let comet = *self.joined_as.get().expect("joined");
        for command in commands {
            if let CometCommand::Deliver(d) = command {
                router.settled(
                    comet,
                    Settle {
                        id: d.id,
                        outcome: Outcome::Acked,
                    },
                );
            }
        }
    }

    fn live_sessions(&self) -> Vec<SessionInfo> {
        self.sessions.clone()
    }
}

fn uid(i: usize) -> String {
    format!("user-{i:06}")
}

/// A router with `users` live Android terminals on one comet.
fn router_with(users: usize) -> Arc<Router> {
    let settings = RouterSettings {
        auth_mode: AuthMode::Business,
        topics: TopicsConfig::default(),
    };
    let store = Arc::new(MemoryStore::new(OfflineLimits::default()));
    let router = Router::new(settings, store, Arc::new(NoBus), Arc::new(Metrics::new()));
    let sessions = (0..users)
        .map(|i| SessionInfo {
            session: i as u64 + 1,
            uid: Arc::from(uid(i)),
            term: TermType::Android,
            token: Arc::from("token"),
        })
        .collect();
    let comet = Arc::new(AckingComet {
        router: OnceLock::new(),
        joined_as: OnceLock::new(),
        sessions,
    });
    let _ = comet.router.set(Arc::downgrade(&router));
    let info = CometInfo {
        id: "bench".into(),
        tcp: "127.0.0.1:1".into(),
        ws: "127.0.0.1:2".into(),
        tls: None,
        wss: None,
    };
    let idx = router.join(info, comet.clone(), 1).expect("the only comet");
    let _ = comet.joined_as.set(idx);
    router
}

fn push_json(receivers: impl Iterator<Item = usize>) -> Vec<u8> {
    let receivers: Vec<String> = receivers
        .map(|i| format!(r#"{{"uid":"{}","termtype":1}}"#, uid(i)))
        .collect();
    format!(
        r#"{{"receivers":[{}],"flag":0,"body":"{}"}}"#,
        receivers.join(","),
        "x".repeat(180)
    )
    .into_bytes()
}

fn planning(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let users = 10_000;
    let router = router_with(users);

    let mut group = c.benchmark_group("plan_and_settle");
    group.throughput(Throughput::Elements(1));
    let unicast: Vec<Vec<u8>> = (0..users).map(|i| push_json(std::iter::once(i))).collect();
    let mut next = 0;
    group.bench_function("unicast", |b| {
        b.iter(|| {
            let body = &unicast[next % users];
            next += 1;
            runtime.block_on(router.apply(Topic::Push, black_box(body), Ticket::detached()));
        })
    });
    let broadcast = push_json(0..1000);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("broadcast_1000", |b| {
        b.iter(|| {
            runtime.block_on(router.apply(Topic::Push, black_box(&broadcast), Ticket::detached()));
        })
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let users = 100_000;
    let sessions = Sessions::default();
    for i in 0..users {
        let location = Location {
            comet: 1,
            session: i as u64,
            token: Arc::from("token"),
            since: 0,
        };
        sessions.insert(&Arc::from(uid(i)), TermType::Android, location);
    }
    let uids: Vec<String> = (0..users).map(uid).collect();
    let absent: Vec<String> = (0..users).map(|i| format!("absent-{i:06}")).collect();
    let mut group = c.benchmark_group("session_lookup");
    group.throughput(Throughput::Elements(1));
    let mut next = 0;
    group.bench_function("live", |b| {
        b.iter(|| {
            let uid = &uids[next % users];
            next += 1;
            sessions.viewed(black_box(uid), |user| user.get(TermType::Android).is_some())
        })
    });
    group.bench_function("absent", |b| {
        b.iter(|| {
            let uid = &absent[next % users];
            next += 1;
            sessions.viewed(black_box(uid), |user| user.get(TermType::Android).is_some())
        })
    });
    group.bench_function("register_and_close", |b| {
        b.iter_batched(
            || Arc::<str>::from(format!("new-{next}")),
            |uid| {
                let at = Location {
                    comet: 2,
                    session: 7,
                    token: Arc::from("t"),
                    since: 0,
                };
                sessions.insert(&uid, TermType::Ios, at);
                sessions.remove_session(&uid, TermType::Ios, 2, 7)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, planning, lookup);
criterion_main!(benches);
