//! WebSocket messages (SPEC §4): one JSON object `{"cmd", "tid", "data"}` per text frame, in one
//! of two framings.
//!
//! - compatible: the text is `base64(ring-xor(json))`, standard alphabet, padded;
//! - plain [ext]: the text is the JSON itself.
//!
//! The framing of a connection is detected from the first frame the terminal sends
//! ([`WebFraming::detect`]) and the server answers in it. Unknown `data` fields are ignored;
//! missing required ones are a [`WebError::MissingField`].

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::encoding::Encoding;
use crate::error::WebError;
use crate::message::{Down, MessageType, Register, Up};

/// Accepts padded and unpadded input; always writes padded.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How JSON messages are put in WebSocket text frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WebFraming {
    /// `base64(ring-xor(json))`, as the original galopush.
    #[default]
    Compatible,
    /// [ext] The JSON text itself.
    Plain,
}

impl WebFraming {
    /// The framing a terminal uses, from a frame it sent: plain when the first non-space
    /// character is `{`.
    pub fn detect(text: &str) -> WebFraming {
        if text.trim_start().starts_with('{') {
            WebFraming::Plain
        } else {
            WebFraming::Compatible
        }
    }

    /// The JSON bytes carried by a text frame.
    pub fn unwrap<'a>(self, text: &'a str) -> Result<Cow<'a, [u8]>, WebError> {
        match self {
            WebFraming::Plain => Ok(Cow::Borrowed(text.as_bytes())),
            WebFraming::Compatible => {
                let mut json = LENIENT_BASE64.decode(text.trim())?;
                Encoding::RingXor.decode(&mut json);
                Ok(Cow::Owned(json))
            }
        }
    }

    /// The text frame carrying `json`.
    pub fn wrap(self, mut json: Vec<u8>) -> String {
        match self {
            WebFraming::Plain => String::from_utf8(json)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            WebFraming::Compatible => {
                Encoding::RingXor.encode(&mut json);
                general_purpose::STANDARD.encode(json)
            }
        }
    }
}

#[derive(Deserialize)]
struct InEnvelope<'a> {
    cmd: Option<u8>,
    tid: Option<u32>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Every `data` field either direction may carry; each message picks what it needs.
#[derive(Deserialize, Default)]
struct InData {
    version: Option<u8>,
    #[serde(rename = "termType")]
    term_type: Option<u8>,
    id: Option<String>,
    token: Option<String>,
    code: Option<u8>,
    msg: Option<String>,
    offline: Option<u16>,
    flag: Option<u8>,
    reason: Option<u8>,
    reson: Option<u8>,
}

/// A parsed envelope: type, TID and the `data` fields (absent data reads as no fields).
struct Parsed {
    ty: MessageType,
    tid: u32,
    data: Option<InData>,
}

fn parse_envelope(json: &[u8]) -> Result<Parsed, WebError> {
    let envelope: InEnvelope<'_> = serde_json::from_slice(json)?;
    let cmd = envelope.cmd.ok_or(WebError::MissingEnvelopeField("cmd"))?;
    let ty = MessageType::from_u8(cmd).map_err(|_| WebError::UnknownCmd(cmd))?;
    let tid = envelope.tid.ok_or(WebError::MissingEnvelopeField("tid"))?;
    let data = match envelope.data {
        Some(raw) => serde_json::from_str::<Option<InData>>(raw.get())?,
        None => None,
    };
    Ok(Parsed { ty, tid, data })
}

impl Parsed {
    fn field<T>(
        &mut self,
        field: &'static str,
        take: impl FnOnce(&mut InData) -> Option<T>,
    ) -> Result<T, WebError> {
        self.data
            .as_mut()
            .and_then(take)
            .ok_or(WebError::MissingField {
                cmd: self.ty,
                field,
            })
    }

    fn optional<T>(&mut self, take: impl FnOnce(&mut InData) -> Option<T>) -> Option<T> {
        self.data.as_mut().and_then(take)
    }
}

/// Reads a message a terminal sent, from the JSON carried by a frame.
pub fn parse_up(json: &[u8]) -> Result<(u32, Up), WebError> {
    let mut p = parse_envelope(json)?;
    let up = match p.ty {
        MessageType::Register => Up::Register(Register {
            version: p.optional(|d| d.version).unwrap_or(0),
            term_type: p.field("termType", |d| d.term_type)?,
            id: p.field("id", |d| d.id.take())?,
            token: p.field("token", |d| d.token.take())?,
        }),
        MessageType::Ping => Up::Ping,
        MessageType::PushResp => Up::PushResp {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::CbResp => Up::CbResp {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::Im => Up::Im {
            msg: Bytes::from(p.field("msg", |d| d.msg.take())?),
        },
        MessageType::ImResp => Up::ImResp {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::KickResp => Up::KickResp {
            code: p.field("code", |d| d.code)?,
        },
        other => return Err(WebError::WrongDirection(other)),
    };
    Ok((p.tid, up))
}

/// Reads a message the comet sent, from the JSON carried by a frame (the terminal's side).
pub fn parse_down(json: &[u8]) -> Result<(u32, Down), WebError> {
    let mut p = parse_envelope(json)?;
    let down = match p.ty {
        MessageType::RegResp => Down::RegResp {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::Pong => Down::Pong {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::Push => Down::Push {
            msg: Bytes::from(p.field("msg", |d| d.msg.take())?),
            offline: p.optional(|d| d.offline).unwrap_or(0),
            flag: p.optional(|d| d.flag).unwrap_or(0),
        },
        MessageType::Callback => Down::Callback {
            msg: Bytes::from(p.field("msg", |d| d.msg.take())?),
        },
        MessageType::Im => Down::Im {
            msg: Bytes::from(p.field("msg", |d| d.msg.take())?),
            flag: p.optional(|d| d.flag).unwrap_or(0),
        },
        MessageType::ImResp => Down::ImResp {
            code: p.field("code", |d| d.code)?,
        },
        MessageType::Kick => Down::Kick {
            reason: p.field("reason", |d| d.reason.or(d.reson))?,
        },
        other => return Err(WebError::WrongDirection(other)),
    };
    Ok((p.tid, down))
}

#[derive(Serialize)]
struct OutEnvelope<D> {
    cmd: u8,
    tid: u32,
    data: D,
}

#[derive(Serialize)]
struct CodeData {
    code: u8,
}

#[derive(Serialize)]
struct NoData {}

#[derive(Serialize)]
struct MsgData<'a> {
    msg: Cow<'a, str>,
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

/// PUSH data: `offline` and `flag` are [ext] and left out when 0, so old clients see the
/// original's `{"msg": …}`.
#[derive(Serialize)]
struct PushData<'a> {
    msg: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_zero_u16")]
    offline: u16,
    #[serde(skip_serializing_if = "is_zero_u8")]
    flag: u8,
}

#[derive(Serialize)]
struct ImData<'a> {
    msg: Cow<'a, str>,
    #[serde(skip_serializing_if = "is_zero_u8")]
    flag: u8,
}

/// KICK data: `reson` repeats `reason` for old clients that read the misspelt name.
#[derive(Serialize)]
struct KickData {
    reason: u8,
    reson: u8,
}

#[derive(Serialize)]
struct RegisterData<'a> {
    version: u8,
    #[serde(rename = "termType")]
    term_type: u8,
    id: &'a str,
    token: &'a str,
}

fn to_json<D: Serialize>(ty: MessageType, tid: u32, data: D) -> Vec<u8> {
    let envelope = OutEnvelope {
        cmd: ty as u8,
        tid,
        data,
    };
    // Serializing these plain structs into a Vec cannot fail: no maps with non-string keys,
    // no fallible Serialize impls, no I/O.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

fn text(msg: &Bytes) -> Cow<'_, str> {
    String::from_utf8_lossy(msg)
}

/// The JSON of a message the comet sends.
pub fn down_json(tid: u32, msg: &Down) -> Vec<u8> {
    use crate::message::WireMessage;
    let ty = msg.message_type();
    match msg {
        Down::RegResp { code } | Down::Pong { code } | Down::ImResp { code } => {
            to_json(ty, tid, CodeData { code: *code })
        }
        Down::Push { offline, flag, msg } => to_json(
            ty,
            tid,
            PushData {
                msg: text(msg),
                offline: *offline,
                flag: *flag,
            },
        ),
        Down::Callback { msg } => to_json(ty, tid, MsgData { msg: text(msg) }),
        Down::Im { flag, msg } => to_json(
            ty,
            tid,
            ImData {
                msg: text(msg),
                flag: *flag,
            },
        ),
        Down::Kick { reason } => to_json(
            ty,
            tid,
            KickData {
                reason: *reason,
                reson: *reason,
            },
        ),
    }
}

/// The JSON of a message a terminal sends.
pub fn up_json(tid: u32, msg: &Up) -> Vec<u8> {
    use crate::message::WireMessage;
    let ty = msg.message_type();
    match msg {
        Up::Register(r) => to_json(
            ty,
            tid,
            RegisterData {
                version: r.version,
                term_type: r.term_type,
                id: &r.id,
                token: &r.token,
            },
        ),
        Up::Ping => to_json(ty, tid, NoData {}),
        Up::Im { msg } => to_json(ty, tid, MsgData { msg: text(msg) }),
        Up::PushResp { code }
        | Up::CbResp { code }
        | Up::ImResp { code }
        | Up::KickResp { code } => to_json(ty, tid, CodeData { code: *code }),
    }
}

/// Reads a text frame from a terminal.
pub fn decode_up(text: &str, framing: WebFraming) -> Result<(u32, Up), WebError> {
    parse_up(&framing.unwrap(text)?)
}

/// Reads a text frame from the comet (the terminal's side).
pub fn decode_down(text: &str, framing: WebFraming) -> Result<(u32, Down), WebError> {
    parse_down(&framing.unwrap(text)?)
}

/// The text frame for a message the comet sends.
pub fn encode_down(tid: u32, msg: &Down, framing: WebFraming) -> String {
    framing.wrap(down_json(tid, msg))
}

/// The text frame for a message a terminal sends.
pub fn encode_up(tid: u32, msg: &Up, framing: WebFraming) -> String {
    framing.wrap(up_json(tid, msg))
}
