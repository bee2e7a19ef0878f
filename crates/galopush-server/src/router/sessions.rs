//! Where every live terminal is: (uid, terminal type) → (comet, session, token). Soft state,
//! rebuilt from the comets' reports after a router restart. Sharded by uid so planning a
//! broadcast takes one short lock per user, never a global one.

use std::sync::Arc;

use galopush_protocol::TermType;

use crate::link::SessionId;
use crate::sharded::ShardedMap;

/// A router's number for a joined comet; a comet that rejoins gets a new one.
pub type CometIdx = u32;

/// Where one terminal is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub comet: CometIdx,
    pub session: SessionId,
    /// The token the terminal registered with (logout kicks by token).
    pub token: Arc<str>,
    /// When this router took the session as live, in ms since the Unix epoch (`live.since` of
    /// `GET /v1/users/<uid>`).
    pub since: u64,
}

#[derive(Debug, Default)]
struct UserSessions {
    slots: Vec<(TermType, Location)>,
}

/// A snapshot of one user's live terminals.
#[derive(Debug, Clone, Default)]
pub struct Live(pub [Option<(CometIdx, SessionId)>; 5]);

impl Live {
    pub fn get(&self, term: TermType) -> Option<(CometIdx, SessionId)> {
        self.0[term.index()]
    }

    /// Whether the user's Web terminal is online (the flag of PUSH and IM).
    pub fn web_online(&self) -> bool {
        self.0[TermType::Web.index()].is_some()
    }
}

/// One user's live terminals, read under the lock of the user's shard.
pub struct View<'a> {
    /// The user id as the table keeps it, to share instead of copying; `None` when the user has
    /// no live terminal.
    pub uid: Option<&'a Arc<str>>,
    slots: &'a [(TermType, Location)],
}

impl View<'_> {
    pub fn get(&self, term: TermType) -> Option<&Location> {
        find(self.slots, term)
    }

    /// Whether the user's Web terminal is online (the flag of PUSH and IM).
    pub fn web_online(&self) -> bool {
        self.get(TermType::Web).is_some()
    }
}

fn find(slots: &[(TermType, Location)], term: TermType) -> Option<&Location> {
    slots.iter().find(|(t, _)| *t == term).map(|(_, l)| l)
}

/// One user's live terminals, seen under the lock of the user's shard.
pub struct Slots<'a>(&'a mut Vec<(TermType, Location)>);

impl Slots<'_> {
    pub fn get(&self, term: TermType) -> Option<&Location> {
        find(self.0, term)
    }

    /// Whether the user's Web terminal is online (the flag of PUSH and IM).
    pub fn web_online(&self) -> bool {
        self.get(TermType::Web).is_some()
    }

    /// Records a live terminal; returns the location it replaced, if another session held it.
    pub fn insert(&mut self, term: TermType, location: Location) -> Option<Location> {
        match self.0.iter_mut().find(|(t, _)| *t == term) {
            Some((_, slot)) => {
                let old = std::mem::replace(slot, location);
                (old.comet != slot.comet || old.session != slot.session).then_some(old)
            }
            None => {
                // Most users have one terminal: room for exactly one, not the four a first
                // `push` makes (192 bytes of every idle terminal where 48 do).
                self.0.reserve_exact(1);
                self.0.push((term, location));
                None
            }
        }
    }
}

/// The location table.
#[derive(Default)]
pub struct Sessions {
    users: ShardedMap<Arc<str>, UserSessions>,
}

impl Sessions {
    /// Runs `f` on a user's live terminals with the user's shard locked, so that deciding
    /// "live or stored" and acting on it cannot interleave with a registration of that user.
    pub fn locked<R>(&self, uid: &Arc<str>, f: impl FnOnce(&mut Slots<'_>) -> R) -> R {
        let mut shard = self.users.lock(uid);
        let user = shard.entry(uid.clone()).or_default();
        let result = f(&mut Slots(&mut user.slots));
        if user.slots.is_empty() {
            shard.remove(uid);
        }
        result
    }

    /// Runs `f` on a user's live terminals with the user's shard locked, like
    /// [`Sessions::locked`], for deciding without changing: a user with no live terminal costs
    /// no entry and no copy of the uid.
    pub fn viewed<R>(&self, uid: &str, f: impl FnOnce(View<'_>) -> R) -> R {
        let shard = self.users.lock(uid);
        f(match shard.get_key_value(uid) {
            Some((key, user)) => View {
                uid: Some(key),
                slots: &user.slots,
            },
            None => View {
                uid: None,
                slots: &[],
            },
        })
    }

    /// Records a live terminal; returns the location it replaced, if another session held it.
    pub fn insert(&self, uid: &Arc<str>, term: TermType, location: Location) -> Option<Location> {
        self.locked(uid, |slots| slots.insert(term, location))
    }

    /// Removes a terminal if it is still at `comet`/`session`; returns whether it was.
    pub fn remove_session(
        &self,
        uid: &str,
        term: TermType,
        comet: CometIdx,
        session: SessionId,
    ) -> bool {
        self.remove_where(uid, term, |l| l.comet == comet && l.session == session)
            .is_some()
    }

    /// Removes a terminal wherever it is; returns where it was.
    pub fn remove(&self, uid: &str, term: TermType) -> Option<Location> {
        self.remove_where(uid, term, |_| true)
    }

    /// Removes a terminal that registered with `token`; returns where it was.
    pub fn remove_with_token(&self, uid: &str, term: TermType, token: &str) -> Option<Location> {
        self.remove_where(uid, term, |l| &*l.token == token)
    }

    fn remove_where(
        &self,
        uid: &str,
        term: TermType,
        matches: impl Fn(&Location) -> bool,
    ) -> Option<Location> {
        let mut shard = self.users.lock(uid);
        let user = shard.get_mut(uid)?;
        let i = user
            .slots
            .iter()
            .position(|(t, l)| *t == term && matches(l))?;
        let (_, location) = user.slots.swap_remove(i);
        if user.slots.is_empty() {
            shard.remove(uid);
        }
        Some(location)
    }

    /// A user's live terminals.
    pub fn live(&self, uid: &str) -> Live {
        let mut live = Live::default();
        if let Some(user) = self.users.lock(uid).get(uid) {
            for (term, l) in &user.slots {
                live.0[term.index()] = Some((l.comet, l.session));
            }
        }
        live
    }

    /// A user's live terminals with where and since when each is live, in terminal-type order.
    pub fn terminals(&self, uid: &str) -> Vec<(TermType, CometIdx, u64)> {
        let mut out: Vec<(TermType, CometIdx, u64)> = self
            .users
            .lock(uid)
            .get(uid)
            .map(|user| {
                user.slots
                    .iter()
                    .map(|(term, l)| (*term, l.comet, l.since))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|(term, _, _)| term.bit());
        out
    }

    /// The comet holding any of the user's terminals.
    pub fn comet_of(&self, uid: &str) -> Option<CometIdx> {
        let shard = self.users.lock(uid);
        shard
            .get(uid)
            .and_then(|u| u.slots.first().map(|(_, l)| l.comet))
    }

    /// Removes every terminal on a comet; returns how many there were.
    pub fn remove_comet(&self, comet: CometIdx) -> usize {
        let mut removed = 0;
        self.users.each_shard(|shard| {
            shard.retain(|_, user| {
                let before = user.slots.len();
                user.slots.retain(|(_, l)| l.comet != comet);
                removed += before - user.slots.len();
                !user.slots.is_empty()
            })
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(comet: CometIdx, session: SessionId) -> Location {
        Location {
            comet,
            session,
            token: Arc::from("t"),
            since: 1_700_000_000_000 + session,
        }
    }

    #[test]
    fn insert_replace_and_remove() {
        let s = Sessions::default();
        let uid: Arc<str> = Arc::from("u");
        assert_eq!(s.insert(&uid, TermType::Android, at(1, 10)), None);
        assert_eq!(s.insert(&uid, TermType::Web, at(1, 11)), None);
        assert!(s.live("u").web_online());
        assert_eq!(
            s.terminals("u"),
            vec![
                (TermType::Android, 1, 1_700_000_000_010),
                (TermType::Web, 1, 1_700_000_000_011)
            ]
        );
        assert_eq!(
            s.insert(&uid, TermType::Android, at(2, 20)),
            Some(at(1, 10))
        );
        assert!(
            !s.remove_session("u", TermType::Android, 1, 10),
            "stale session"
        );
        assert_eq!(s.live("u").get(TermType::Android), Some((2, 20)));
        assert_eq!(s.remove_comet(1), 1);
        assert!(!s.live("u").web_online());
        assert!(s.remove_session("u", TermType::Android, 2, 20));
        assert_eq!(s.comet_of("u"), None);
    }
}
