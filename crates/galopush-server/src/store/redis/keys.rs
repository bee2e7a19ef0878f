//! The Redis store's key names, and the hash slots of Redis Cluster they fall in.
//!
//! Every key carries a hash tag (the text between its first `{` and the next `}`), and Redis
//! Cluster places a key by its tag alone: every key of one user carries the user's tag, so a user's
//! keys, and so every script call on one user, are in one slot. The offline ids of a user come
//! from the counter of the user's slot, which carries the slot's own tag (see [`slot_tag`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use galopush_protocol::TermType;

/// The number of hash slots of Redis Cluster.
const SLOTS: u16 = 16384;

/// The embedded bus's two queues.
#[derive(Clone, Copy, Debug)]
pub(super) enum Queue {
    Inbox,
    Outbox,
}

impl Queue {
    /// The queue's hash tag, shared by its messages and its counter.
    fn tag(self) -> &'static str {
        match self {
            Queue::Inbox => "inbox",
            Queue::Outbox => "outbox",
        }
    }
}

/// The key names under the configured prefix.
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn login(&self, uid: &str) -> String {
        self.user(uid, format_args!("login"))
    }

    pub(super) fn push(&self, uid: &str, term: TermType) -> String {
        self.user(uid, format_args!("push:{}", term.bit()))
    }

    pub(super) fn callbacks(&self, uid: &str, term: TermType) -> String {
        self.user(uid, format_args!("callbacks:{}", term.bit()))
    }

    pub(super) fn ims(&self, uid: &str, term: TermType) -> String {
        self.user(uid, format_args!("ims:{}", term.bit()))
    }

    /// The counter of offline ids and push versions for the users of `uid`'s slot.
    pub(super) fn ids(&self, uid: &str) -> String {
        let tag = slot_tag(slot_of(tag(uid).as_bytes()));
        format!("{}{{{tag}}}:seq", self.prefix)
    }

    /// A queue's messages.
    pub(super) fn queue(&self, queue: Queue) -> String {
        format!("{}{{{}}}:messages", self.prefix, queue.tag())
    }

    /// A queue's sequence counter.
    pub(super) fn queue_counter(&self, queue: Queue) -> String {
        format!("{}{{{}}}:seq", self.prefix, queue.tag())
    }

    /// `<prefix>{<tag>}:<what>`, a key of one user.
    fn user(&self, uid: &str, what: std::fmt::Arguments<'_>) -> String {
        let mut key = String::with_capacity(self.prefix.len() + uid.len() + 16);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(&tag(uid));
        // Writing to a String cannot fail.
        let _ = write!(key, "}}:{what}");
        key
    }

    /// The store-wide counter of the key scheme before hash tags; while it exists, the store
    /// holds keys under their old names (see [`Keys::renamed`]).
    pub(super) fn old_counter(&self) -> String {
        format!("{}seq", self.prefix)
    }

    /// A SCAN pattern matching every key under the prefix.
    pub(super) fn pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        pattern
    }

    /// The name a key of the scheme before hash tags has now, and the counter whose ids it
    /// holds (which must not hand out those ids again). `None` for anything else: keys of the
    /// current scheme (they begin with `{` after the prefix, which no old name did), the old
    /// counter itself, other software's keys.
    ///
    /// The old names were `login:<uid>`, `push:<bit>:<uid>`, `callbacks:<bit>:<uid>`,
    /// `ims:<bit>:<uid>`, `inbox`, `outbox` and `seq`.
    pub(super) fn renamed(&self, key: &str) -> Option<(String, Option<String>)> {
        let name = key.strip_prefix(&self.prefix)?;
        match name {
            "inbox" => return Some(self.renamed_queue(Queue::Inbox)),
            "outbox" => return Some(self.renamed_queue(Queue::Outbox)),
            _ => {}
        }
        if let Some(uid) = name.strip_prefix("login:") {
            return Some((self.login(uid), None));
        }
        let (kind, rest) = name.split_once(':')?;
        if !matches!(kind, "push" | "callbacks" | "ims") {
            return None;
        }
        let (bit, uid) = rest.split_once(':')?;
        if bit.is_empty() || !bit.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((
            self.user(uid, format_args!("{kind}:{bit}")),
            Some(self.ids(uid)),
        ))
    }

    fn renamed_queue(&self, queue: Queue) -> (String, Option<String>) {
        (self.queue(queue), Some(self.queue_counter(queue)))
    }
}

/// A uid as the hash tag of its keys: `%` and `}` are written `%25` and `%7D`, so the tag never
/// ends early and two uids never share one; the empty uid is `%`, which no other uid gives, so
/// the tag is never empty (Redis would then place each key by its whole name).
fn tag(uid: &str) -> Cow<'_, str> {
    if uid.is_empty() {
        return Cow::Borrowed("%");
    }
    if !uid.contains(['%', '}']) {
        return Cow::Borrowed(uid);
    }
    let mut tag = String::with_capacity(uid.len() + 8);
    for c in uid.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    Cow::Owned(tag)
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 of the hash tag if the key has a
/// non-empty one, else of the whole key.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    slot_of(tagged.unwrap_or(key))
}

/// The slot of a hash tag.
fn slot_of(tag: &[u8]) -> u16 {
    crc16(tag) % SLOTS
}

/// CRC16-CCITT (XMODEM), the checksum of Redis Cluster's key placement.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The tag of a slot's own keys (its id counter): the smallest decimal number in that slot.
/// Fixed for ever, as every router must name the same counter.
fn slot_tag(slot: u16) -> u32 {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut left = tags.len();
        let mut text = String::with_capacity(10);
        // The numbers up to 109,757 give every slot one.
        for n in 0u32.. {
            text.clear();
            let _ = write!(text, "{n}");
            let tag = &mut tags[usize::from(slot_of(text.as_bytes()))];
            if *tag == u32::MAX {
                *tag = n;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        tags
    });
    tags[usize::from(slot % SLOTS)]
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    use super::*;

    fn same_slot_as_redis(key: &[u8]) -> bool {
        Route::new(key_slot(key), SlotAddr::Master) == Route::with_key(key, SlotAddr::Master)
    }

    #[test]
    fn slots_are_those_of_redis_cluster() {
        // The example of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        for key in [
            &b"alice"[..],
            b"{alice}:login",
            b"galopush:{alice}:push:2",
            b"a{}b",
            b"{}{x}",
            b"no tag",
            b"{unclosed",
            b"",
        ] {
            assert!(same_slot_as_redis(key), "{key:?}");
        }
    }

    #[test]
    fn every_slot_has_a_tag_in_it() {
        for slot in 0..SLOTS {
            let tag = slot_tag(slot).to_string();
            assert_eq!(slot_of(tag.as_bytes()), slot);
        }
        assert_eq!((0..SLOTS).map(slot_tag).max(), Some(109_757));
    }

    #[test]
    fn a_users_keys_and_counter_share_one_slot() {
        let keys = Keys::new("galopush:");
        let t = TermType::Ios;
        for uid in ["alice", "", "}", "a}b", "%7D", "%", "{x}", "名前"] {
            let all = [
                keys.login(uid),
                keys.push(uid, t),
                keys.callbacks(uid, t),
                keys.ims(uid, t),
                keys.ids(uid),
            ];
            let slot = key_slot(all[0].as_bytes());
            for key in &all {
                assert_eq!(key_slot(key.as_bytes()), slot, "{uid:?}: {key}");
                assert!(same_slot_as_redis(key.as_bytes()));
            }
        }
        assert_eq!(keys.login("alice"), "galopush:{alice}:login");
        assert_eq!(keys.ims("a}b", t), "galopush:{a%7Db}:ims:2");
        // Escaping keeps uids apart.
        assert_ne!(keys.login("}"), keys.login("%7D"));
        assert_ne!(keys.login(""), keys.login("%"));
        for q in [Queue::Inbox, Queue::Outbox] {
            assert_eq!(
                key_slot(keys.queue(q).as_bytes()),
                key_slot(keys.queue_counter(q).as_bytes())
            );
        }
    }

    #[test]
    fn old_names_map_to_new_ones() {
        let keys = Keys::new("g:");
        let t = TermType::Android;
        let renamed = |old: &str| keys.renamed(old);
        assert_eq!(renamed("g:login:a:b"), Some((keys.login("a:b"), None)));
        assert_eq!(
            renamed("g:push:1:u"),
            Some((keys.push("u", t), Some(keys.ids("u"))))
        );
        assert_eq!(
            renamed("g:callbacks:1:{u}"),
            Some((keys.callbacks("{u}", t), Some(keys.ids("{u}"))))
        );
        assert_eq!(
            renamed("g:ims:1:"),
            Some((keys.ims("", t), Some(keys.ids(""))))
        );
        assert_eq!(
            renamed("g:inbox"),
            Some((
                keys.queue(Queue::Inbox),
                Some(keys.queue_counter(Queue::Inbox))
            ))
        );
        for other in [
            "g:seq",
            "g:{u}:login",
            "g:{inbox}:messages",
            "g:push:x:u",
            "g:push:1",
            "g:other:1:u",
            "h:login:u",
        ] {
            assert_eq!(renamed(other), None, "{other}");
        }
        assert_eq!(Keys::new("a*b?[c]\\:").pattern(), "a\\*b\\?\\[c\\]\\\\:*");
    }
}
