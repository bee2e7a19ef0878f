//! Applying inbound bus messages (SPEC §5–§7): login records and their kicks, down-messages
//! planned into deliveries and offline writes, and session-timeout questions answered on their
//! back topic.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::try_join_all;
use galopush_protocol::bus::{self, Downward, SessionTimeout, UserOnlineState};
use galopush_protocol::message::KickReason;
use galopush_protocol::{TermMask, TermType};

use super::deliveries::{Origin, Planned, Target, offline_message};
use super::reports::{Hold, Report, ReportOutcome};
use super::{CometIdx, Router};
use crate::bus::{PublishError, Ticket, Topic};
use crate::link::{CometCommand, DeliveryKind};
use crate::metrics::{Dropped, Refusal};
use crate::store::{LoginRecord, OfflineWrite};

/// What planning a down-message produced: its deliveries, batched by comet, and offline
/// writes.
struct Plan<'a> {
    deliveries: Planned<'a>,
    batches: Vec<(CometIdx, Vec<CometCommand>)>,
    stores: Vec<crate::store::StoreFuture>,
}

impl Plan<'_> {
    fn deliver(&mut self, target: Target, flag: u8) {
        let comet = target.comet;
        let command = CometCommand::Deliver(self.deliveries.add(target, flag));
        match self.batches.iter_mut().find(|(c, _)| *c == comet) {
            Some((_, commands)) => commands.push(command),
            None => {
                // The first comet's batch is sized for every receiver (a broadcast to 10000
                // grew it through 14 reallocations, copying 0.7 MB); later ones grow.
                let capacity = if self.batches.is_empty() {
                    self.deliveries.receivers()
                } else {
                    1
                };
                let mut commands = Vec::with_capacity(capacity);
                commands.push(command);
                self.batches.push((comet, commands));
            }
        }
    }
}

/// A bus message, read and checked.
enum Inbound {
    Login(UserOnlineState, TermType),
    Down(DeliveryKind, Downward),
    /// Boxed: the question is rare and large, and every message moves through queues at the
    /// size of the largest kind.
    Timeout(Box<SessionTimeout>, TermType),
}

fn term_of(bits: u8, field: &str) -> Result<TermType, String> {
    TermType::from_bit(bits)
        .ok_or_else(|| format!("{field} {bits} is not one terminal type (1, 2, 4, 8 or 16)"))
}

fn parse(topic: Topic, body: &[u8]) -> Result<Inbound, String> {
    let json_error = |e: galopush_protocol::BusError| e.to_string();
    match topic {
        Topic::UserOnlineState => {
            let s: UserOnlineState = bus::decode(body).map_err(json_error)?;
            if s.uid.is_empty() {
                return Err("uid is empty".into());
            }
            let term = term_of(s.termtype, "termtype")?;
            if s.online && s.code.is_empty() {
                return Err("code is empty for online = true".into());
            }
            Ok(Inbound::Login(s, term))
        }
        Topic::Push | Topic::Callback | Topic::MsgDownward => {
            let d = bus::decode_downward(body).map_err(json_error)?;
            if let Some(id) = &d.id
                && id.len() > bus::MAX_REPORT_ID
            {
                return Err(format!(
                    "id is {} bytes long (at most {})",
                    id.len(),
                    bus::MAX_REPORT_ID
                ));
            }
            if let Some(r) = d.receivers.iter().find(|r| r.uid.is_empty()) {
                return Err(format!(
                    "a receiver has an empty uid (termtype {})",
                    r.termtype
                ));
            }
            let kind = match topic {
                Topic::Push => DeliveryKind::Push { offline: 0 },
                Topic::Callback => DeliveryKind::Callback,
                _ => DeliveryKind::Im,
            };
            Ok(Inbound::Down(kind, d))
        }
        Topic::SessionTimeout => {
            let t: SessionTimeout = bus::decode(body).map_err(json_error)?;
            if !galopush_nsq::is_valid_topic_name(&t.back_topic) {
                // An answer that can never be published must not be retried forever.
                return Err(format!(
                    "backTopic {:?} is not a topic name (1-64 of [.a-zA-Z0-9_-])",
                    t.back_topic
                ));
            }
            if t.msg.uid.is_empty() {
                return Err("msg.uid is empty".into());
            }
            let term = term_of(t.msg.ctype, "msg.ctype")?;
            Ok(Inbound::Timeout(Box::new(t), term))
        }
    }
}

/// A bus message that [`Router::check`] read and found well-formed, ready to apply without
/// being parsed again.
pub struct Checked(Inbound);

impl Router {
    /// Checks a message without applying it; the reason names what is wrong.
    pub fn validate(&self, topic: Topic, body: &[u8]) -> Result<(), String> {
        parse(topic, body).map(drop)
    }

    /// Checks a message and keeps what was read, for [`Router::apply_checked`].
    pub fn check(&self, topic: Topic, body: &[u8]) -> Result<Checked, String> {
        parse(topic, body).map(Checked)
    }

    /// Applies one inbound message. `ticket` retires it once every effect is durable; a
    /// malformed message is logged, counted and retired.
    pub async fn apply(&self, topic: Topic, body: &[u8], ticket: Ticket) {
        match parse(topic, body) {
            Err(why) => {
                let counters = self.metrics.topic(topic);
                counters.received.inc();
                counters.malformed.inc();
                tracing::warn!(topic = topic.label(), reason = %why, "malformed bus message dropped");
            }
            Ok(inbound) => self.apply_checked(topic, Checked(inbound), ticket).await,
        }
    }

    /// Applies a message [`Router::check`] read, as [`Router::apply`] does.
    pub async fn apply_checked(&self, topic: Topic, checked: Checked, ticket: Ticket) {
        self.metrics.topic(topic).received.inc();
        match checked.0 {
            Inbound::Login(state, term) => self.apply_login(state, term, ticket).await,
            Inbound::Down(kind, msg) => self.apply_down(kind, msg, ticket).await,
            Inbound::Timeout(question, term) => self.answer_timeout(*question, term, ticket),
        }
    }

    async fn apply_login(&self, state: UserOnlineState, term: TermType, ticket: Ticket) {
        let uid = state.uid.as_str();
        if state.online {
            let record = LoginRecord {
                code: state.code,
                device_token: state.device_token,
                login: true,
            };
            let code = record.code.clone();
            let written = match self.store.log_in(uid, term, record).await {
                Ok(w) => w,
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::warn!(%uid, error = %e, "cannot write login record; login will be retried");
                    ticket.fail();
                    return;
                }
            };
            let repeat = written.is_repeat(&code);
            self.hold_until_durable(written.durable, Some(ticket.clone()));
            if repeat {
                // The code the record already had (SPEC §5): a retried, replayed or requeued
                // login, which took the new deviceToken and kicks no one — not the terminal that
                // registered with that code, nor the other of Android and iOS.
                tracing::debug!(%uid, %term, "login repeats the record's code; no kick");
                return;
            }
            self.kick_live(uid, term, KickReason::RepeatLogin);
            if let Some(other) = term.excluded_by_login() {
                self.kick_live(uid, other, KickReason::MutualExclusion);
                self.hold_until_durable(self.store.set_login(uid, other, None), Some(ticket));
            }
            return;
        }
        let record = match self.store.login(uid, term).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::warn!(%uid, error = %e, "cannot read login record; logout will be retried");
                ticket.fail();
                return;
            }
        };
        let code = if state.code.is_empty() {
            record.as_ref().map(|r| r.code.clone()).unwrap_or_default()
        } else {
            state.code
        };
        if let Some(mut r) = record
            && r.code == code
            && r.login
        {
            r.login = false;
            self.hold_until_durable(self.store.set_login(uid, term, Some(r)), Some(ticket));
        }
        if let Some(at) = self.sessions.remove_with_token(uid, term, &code) {
            self.comets.track(at.comet, term, -1);
            self.kick(&at, KickReason::LoggedOut);
        }
    }

    /// Plans a down-message: live terminals get a delivery, logged-in ones that are not live
    /// get the offline rule. The store is asked which types are logged in only for receivers
    /// with a wanted type that is not live — none at all when every wanted terminal is online,
    /// which spares a Redis round trip per message in a cluster.
    async fn apply_down(&self, kind: DeliveryKind, msg: Downward, ticket: Ticket) {
        let body = Bytes::from(msg.body);
        let mut plan = Plan {
            deliveries: self.pending.plan(
                kind,
                &body,
                msg.id.map(Arc::from),
                Origin::Live(ticket.clone()),
                msg.receivers.len(),
            ),
            batches: Vec::new(),
            stores: Vec::new(),
        };
        let mut unresolved = Vec::new();
        for receiver in msg.receivers.iter() {
            let wanted = TermMask(receiver.termtype);
            let (reached, missing) = self.plan_receiver(&mut plan, receiver.uid, wanted, None);
            if missing.0 != 0 {
                unresolved.push((receiver.uid, wanted, missing, reached));
            } else if !reached {
                self.no_login(&plan, receiver.uid, wanted);
            }
        }
        if !unresolved.is_empty() {
            let uids: Vec<&str> = unresolved.iter().map(|(uid, ..)| *uid).collect();
            let logged_in = match self.store.logged_in(&uids).await {
                Ok(l) => l,
                Err(e) => {
                    self.metrics.store_errors.inc();
                    tracing::warn!(error = %e, "cannot read login records; message will be retried");
                    // Nothing of the message goes out (its planned deliveries are never kept):
                    // it is applied whole when retried.
                    ticket.fail();
                    return;
                }
            };
            for ((uid, wanted, missing, reached_live), logged_in) in
                unresolved.into_iter().zip(logged_in)
            {
                let (reached, _) = self.plan_receiver(&mut plan, uid, missing, Some(logged_in));
                if !reached && !reached_live {
                    self.no_login(&plan, uid, wanted);
                }
            }
        }
        plan.deliveries.open();
        for (comet, commands) in plan.batches {
            self.send(comet, commands);
        }
        if !plan.stores.is_empty() {
            let all = try_join_all(plan.stores);
            self.hold_until_durable(Box::pin(async move { all.await.map(drop) }), Some(ticket));
        }
    }

    /// Plans one receiver's `wanted` terminal types under the user's lock, so that live or
    /// stored is decided, and the write queued, in one step with respect to a registration
    /// (see `Router::register`). Without `logged_in` the types that are not live are left
    /// undecided and returned. Returns whether anything reached the user, and what is left.
    fn plan_receiver(
        &self,
        plan: &mut Plan<'_>,
        receiver: &str,
        wanted: TermMask,
        logged_in: Option<TermMask>,
    ) -> (bool, TermMask) {
        let kind = plan.deliveries.kind();
        self.sessions.viewed(receiver, |user| {
            let flag = u8::from(user.web_online());
            let mut uid = user.uid.cloned();
            let mut uid = || uid.get_or_insert_with(|| Arc::from(receiver)).clone();
            let mut reached = false;
            let mut missing = TermMask(0);
            for term in wanted.types() {
                if let Some(at) = user.get(term) {
                    reached = true;
                    let target = Target {
                        comet: at.comet,
                        session: at.session,
                        uid: uid(),
                        term,
                    };
                    plan.deliver(target, flag);
                    continue;
                }
                let Some(logged_in) = logged_in else {
                    missing = missing.with(term);
                    continue;
                };
                if !logged_in.contains(term) {
                    continue;
                }
                reached = true;
                let outcome = if term == TermType::Web {
                    self.metrics.dropped(Dropped::WebOffline).inc();
                    ReportOutcome::Dropped
                } else {
                    self.metrics.offline_stored(kind).inc();
                    let body = plan.deliveries.body().clone();
                    let message = offline_message(kind, flag, body.clone());
                    let uid = uid();
                    self.stored_for(&uid, term);
                    plan.stores
                        .push(self.store.store_offline(vec![OfflineWrite {
                            uid: uid.clone(),
                            term,
                            message,
                        }]));
                    self.phones
                        .notify(&uid, term, kind, &body, plan.deliveries.id_arc());
                    ReportOutcome::Stored
                };
                self.report(plan, receiver, term.bit(), outcome);
            }
            (reached, missing)
        })
    }

    /// A receiver with no login record and nothing live: counted, and reported once for the
    /// termtype mask it was sent to.
    fn no_login(&self, plan: &Plan<'_>, uid: &str, wanted: TermMask) {
        self.metrics.dropped(Dropped::NoLogin).inc();
        tracing::debug!(%uid, "no login record and no live terminal; dropped");
        self.report(plan, uid, wanted.0, ReportOutcome::Dropped);
    }

    /// Reports what planning decided for a receiver of a live message.
    fn report(&self, plan: &Plan<'_>, uid: &str, termtype: u8, outcome: ReportOutcome) {
        if !self.reports.enabled() {
            return;
        }
        let Some(ticket) = plan.deliveries.ticket() else {
            return;
        };
        self.reports.publish(
            Report {
                id: plan.deliveries.id(),
                uid,
                termtype,
                kind: plan.deliveries.kind(),
                outcome,
            },
            Hold::Ticket(ticket.clone()),
        );
    }

    fn answer_timeout(&self, mut question: SessionTimeout, term: TermType, ticket: Ticket) {
        if self.sessions.live(&question.msg.uid).get(term).is_some() {
            question.msg.flag = 1;
        }
        let json = Bytes::from(bus::encode(&question, false));
        let publisher = self.publisher.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = publisher.publish(&question.back_topic, json).await {
                match e {
                    PublishError::Full { .. } => metrics.refused(Refusal::OutboxPending),
                    _ => {
                        metrics.store_errors.inc();
                    }
                }
                tracing::warn!(
                    topic = %question.back_topic,
                    error = %e,
                    "sessionTimeout answer not taken by the bus; will be retried"
                );
                ticket.fail();
            }
        });
    }
}
