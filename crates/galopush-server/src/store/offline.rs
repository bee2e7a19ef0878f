//! The offline rules of SPEC §6 as a value: one [`Offline`] box per (uid, terminal type) holding
//! the coalesced push, the de-duplicated callbacks and the latest IMs, with a compact binary form
//! for stores that keep the box as one value.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use galopush_protocol::TermType;

use super::StoreError;

/// The bounds of SPEC §6 (`delivery.max_offline_callbacks`, `delivery.max_offline_im`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineLimits {
    pub max_callbacks: usize,
    pub max_ims: usize,
}

impl Default for OfflineLimits {
    fn default() -> Self {
        OfflineLimits {
            max_callbacks: 100,
            max_ims: 50,
        }
    }
}

/// A message that could not be delivered live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineWrite {
    pub uid: Arc<str>,
    pub term: TermType,
    pub message: OfflineMessage,
}

/// What is stored, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineMessage {
    Push { body: Bytes },
    Callback { body: Bytes },
    Im { flag: u8, body: Bytes },
}

/// The coalesced push: how many were missed and the latest body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPush {
    pub count: u32,
    pub body: Bytes,
    /// Store-wide sequence number of the latest push; changes whenever one is added.
    pub version: u64,
}

/// A stored callback or IM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// Store-wide sequence number, used to remove exactly this item.
    pub id: u64,
    /// The Web-online flag when stored (IMs); 0 for callbacks.
    pub flag: u8,
    pub body: Bytes,
}

/// Which stored message a delivery came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineKey {
    /// The push as delivered: removed if still at `version`, else its count reduced by `count`.
    Push {
        version: u64,
        count: u32,
    },
    Callback {
        id: u64,
    },
    Im {
        id: u64,
    },
}

/// One terminal's stored messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offline {
    pub push: Option<StoredPush>,
    pub callbacks: VecDeque<StoredItem>,
    pub ims: VecDeque<StoredItem>,
}

impl Offline {
    pub fn is_empty(&self) -> bool {
        self.push.is_none() && self.callbacks.is_empty() && self.ims.is_empty()
    }

    /// Applies the offline rule for one message; `id` is a fresh store-wide sequence number.
    pub fn apply(&mut self, message: &OfflineMessage, id: u64, limits: OfflineLimits) {
        match message {
            OfflineMessage::Push { body } => {
                let count = self.push.as_ref().map_or(0, |p| p.count);
                self.push = Some(StoredPush {
                    count: count.saturating_add(1),
                    body: body.clone(),
                    version: id,
                });
            }
            OfflineMessage::Callback { body } => {
                if self.callbacks.iter().any(|c| c.body == *body) {
                    return;
                }
                self.callbacks.push_back(StoredItem {
                    id,
                    flag: 0,
                    body: body.clone(),
                });
                while self.callbacks.len() > limits.max_callbacks {
                    self.callbacks.pop_front();
                }
            }
            OfflineMessage::Im { flag, body } => {
                self.ims.push_back(StoredItem {
                    id,
                    flag: *flag,
                    body: body.clone(),
                });
                while self.ims.len() > limits.max_ims {
                    self.ims.pop_front();
                }
            }
        }
    }

    /// Removes a delivered message; returns whether anything changed.
    pub fn remove(&mut self, key: &OfflineKey) -> bool {
        match key {
            OfflineKey::Push { version, count } => match &mut self.push {
                Some(p) if p.version == *version => {
                    self.push = None;
                    true
                }
                Some(p) => {
                    // Newer pushes arrived after this one was sent: keep the latest body and
                    // count only what the terminal has not been told about.
                    p.count = p.count.saturating_sub(*count).max(1);
                    true
                }
                None => false,
            },
            OfflineKey::Callback { id } => remove_item(&mut self.callbacks, *id),
            OfflineKey::Im { id } => remove_item(&mut self.ims, *id),
        }
    }

    /// The compact binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.put_u8(FORMAT_VERSION);
        match &self.push {
            Some(p) => {
                out.put_u8(1);
                out.put_u32(p.count);
                out.put_u64(p.version);
                put_bytes(&mut out, &p.body);
            }
            None => out.put_u8(0),
        }
        for list in [&self.callbacks, &self.ims] {
            out.put_u32(list.len() as u32);
            for item in list {
                out.put_u64(item.id);
                out.put_u8(item.flag);
                put_bytes(&mut out, &item.body);
            }
        }
        out
    }

    /// Reads the compact binary form.
    pub fn decode(mut data: &[u8]) -> Result<Offline, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("offline box: {what}"));
        if data.is_empty() || data.get_u8() != FORMAT_VERSION {
            return Err(corrupt("unknown format"));
        }
        let mut out = Offline::default();
        if take_u8(&mut data).ok_or_else(|| corrupt("truncated push"))? == 1 {
            let count = take_u32(&mut data).ok_or_else(|| corrupt("truncated push"))?;
            let version = take_u64(&mut data).ok_or_else(|| corrupt("truncated push"))?;
            let body = take_bytes(&mut data).ok_or_else(|| corrupt("truncated push"))?;
            out.push = Some(StoredPush {
                count,
                body,
                version,
            });
        }
        for list in [&mut out.callbacks, &mut out.ims] {
            let n = take_u32(&mut data).ok_or_else(|| corrupt("truncated list"))?;
            for _ in 0..n {
                let id = take_u64(&mut data).ok_or_else(|| corrupt("truncated item"))?;
                let flag = take_u8(&mut data).ok_or_else(|| corrupt("truncated item"))?;
                let body = take_bytes(&mut data).ok_or_else(|| corrupt("truncated item"))?;
                list.push_back(StoredItem { id, flag, body });
            }
        }
        Ok(out)
    }

    fn encoded_len_hint(&self) -> usize {
        let items: usize = self
            .callbacks
            .iter()
            .chain(&self.ims)
            .map(|i| 13 + i.body.len())
            .sum();
        16 + self.push.as_ref().map_or(0, |p| p.body.len()) + 8 + items
    }
}

const FORMAT_VERSION: u8 = 1;

fn remove_item(list: &mut VecDeque<StoredItem>, id: u64) -> bool {
    let before = list.len();
    list.retain(|i| i.id != id);
    list.len() != before
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn take_u8(data: &mut &[u8]) -> Option<u8> {
    (data.remaining() >= 1).then(|| data.get_u8())
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    (data.remaining() >= 4).then(|| data.get_u32())
}

fn take_u64(data: &mut &[u8]) -> Option<u64> {
    (data.remaining() >= 8).then(|| data.get_u64())
}

fn take_bytes(data: &mut &[u8]) -> Option<Bytes> {
    let n = take_u32(data)? as usize;
    if data.remaining() < n {
        return None;
    }
    let b = Bytes::copy_from_slice(&data[..n]);
    data.advance(n);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(b: &str) -> OfflineMessage {
        OfflineMessage::Push {
            body: Bytes::from(b.to_owned()),
        }
    }

    #[test]
    fn pushes_coalesce_with_a_counter() {
        let mut o = Offline::default();
        for (i, b) in ["a", "b", "c"].into_iter().enumerate() {
            o.apply(&push(b), i as u64 + 1, OfflineLimits::default());
        }
        let p = o.push.clone().expect("push");
        assert_eq!((p.count, &p.body[..], p.version), (3, &b"c"[..], 3));
        o.apply(&push("d"), 9, OfflineLimits::default());
        assert!(o.remove(&OfflineKey::Push {
            version: 3,
            count: 3
        }));
        let p = o.push.clone().expect("newer push kept");
        assert_eq!((p.count, &p.body[..]), (1, &b"d"[..]));
        assert!(o.remove(&OfflineKey::Push {
            version: 9,
            count: 1
        }));
        assert!(o.is_empty());
    }

    #[test]
    fn callbacks_dedupe_and_bound() {
        let limits = OfflineLimits {
            max_callbacks: 3,
            max_ims: 2,
        };
        let mut o = Offline::default();
        for (i, b) in ["x", "y", "x", "z", "w"].into_iter().enumerate() {
            let body = Bytes::from(b.to_owned());
            o.apply(&OfflineMessage::Callback { body }, i as u64, limits);
        }
        let bodies: Vec<_> = o.callbacks.iter().map(|c| c.body.clone()).collect();
        assert_eq!(bodies, vec!["y", "z", "w"]);
        for i in 0..4u64 {
            let body = Bytes::from(format!("im{i}"));
            o.apply(&OfflineMessage::Im { flag: 1, body }, 10 + i, limits);
        }
        let ims: Vec<_> = o.ims.iter().map(|c| (c.id, c.body.clone())).collect();
        assert_eq!(
            ims,
            vec![(12, Bytes::from("im2")), (13, Bytes::from("im3"))]
        );
        assert!(o.remove(&OfflineKey::Im { id: 12 }));
        assert!(!o.remove(&OfflineKey::Im { id: 12 }));
    }

    #[test]
    fn binary_form_round_trips_and_rejects_truncation() {
        let mut o = Offline::default();
        let l = OfflineLimits::default();
        o.apply(&push("p"), 1, l);
        o.apply(&OfflineMessage::Callback { body: "c".into() }, 2, l);
        o.apply(
            &OfflineMessage::Im {
                flag: 1,
                body: "i".into(),
            },
            3,
            l,
        );
        let bytes = o.encode();
        assert_eq!(Offline::decode(&bytes).expect("decodes"), o);
        for cut in 0..bytes.len() {
            assert!(Offline::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
