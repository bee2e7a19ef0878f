//! The router: the brain of the gateway (SPEC §1).
//!
//! It applies inbound bus messages (login records, down-messages, session timeouts), keeps where
//! every live terminal is, authenticates REGISTERs, decides kicks, plans each down-message into
//! deliveries (one per live terminal, batched per comet) or offline writes, stores what failed,
//! and retires the inbound message once all of that is durable. It answers the dispatcher and
//! publishes terminals' IMs to the business side.

pub mod admin;
pub mod comets;
pub mod deliveries;
pub mod inbound;
pub mod reports;
pub mod sessions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use galopush_protocol::TermType;
use galopush_protocol::bus::MsgUpward;
use galopush_protocol::message::KickReason;
use subtle::ConstantTimeEq;

use crate::bus::{PublishError, Publisher, Ticket};
use crate::config::{AuthMode, Config, TopicsConfig};
use crate::link::{
    CometCommand, CometInfo, CometLink, Delivery, DeliveryKind, ImUp, LinkError, Registration,
    SessionInfo, Settle,
};
use crate::metrics::{LinkRefusal, Metrics, Refusal};
use crate::phones::Phones;
use crate::sharded::ShardedMap;
use crate::store::{LoginRecord, OfflineKey, Store, StoreError};
pub use comets::{CometSessions, IdTaken};
use comets::{CometSummary, Comets};
use deliveries::{NotItsOwn, Origin, Pending, Target};
use reports::Reports;
pub use sessions::CometIdx;
use sessions::{Location, Sessions};

/// What the router needs from the configuration.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub auth_mode: AuthMode,
    pub topics: TopicsConfig,
}

impl RouterSettings {
    pub fn from_config(config: &Config) -> RouterSettings {
        RouterSettings {
            auth_mode: config.auth.mode,
            topics: config.topics.clone(),
        }
    }
}

/// The router.
pub struct Router {
    settings: RouterSettings,
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    metrics: Arc<Metrics>,
    sessions: Sessions,
    comets: Comets,
    pending: Pending,
    reports: Reports,
    /// The phones' push services, for terminals that are not live (SPEC §12).
    phones: Phones,
    /// Terminals this router stored a message for lately, and when: the ones to look at again
    /// when another router's REGISTER of them is reported (`opened`), or when a comet joins with
    /// them live (after this router's restart, its inbox may have been replayed before the
    /// comets rejoined). Kept while there are several routers or for [`LATE_STORE_WINDOW`]
    /// after this router started, at most [`STORED_LATELY_PER_SHARD`] per shard (a broadcast to
    /// many offline users fills it; those beyond wait for their next REGISTER, as before);
    /// entries older than [`LATE_STORE_WINDOW`] are dropped by `housekeeping`.
    stored_lately: ShardedMap<(Arc<str>, TermType), Instant>,
    /// Whether another router has reported a REGISTER (`opened`): there are several routers.
    several_routers: AtomicBool,
    /// When this router started.
    started: Instant,
}

/// Entries of `stored_lately` per shard, at most: 131,072 in all, a few MiB.
const STORED_LATELY_PER_SHARD: usize = 2048;

/// How long after storing a message for a terminal this router still looks for it when another
/// router reports the terminal's REGISTER or a comet joins with it live. The race it closes lasts
/// from that REGISTER's read of the stored messages until this router hears of the session:
/// milliseconds, or the length of a pause of this router; after this router's restart, until
/// the comets have joined again.
const LATE_STORE_WINDOW: Duration = Duration::from_secs(60);

impl Router {
    /// A router that sends nothing to phones' push services.
    pub fn new(
        settings: RouterSettings,
        store: Arc<dyn Store>,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
    ) -> Arc<Router> {
        Router::with_phones(settings, store, publisher, metrics, Phones::default())
    }

    /// A router that also hands messages for terminals that are not live to `phones`.
    pub fn with_phones(
        settings: RouterSettings,
        store: Arc<dyn Store>,
        publisher: Arc<dyn Publisher>,
        metrics: Arc<Metrics>,
        phones: Phones,
    ) -> Arc<Router> {
        let reports = Reports::new(
            &settings.topics.delivery_report,
            publisher.clone(),
            metrics.clone(),
        );
        let reported = reports.enabled();
        Arc::new(Router {
            settings,
            store,
            publisher,
            metrics,
            reports,
            phones,
            sessions: Sessions::default(),
            comets: Comets::default(),
            pending: Pending::new(reported),
            stored_lately: ShardedMap::default(),
            several_routers: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn topics(&self) -> &TopicsConfig {
        &self.settings.topics
    }

    /// A comet joined: remember it and take its live sessions as they are, sending each the
    /// messages this router stored for it lately (see `take_live_again`). `incarnation` tells
    /// a rejoin of the same comet process from a second comet with a taken id, which is
    /// refused.
    pub fn join(
        self: &Arc<Self>,
        info: CometInfo,
        link: Arc<dyn CometLink>,
        incarnation: u64,
    ) -> Result<CometIdx, IdTaken> {
        let (idx, replaced) = self.comets.join(info.clone(), link.clone(), incarnation)?;
        if let Some(old) = replaced {
            tracing::info!(comet = %info.id, "comet rejoined; dropping its previous link");
            self.leave(old);
        }
        let live = link.live_sessions();
        tracing::info!(comet = %info.id, sessions = live.len(), "comet joined");
        for s in &live {
            self.take_live_again(idx, s);
        }
        Ok(idx)
    }

    /// A comet is gone: its sessions are no longer live and what it had not settled goes to
    /// the offline rule.
    pub fn leave(&self, comet: CometIdx) {
        let Some(gone) = self.comets.leave(comet) else {
            return;
        };
        let sessions = self.sessions.remove_comet(comet);
        let unsettled = self.pending.take_comet(comet);
        tracing::warn!(
            comet = %gone.info.id,
            sessions,
            unsettled = unsettled.len(),
            "comet left"
        );
        for taken in unsettled {
            self.finish(taken);
        }
    }

    /// Takes session `s` on `comet` as live and runs `also` under the same lock of the user (a
    /// message planned for the user meanwhile either sees the session or was planned before
    /// `also`); then kicks whatever session held the same (uid, type) before.
    fn take_live<R>(&self, comet: CometIdx, s: &SessionInfo, also: impl FnOnce() -> R) -> R {
        let location = Location {
            comet,
            session: s.session,
            token: s.token.clone(),
            since: unix_ms(),
        };
        self.comets.track(comet, s.term, 1);
        let (older, out) = self
            .sessions
            .locked(&s.uid, |slots| (slots.insert(s.term, location), also()));
        if let Some(older) = older {
            self.comets.track(older.comet, s.term, -1);
            self.kick(&older, KickReason::RepeatLogin);
        }
        out
    }

    /// Sends KICK to a session that is no longer in the location table.
    fn kick(&self, at: &Location, reason: KickReason) {
        self.metrics.kick(reason).inc();
        self.send(
            at.comet,
            vec![CometCommand::Kick {
                session: at.session,
                reason,
            }],
        );
    }

    /// Removes a live terminal and kicks it.
    fn kick_live(&self, uid: &str, term: TermType, reason: KickReason) {
        if let Some(at) = self.sessions.remove(uid, term) {
            self.comets.track(at.comet, term, -1);
            self.kick(&at, reason);
        }
    }

    /// Hands commands to a comet; deliveries for a comet that is gone fail at once.
    fn send(&self, comet: CometIdx, commands: Vec<CometCommand>) {
        match self.comets.link(comet) {
            Some(link) => link.send(commands),
            None => {
                for c in commands {
                    if let CometCommand::Deliver(d) = c
                        && let Ok(Some(taken)) =
                            self.pending.take(d.id, crate::link::Outcome::Failed, comet)
                    {
                        self.finish(taken);
                    }
                }
            }
        }
    }

    /// Authenticates a REGISTER, takes the session as live, and returns the stored messages to
    /// send after REGRESP 0.
    pub async fn register(
        &self,
        comet: CometIdx,
        s: SessionInfo,
    ) -> Result<Registration, LinkError> {
        let unavailable = |e: StoreError| {
            self.metrics.store_errors.inc();
            LinkError::Unavailable(e.to_string())
        };
        let accepted = match self.settings.auth_mode {
            AuthMode::Business => match self.store.login(&s.uid, s.term).await {
                Ok(Some(record)) => {
                    record.login && bool::from(record.code.as_bytes().ct_eq(s.token.as_bytes()))
                }
                Ok(None) => false,
                Err(e) => return Err(unavailable(e)),
            },
            AuthMode::Open => {
                let device_token = match self.store.login(&s.uid, s.term).await {
                    Ok(r) => r.map(|r| r.device_token).unwrap_or_default(),
                    Err(e) => return Err(unavailable(e)),
                };
                let record = LoginRecord {
                    code: s.token.to_string(),
                    device_token,
                    login: true,
                };
                self.store
                    .set_login(&s.uid, s.term, Some(record))
                    .await
                    .map_err(unavailable)?;
                true
            }
        };
        if !accepted {
            self.metrics.registrations_refused.inc();
            tracing::debug!(uid = %s.uid, term = %s.term, "registration refused");
            return Ok(Registration::Refused);
        }
        self.metrics.registrations_accepted.inc();
        self.comets.registered(comet);
        // Taking the session as live and reading its stored messages happen under the user's
        // lock: a message planned for this user either sees the session live or is stored
        // before this read.
        let stored = self.take_live(comet, &s, || {
            (s.term != TermType::Web).then(|| self.store.offline(&s.uid, s.term))
        });
        let stored = match stored {
            None => Vec::new(),
            Some(read) => match read.await {
                Ok(offline) => self.stored_deliveries(comet, &s, offline),
                Err(e) => {
                    // The terminal is registered; its stored messages wait for the next time.
                    self.metrics.store_errors.inc();
                    tracing::warn!(uid = %s.uid, error = %e, "cannot read stored messages");
                    Vec::new()
                }
            },
        };
        Ok(Registration::Accepted { stored })
    }

    /// The deliveries of a terminal's stored messages, in the order of SPEC §6.
    fn stored_deliveries(
        &self,
        comet: CometIdx,
        s: &SessionInfo,
        offline: crate::store::Offline,
    ) -> Vec<Delivery> {
        let web = u8::from(self.sessions.live(&s.uid).web_online());
        let mut out = Vec::new();
        let mut add = |kind: DeliveryKind, flag: u8, body: bytes::Bytes, key: OfflineKey| {
            let mut planned = self.pending.plan(kind, &body, None, Origin::Stored(key), 1);
            let target = Target {
                comet,
                session: s.session,
                uid: s.uid.clone(),
                term: s.term,
            };
            out.push(planned.add(target, flag));
            planned.open();
        };
        if let Some(p) = offline.push {
            let offline = u16::try_from(p.count).unwrap_or(u16::MAX);
            add(
                DeliveryKind::Push { offline },
                web,
                p.body,
                OfflineKey::Push {
                    version: p.version,
                    count: p.count,
                },
            );
        }
        for c in offline.callbacks {
            add(
                DeliveryKind::Callback,
                0,
                c.body,
                OfflineKey::Callback { id: c.id },
            );
        }
        for i in offline.ims {
            add(
                DeliveryKind::Im,
                i.flag,
                i.body,
                OfflineKey::Im { id: i.id },
            );
        }
        out
    }

    /// Another router authenticated a session on this comet: take it as live. If this router
    /// stored a message for the terminal lately, it may have done so after that REGISTER read
    /// the stored messages (routers' writes are not ordered with each other) and before it heard
    /// of the session: see `take_live_again`.
    pub fn opened(self: &Arc<Self>, comet: CometIdx, s: &SessionInfo) {
        self.several_routers.store(true, Ordering::Relaxed);
        self.take_live_again(comet, s);
    }

    /// Takes a session this router did not authenticate as live. If this router stored a
    /// message for the terminal lately — while it did not know of the session — it reads the
    /// terminal's stored messages again, after its own writes, and sends them to the session.
    /// What the session already had comes twice (at least once); nothing waits in the store
    /// while the terminal is online.
    fn take_live_again(self: &Arc<Self>, comet: CometIdx, s: &SessionInfo) {
        // As in `register`: the read is issued under the user's lock with the session live, so
        // a message planned here either sees the session or is stored before this read.
        let read = self.take_live(comet, s, || {
            let key = (s.uid.clone(), s.term);
            let lately = self
                .stored_lately
                .lock(&key)
                .remove(&key)
                .is_some_and(|at| at.elapsed() < LATE_STORE_WINDOW);
            lately.then(|| self.store.offline(&s.uid, s.term))
        });
        let Some(read) = read else {
            return;
        };
        let router = self.clone();
        let s = s.clone();
        tokio::spawn(async move {
            match read.await {
                Ok(offline) => {
                    let deliveries = router.stored_deliveries(comet, &s, offline);
                    if !deliveries.is_empty() {
                        tracing::debug!(uid = %s.uid, term = %s.term, messages = deliveries.len(), "stored messages sent to a session this router did not register");
                        router.send(
                            comet,
                            deliveries.into_iter().map(CometCommand::Deliver).collect(),
                        );
                    }
                }
                Err(e) => {
                    router.metrics.store_errors.inc();
                    tracing::warn!(uid = %s.uid, error = %e, "cannot read stored messages again; they wait for the next REGISTER");
                }
            }
        });
    }

    /// Notes that a message was stored for `uid`'s terminal of `term` (see `opened`).
    fn stored_for(&self, uid: &Arc<str>, term: TermType) {
        if !self.several_routers.load(Ordering::Relaxed)
            && self.started.elapsed() >= LATE_STORE_WINDOW
        {
            return;
        }
        let key = (uid.clone(), term);
        let mut shard = self.stored_lately.lock(&key);
        if shard.len() < STORED_LATELY_PER_SHARD || shard.contains_key(&key) {
            shard.insert(key, Instant::now());
        }
    }

    /// A session closed: it is no longer live.
    pub fn closed(&self, comet: CometIdx, s: &SessionInfo) {
        if self
            .sessions
            .remove_session(&s.uid, s.term, comet, s.session)
        {
            self.comets.track(comet, s.term, -1);
        }
    }

    /// A delivery ended, as told by `comet`: taken only from the comet it was sent to (SPEC
    /// §11); another comet's word on it is ignored and counted.
    pub fn settled(&self, comet: CometIdx, settle: Settle) {
        match self.pending.take(settle.id, settle.outcome, comet) {
            Ok(Some(taken)) => self.finish(taken),
            Ok(None) => {}
            Err(NotItsOwn) => {
                self.metrics.link_refused(LinkRefusal::ForeignSettle).inc();
                tracing::warn!(
                    comet,
                    delivery = settle.id,
                    "a comet settled a delivery it was not sent; ignored"
                );
            }
        }
    }

    /// Publishes an IM from a terminal as `msgUpward`; true once the bus has it durably. Taken
    /// only from the comet that holds the terminal's session (SPEC §11).
    pub async fn im_up(&self, comet: CometIdx, im: ImUp) -> bool {
        if self.sessions.live(&im.uid).get(im.term).map(|(at, _)| at) != Some(comet) {
            self.metrics.link_refused(LinkRefusal::ForeignIm).inc();
            tracing::warn!(comet, uid = %im.uid, term = %im.term, "an IM up from a comet that does not hold the session; refused");
            return false;
        }
        let msg = MsgUpward {
            uid: im.uid.to_string(),
            termtype: im.term.bit(),
            body: String::from_utf8_lossy(&im.body).into_owned(),
        };
        let json = galopush_protocol::bus::encode(&msg, false);
        let ok = match self
            .publisher
            .publish(&self.settings.topics.msg_upward, json.into())
            .await
        {
            Ok(()) => true,
            Err(PublishError::Full { .. }) => {
                self.metrics.refused(Refusal::OutboxPending);
                false
            }
            Err(e) => {
                tracing::warn!(uid = %im.uid, error = %e, "IM from terminal not taken by the bus");
                false
            }
        };
        if ok {
            self.metrics.im_up_accepted.inc();
        } else {
            self.metrics.im_up_failed.inc();
        }
        ok
    }

    /// The `host:port` of the comet a terminal should connect to (SPEC §8): its WebSocket
    /// address for a Web terminal, its TCP address otherwise, or their TLS twins with `tls`. A
    /// user already live somewhere goes there; others (and terminals without an id) to the
    /// least-loaded comet.
    pub fn dispatch(&self, uid: Option<&str>, web: bool, tls: bool) -> Option<String> {
        let comet = uid.and_then(|uid| self.sessions.comet_of(uid));
        self.comets.dispatch(comet, web, tls)
    }

    /// The joined comets, for `/v1/comets`.
    pub fn comets(&self) -> Vec<CometSummary> {
        self.comets.summaries()
    }

    /// Periodic upkeep: lets the dispatcher forget terminals it sent to a comet that never
    /// registered.
    pub fn housekeeping(&self) {
        self.comets.decay_reservations();
        self.stored_lately
            .each_shard(|shard| shard.retain(|_, at| at.elapsed() < LATE_STORE_WINDOW));
    }

    /// Waits until `ticket`'s write is durable, marking the ticket failed if it is not.
    fn hold_until_durable(&self, durable: crate::store::StoreFuture, ticket: Option<Ticket>) {
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = durable.await {
                metrics.store_errors.inc();
                tracing::warn!(error = %e, "store write failed; the bus message will be retried");
                if let Some(t) = &ticket {
                    t.fail();
                }
            }
            drop(ticket);
        });
    }
}

/// Now, in ms since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
