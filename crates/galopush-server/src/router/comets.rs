//! The comets a router knows: their addresses, their links, how many live sessions each holds,
//! and the dispatcher's choice among them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};

use galopush_protocol::TermType;
use parking_lot::RwLock;
use serde::Serialize;

use super::CometIdx;
use crate::link::{CometInfo, CometLink};

/// A joined comet.
pub struct JoinedComet {
    pub info: CometInfo,
    pub link: Arc<dyn CometLink>,
    /// Which process of the comet this is (see [`Comets::join`]).
    incarnation: u64,
    /// Live sessions on it by terminal type (in the order of `TermType::ALL`), as this router
    /// sees them.
    sessions: [AtomicI64; 5],
    /// Terminals sent here by the dispatcher that have not registered yet.
    reserved: AtomicI64,
}

impl JoinedComet {
    fn sessions(&self) -> i64 {
        self.sessions
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum()
    }

    fn load(&self) -> i64 {
        self.sessions() + self.reserved.load(Ordering::Relaxed)
    }
}

/// One row of `GET /v1/comets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CometSummary {
    pub id: String,
    pub tcp: String,
    pub ws: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wss: Option<String>,
    pub sessions: i64,
}

/// A comet's live sessions by terminal type, for `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CometSessions {
    pub id: String,
    /// Sessions of each terminal type, in the order of `TermType::ALL`.
    pub by_term: [i64; 5],
}

/// A join refused: another process joined with the same comet id and is still joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("comet id taken: {0:?} is joined by another comet")]
pub struct IdTaken(pub String);

/// The comet registry.
#[derive(Default)]
pub struct Comets {
    joined: RwLock<HashMap<CometIdx, Arc<JoinedComet>>>,
    next: AtomicU32,
    rotation: AtomicUsize,
}

impl Comets {
    /// Adds a comet; returns its number and that of an earlier link of the same comet (a
    /// rejoin: the same id and `incarnation`). A comet with the id of another process still
    /// joined is refused: it would take that comet's terminals.
    pub fn join(
        &self,
        info: CometInfo,
        link: Arc<dyn CometLink>,
        incarnation: u64,
    ) -> Result<(CometIdx, Option<CometIdx>), IdTaken> {
        let mut joined = self.joined.write();
        let earlier = joined.iter().find(|(_, c)| c.info.id == info.id);
        let replaced = match earlier {
            Some((_, c)) if c.incarnation != incarnation => return Err(IdTaken(info.id)),
            Some((i, _)) => Some(*i),
            None => None,
        };
        let idx = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        joined.insert(
            idx,
            Arc::new(JoinedComet {
                info,
                link,
                incarnation,
                sessions: Default::default(),
                reserved: AtomicI64::new(0),
            }),
        );
        Ok((idx, replaced))
    }

    pub fn leave(&self, idx: CometIdx) -> Option<Arc<JoinedComet>> {
        self.joined.write().remove(&idx)
    }

    pub fn link(&self, idx: CometIdx) -> Option<Arc<dyn CometLink>> {
        self.joined.read().get(&idx).map(|c| c.link.clone())
    }

    /// Counts a session of `term` opened (+1) or closed (-1) on a comet.
    pub fn track(&self, idx: CometIdx, term: TermType, delta: i64) {
        if let Some(c) = self.joined.read().get(&idx) {
            c.sessions[term.index()].fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// The id of a joined comet.
    pub fn id(&self, idx: CometIdx) -> Option<String> {
        self.joined.read().get(&idx).map(|c| c.info.id.clone())
    }

    /// A terminal registered on a comet: one dispatcher reservation is used up.
    pub fn registered(&self, idx: CometIdx) {
        if let Some(c) = self.joined.read().get(&idx) {
            let _ = c
                .reserved
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    (r > 0).then_some(r - 1)
                });
        }
    }

    /// Halves the reservations, so terminals that never registered stop counting.
    pub fn decay_reservations(&self) {
        for c in self.joined.read().values() {
            let r = c.reserved.load(Ordering::Relaxed);
            c.reserved.store(r / 2, Ordering::Relaxed);
        }
    }

    /// The address for a terminal: the comet already holding the user, else the least loaded
    /// one (ties taken in turn). With `tls`, only comets with TLS addresses count, and their
    /// TLS address is answered.
    pub fn dispatch(&self, current: Option<CometIdx>, web: bool, tls: bool) -> Option<String> {
        let joined = self.joined.read();
        let serves = |c: &JoinedComet| !tls || c.info.tls.is_some();
        let chosen = match current
            .and_then(|idx| joined.get(&idx))
            .filter(|c| serves(c))
        {
            Some(c) => c.clone(),
            None => {
                let mut all: Vec<&Arc<JoinedComet>> =
                    joined.values().filter(|c| serves(c)).collect();
                if all.is_empty() {
                    return None;
                }
                all.sort_by(|a, b| a.info.id.cmp(&b.info.id));
                let start = self.rotation.fetch_add(1, Ordering::Relaxed) % all.len();
                let mut best = all[start];
                for i in 1..all.len() {
                    let c = all[(start + i) % all.len()];
                    if c.load() < best.load() {
                        best = c;
                    }
                }
                best.reserved.fetch_add(1, Ordering::Relaxed);
                best.clone()
            }
        };
        let info = &chosen.info;
        match (web, tls) {
            (true, true) => info.wss.clone(),
            (false, true) => info.tls.clone(),
            (true, false) => Some(info.ws.clone()),
            (false, false) => Some(info.tcp.clone()),
        }
    }

    pub fn summaries(&self) -> Vec<CometSummary> {
        let mut out: Vec<CometSummary> = self
            .joined
            .read()
            .values()
            .map(|c| CometSummary {
                id: c.info.id.clone(),
                tcp: c.info.tcp.clone(),
                ws: c.info.ws.clone(),
                tls: c.info.tls.clone(),
                wss: c.info.wss.clone(),
                sessions: c.sessions().max(0),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Every joined comet's live sessions by terminal type, by comet id.
    pub fn sessions_by_term(&self) -> Vec<CometSessions> {
        let mut out: Vec<CometSessions> = self
            .joined
            .read()
            .values()
            .map(|c| CometSessions {
                id: c.info.id.clone(),
                by_term: std::array::from_fn(|i| c.sessions[i].load(Ordering::Relaxed).max(0)),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}
