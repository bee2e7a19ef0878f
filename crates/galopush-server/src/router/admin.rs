//! What the admin routes of SPEC §13 read from the router: one user's terminals (login record,
//! where each is live, what is stored for it) and the live sessions of every comet by terminal
//! type. Reads only: a logout goes through the bus like any `userOnlineState`
//! (`http/admin.rs`).

use futures_util::future::try_join_all;
use galopush_protocol::{TermMask, TermType};
use serde::Serialize;

use super::Router;
use super::comets::CometSessions;
use crate::store::{LoginRecord, Offline, StoreError};

/// `GET /v1/users/<uid>`: one entry per terminal type with a login record or a live
/// connection, in bit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub uid: String,
    pub terminals: Vec<TerminalView>,
}

/// One terminal type of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalView {
    /// The type's bit (SPEC §2).
    pub termtype: u8,
    /// The login record says logged in (false without a record).
    pub login: bool,
    /// The login record has a device token; the token itself is never shown.
    pub device_token: bool,
    /// Where the terminal is live, as this router knows it.
    pub live: Option<LiveAt>,
    /// What is stored for it offline (always nothing for Web).
    pub offline: StoredCounts,
}

/// Where a terminal is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveAt {
    /// The comet's id (`comet.id`).
    pub comet: String,
    /// When this router took the session as live, in ms since the Unix epoch: its REGISTER,
    /// or for a router that (re)started since, the comet's report of it.
    pub since: u64,
}

/// How much a terminal has stored offline (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StoredCounts {
    /// Pushes coalesced into the stored one (the `offline` its PUSH will carry).
    pub push: u32,
    pub callback: usize,
    pub im: usize,
}

impl StoredCounts {
    fn of(offline: &Offline) -> StoredCounts {
        StoredCounts {
            push: offline.push.as_ref().map_or(0, |p| p.count),
            callback: offline.callbacks.len(),
            im: offline.ims.len(),
        }
    }
}

impl Router {
    /// A user's terminals: live ones from the location table, login records and stored counts
    /// from the store. Reading the stored messages to count them is bounded by the offline
    /// limits (`delivery.max_offline_*` per terminal type).
    pub async fn user(&self, uid: &str) -> Result<UserView, StoreError> {
        let read = async {
            let live = self.sessions.terminals(uid);
            let recorded = self
                .store
                .logged_in(&[uid])
                .await?
                .first()
                .copied()
                .unwrap_or(TermMask(0));
            let shown = live.iter().fold(recorded, |mask, (t, _, _)| mask.with(*t));
            let terminals = try_join_all(shown.types().map(|term| {
                let live =
                    live.iter()
                        .find(|(t, _, _)| *t == term)
                        .and_then(|(_, comet, since)| {
                            self.comets.id(*comet).map(|comet| LiveAt {
                                comet,
                                since: *since,
                            })
                        });
                self.terminal(uid, term, recorded.contains(term), live)
            }))
            .await?;
            Ok(UserView {
                uid: uid.to_owned(),
                terminals,
            })
        };
        read.await.inspect_err(|_: &StoreError| {
            self.metrics.store_errors.inc();
        })
    }

    async fn terminal(
        &self,
        uid: &str,
        term: TermType,
        recorded: bool,
        live: Option<LiveAt>,
    ) -> Result<TerminalView, StoreError> {
        let record: Option<LoginRecord> = if recorded {
            self.store.login(uid, term).await?
        } else {
            None
        };
        let offline = if term == TermType::Web {
            StoredCounts::default()
        } else {
            StoredCounts::of(&self.store.offline(uid, term).await?)
        };
        Ok(TerminalView {
            termtype: term.bit(),
            login: record.as_ref().is_some_and(|r| r.login),
            device_token: record.as_ref().is_some_and(|r| !r.device_token.is_empty()),
            live,
            offline,
        })
    }

    /// Every joined comet's live sessions by terminal type, as the comets reported them.
    pub fn sessions_by_comet(&self) -> Vec<CometSessions> {
        self.comets.sessions_by_term()
    }
}
