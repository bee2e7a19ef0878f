//! Business messages on the bus (SPEC §7), as serde types with the exact JSON field names.
//!
//! Bodies travel as raw JSON or as base64 of the JSON (the original encodes every body in
//! base64): [`decode`] accepts both, [`encode`] writes either. [`split_mpub`] cuts an `/mpub`
//! body into its messages. Down-messages, read once per delivery, have a reader of their own
//! ([`decode_downward`]).

use base64::Engine;
use base64::engine::general_purpose;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BusError;

mod downward;

/// `userOnlineState`: the business side logged a terminal in (or [ext] out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOnlineState {
    pub uid: String,
    pub termtype: u8,
    /// The token the terminal will REGISTER with.
    #[serde(default)]
    pub code: String,
    #[serde(rename = "deviceToken", default)]
    pub device_token: String,
    pub online: bool,
}

/// One receiver of a down-message: a user and a termtype mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receiver {
    pub uid: String,
    pub termtype: u8,
}

/// One receiver in a [`Receivers`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReceiverRef<'a> {
    pub uid: &'a str,
    pub termtype: u8,
}

/// The receivers of a down-message, every uid in one string: reading a broadcast to 10000
/// users makes two growing buffers instead of 10000 strings (in the JSON the list is the usual
/// `[{"uid": str, "termtype": int}]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receivers {
    uids: String,
    /// Where each uid ends in `uids`, and its termtype mask.
    ends: Vec<(u32, u8)>,
}

impl Receivers {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds a receiver; `false` (and nothing added) once the uids would pass 4 GiB together.
    pub fn push(&mut self, uid: &str, termtype: u8) -> bool {
        let Ok(end) = u32::try_from(self.uids.len() + uid.len()) else {
            return false;
        };
        self.uids.push_str(uid);
        self.ends.push((end, termtype));
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = ReceiverRef<'_>> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(end, termtype)| {
            let uid = &self.uids[start..end as usize];
            start = end as usize;
            ReceiverRef { uid, termtype }
        })
    }
}

impl From<Vec<Receiver>> for Receivers {
    fn from(list: Vec<Receiver>) -> Receivers {
        let mut out = Receivers::default();
        for r in &list {
            out.push(&r.uid, r.termtype);
        }
        out
    }
}

impl Serialize for Receivers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Receivers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Receivers, D::Error> {
        /// A receiver as read: the uid borrowed from the input unless it had escapes.
        #[derive(Deserialize)]
        struct Incoming<'a> {
            #[serde(borrow)]
            uid: std::borrow::Cow<'a, str>,
            termtype: u8,
        }

        struct List;

        impl<'de> serde::de::Visitor<'de> for List {
            type Value = Receivers;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of receivers")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Receivers, A::Error> {
                let mut out = Receivers::default();
                // Not trusted beyond what a read-ahead should reserve.
                out.ends.reserve(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(r) = seq.next_element::<Incoming<'de>>()? {
                    if !out.push(&r.uid, r.termtype) {
                        return Err(serde::de::Error::custom("receivers' uids pass 4 GiB"));
                    }
                }
                Ok(out)
            }
        }

        deserializer.deserialize_seq(List)
    }
}

/// `push`, `callback` and `msgDownward`: a body for a list of receivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downward {
    pub receivers: Receivers,
    #[serde(default)]
    pub flag: u8,
    pub body: String,
    /// [ext] The business side's name for the message, repeated in its delivery reports
    /// (SPEC §12); at most [`MAX_REPORT_ID`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The longest `id` a down-message may carry, in bytes.
pub const MAX_REPORT_ID: usize = 64;

/// [ext] What became of a down-message for one receiving terminal (SPEC §12), published on
/// `topics.delivery_report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryReport<'a> {
    /// The down-message's `id`; `null` when it had none.
    pub id: Option<&'a str>,
    pub uid: &'a str,
    pub termtype: u8,
    /// `push`, `callback` or `im`.
    pub kind: &'static str,
    /// `acked`, `stored` or `dropped`.
    pub outcome: &'static str,
    /// When it happened, in ms since the Unix epoch.
    pub at: u64,
}

/// The `msg` of a `sessionTimeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTimeoutMsg {
    pub ctype: u8,
    pub uid: String,
    #[serde(rename = "sessionId", default)]
    pub session_id: String,
    #[serde(default)]
    pub flag: u8,
    /// Fields this version does not know, kept so the answer is the same object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `sessionTimeout`: asks whether a terminal is live; answered on `back_topic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionTimeout {
    #[serde(rename = "backTopic")]
    pub back_topic: String,
    #[serde(default)]
    pub key: String,
    pub msg: SessionTimeoutMsg,
    /// Fields this version does not know, kept so the answer is the same object.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `msgUpward`: an IM a terminal sent, for the business side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgUpward {
    pub uid: String,
    pub termtype: u8,
    pub body: String,
}

/// The JSON text inside a bus body: the body itself when it starts (after spaces) with `{`,
/// else the base64 it decodes from.
pub fn unwrap_json(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, BusError> {
    let trimmed = payload.trim_ascii();
    if trimmed.first() == Some(&b'{') {
        Ok(std::borrow::Cow::Borrowed(trimmed))
    } else {
        Ok(std::borrow::Cow::Owned(
            general_purpose::STANDARD.decode(trimmed)?,
        ))
    }
}

/// Reads a bus body, raw JSON or base64 JSON.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, BusError> {
    Ok(serde_json::from_slice(&unwrap_json(payload)?)?)
}

/// Reads a down-message's bus body (`push`, `callback`, `msgDownward`), raw JSON or base64
/// JSON: the same as [`decode`], in under half the instructions for the usual shape (read by a
/// reader of its own; anything else goes to serde_json).
pub fn decode_downward(payload: &[u8]) -> Result<Downward, BusError> {
    let json = unwrap_json(payload)?;
    match downward::read(&json) {
        Some(message) => Ok(message),
        None => Ok(serde_json::from_slice(&json)?),
    }
}

/// The messages of an `/mpub` body (nsqd's format, SPEC §8): its non-empty lines, without their
/// `\r\n` or `\n`.
pub fn split_mpub(body: &Bytes) -> Vec<Bytes> {
    let mut lines: Vec<Bytes> = Vec::new();
    let mut start = 0;
    // memchr finds the newlines of a megabyte broadcast batch a word at a time.
    for i in memchr::memchr_iter(b'\n', body) {
        lines.push(body.slice(start..i));
        start = i + 1;
    }
    if start < body.len() {
        lines.push(body.slice(start..));
    }
    lines
        .into_iter()
        .map(|l| match l.last() {
            Some(b'\r') => l.slice(..l.len() - 1),
            _ => l,
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Writes a bus body: base64 of the JSON when `base64` is set, the raw JSON otherwise.
pub fn encode<T: Serialize>(msg: &T, base64: bool) -> Vec<u8> {
    // These types serialize infallibly: string keys, plain values, no I/O.
    let json = serde_json::to_vec(msg).unwrap_or_default();
    if base64 {
        general_purpose::STANDARD.encode(json).into_bytes()
    } else {
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeout_answers_carry_the_numbers_of_unknown_fields_unchanged() {
        let json = br#"{"backTopic":"b","msg":{"ctype":1,"uid":"u","big":7.77e68},"n":777000000000000000000000000000000000000000000000004099276460824344802}"#;
        let question: SessionTimeout = decode(json).expect("valid");
        assert_eq!(question.msg.extra["big"].as_f64(), Some(7.77e68));
        assert_eq!(question.extra["n"].as_f64(), Some(7.77e68));
        for base64 in [false, true] {
            let again: SessionTimeout = decode(&encode(&question, base64)).expect("written back");
            assert_eq!(again, question);
        }
    }

    #[test]
    fn mpub_lines() {
        let body = Bytes::from_static(b"a\r\n\nb\nc");
        assert_eq!(split_mpub(&body), ["a", "b", "c"].map(Bytes::from));
        assert!(split_mpub(&Bytes::from_static(b"\n\r\n")).is_empty());
    }

    #[test]
    fn receivers_read_borrowed_or_escaped_and_write_back_the_same_json() {
        let json = br#"{"receivers":[{"uid":"a","termtype":1},{"termtype":12,"uid":"b\"\u00e9"},{"uid":"","termtype":0,"extra":[1]}],"body":"x"}"#;
        let down: Downward = decode(json).expect("valid");
        let got: Vec<(&str, u8)> = down.receivers.iter().map(|r| (r.uid, r.termtype)).collect();
        assert_eq!(got, [("a", 1), ("b\"é", 12), ("", 0)]);
        assert_eq!(down.receivers.len(), 3);
        let again: Downward = decode(&encode(&down, false)).expect("written back");
        assert_eq!(again, down);
        let value: serde_json::Value = serde_json::from_slice(&encode(&down, false)).expect("json");
        assert_eq!(
            value["receivers"][1],
            serde_json::json!({"uid": "b\"é", "termtype": 12})
        );
    }

    #[test]
    fn malformed_receivers_are_refused() {
        for json in [
            &br#"{"receivers":[{"uid":"a"}],"body":"x"}"#[..],
            br#"{"receivers":[{"termtype":1}],"body":"x"}"#,
            br#"{"receivers":{"uid":"a","termtype":1},"body":"x"}"#,
            br#"{"receivers":[{"uid":7,"termtype":1}],"body":"x"}"#,
            br#"{"receivers":[{"uid":"a","termtype":256}],"body":"x"}"#,
        ] {
            assert!(
                decode::<Downward>(json).is_err(),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn a_down_message_id_is_optional_and_written_back_only_when_given() {
        let down: Downward =
            decode(br#"{"receivers":[],"body":"x","id":"order-7"}"#).expect("valid");
        assert_eq!(down.id.as_deref(), Some("order-7"));
        assert!(String::from_utf8_lossy(&encode(&down, false)).contains(r#""id":"order-7""#));
        let plain: Downward = decode(br#"{"receivers":[],"body":"x"}"#).expect("valid");
        assert_eq!(plain.id, None);
        assert!(!String::from_utf8_lossy(&encode(&plain, false)).contains("id"));
        assert!(decode::<Downward>(br#"{"receivers":[],"body":"x","id":7}"#).is_err());
    }

    #[test]
    fn a_report_without_id_says_null() {
        let report = DeliveryReport {
            id: None,
            uid: "u",
            termtype: 2,
            kind: "push",
            outcome: "stored",
            at: 5,
        };
        assert_eq!(
            String::from_utf8_lossy(&encode(&report, false)),
            r#"{"id":null,"uid":"u","termtype":2,"kind":"push","outcome":"stored","at":5}"#
        );
    }

    #[test]
    fn an_empty_list_is_a_list() {
        let down: Downward = decode(br#"{"receivers":[],"body":""}"#).expect("valid");
        assert!(down.receivers.is_empty());
        assert_eq!(down.receivers.iter().count(), 0);
    }
}
