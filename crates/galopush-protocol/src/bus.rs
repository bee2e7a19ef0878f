//! Business messages on the bus (SPEC §7), as serde types with the exact JSON field names.
//!
//! Bodies travel as raw JSON or as base64 of the JSON (the original encodes every body in
//! base64): [`decode`] accepts both, [`encode`] writes either.

use base64::Engine;
use base64::engine::general_purpose;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::BusError;

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

/// `push`, `callback` and `msgDownward`: a body for a list of receivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downward {
    pub receivers: Vec<Receiver>,
    #[serde(default)]
    pub flag: u8,
    pub body: String,
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
