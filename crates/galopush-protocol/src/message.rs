//! The twelve message types and their bodies (SPEC §3), split by direction.
//!
//! [`Up`] is what a terminal sends, [`Down`] what the comet sends. Type 9 (IM) and 10 (IMRESP)
//! travel both ways with direction-specific bodies, which is why the split is by direction and
//! not by type. Bodies here are plain; [`crate::frame`] applies the encodings.

use bytes::{Buf, BufMut, Bytes};

use crate::error::{EncodeError, FrameError};

/// Width of REGISTER's NUL-padded `id` and `token` fields.
pub const REGISTER_FIELD_LEN: usize = 32;
/// Length of a REGISTER body: version, terminal type, id, token.
pub const REGISTER_BODY_LEN: usize = 2 + 2 * REGISTER_FIELD_LEN;

/// The message type in the low six bits of a frame's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Register = 1,
    RegResp = 2,
    Ping = 3,
    Pong = 4,
    Push = 5,
    PushResp = 6,
    Callback = 7,
    CbResp = 8,
    Im = 9,
    ImResp = 10,
    Kick = 11,
    KickResp = 12,
}

impl MessageType {
    /// The type for a wire number, or the reason it is not one.
    pub fn from_u8(n: u8) -> Result<MessageType, FrameError> {
        Ok(match n {
            0 => return Err(FrameError::ZeroType),
            1 => MessageType::Register,
            2 => MessageType::RegResp,
            3 => MessageType::Ping,
            4 => MessageType::Pong,
            5 => MessageType::Push,
            6 => MessageType::PushResp,
            7 => MessageType::Callback,
            8 => MessageType::CbResp,
            9 => MessageType::Im,
            10 => MessageType::ImResp,
            11 => MessageType::Kick,
            12 => MessageType::KickResp,
            other => return Err(FrameError::UnknownType(other)),
        })
    }

    /// Whether a terminal may send this type.
    pub fn is_up(self) -> bool {
        matches!(
            self,
            MessageType::Register
                | MessageType::Ping
                | MessageType::PushResp
                | MessageType::CbResp
                | MessageType::Im
                | MessageType::ImResp
                | MessageType::KickResp
        )
    }

    /// Whether the comet may send this type.
    pub fn is_down(self) -> bool {
        matches!(
            self,
            MessageType::RegResp
                | MessageType::Pong
                | MessageType::Push
                | MessageType::Callback
                | MessageType::Im
                | MessageType::ImResp
                | MessageType::Kick
        )
    }
}

/// The body of a REGISTER: who the terminal is and the token it logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub version: u8,
    /// The raw terminal type byte; the comet checks that it is exactly one type bit.
    pub term_type: u8,
    pub id: String,
    pub token: String,
}

/// A message from a terminal to the comet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    Register(Register),
    Ping,
    PushResp { code: u8 },
    CbResp { code: u8 },
    Im { msg: Bytes },
    ImResp { code: u8 },
    KickResp { code: u8 },
}

/// A message from the comet to a terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    RegResp {
        code: u8,
    },
    Pong {
        code: u8,
    },
    Push {
        /// Pushes coalesced while the terminal was offline; 0 when live.
        offline: u16,
        /// 1 when the same user's Web terminal is online.
        flag: u8,
        msg: Bytes,
    },
    Callback {
        msg: Bytes,
    },
    Im {
        flag: u8,
        msg: Bytes,
    },
    ImResp {
        code: u8,
    },
    Kick {
        reason: u8,
    },
}

/// REGRESP code: registered.
pub const REGRESP_OK: u8 = 0;
/// REGRESP code: authentication failed.
pub const REGRESP_AUTH_FAILED: u8 = 3;
/// PONG code: registered.
pub const PONG_OK: u8 = 0;
/// PONG code: not registered yet.
pub const PONG_NOT_REGISTERED: u8 = 1;
/// IMRESP code down: the bus accepted the IM.
pub const IMRESP_ACCEPTED: u8 = 0;
/// IMRESP code down: the IM could not be handed to the bus.
pub const IMRESP_FAILED: u8 = 1;

/// Why the comet kicks a terminal (KICK's reason byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KickReason {
    /// Another login of the same terminal type.
    RepeatLogin = 1,
    /// Android and iOS exclude each other.
    MutualExclusion = 2,
    /// The business side timed the session out.
    SessionTimeout = 3,
    /// [ext] The business side logged the terminal out.
    LoggedOut = 4,
}

/// A message type that can be the payload of a [`crate::Frame`] in one direction.
pub trait WireMessage: Sized {
    /// The message's type number.
    fn message_type(&self) -> MessageType;
    /// Whether this direction carries `ty`.
    fn carries(ty: MessageType) -> bool;
    /// Length of the plain body.
    fn body_len(&self) -> usize;
    /// Appends the plain body.
    fn put_body<B: BufMut>(&self, dst: &mut B) -> Result<(), EncodeError>;
    /// Reads a plain body of a type this direction carries.
    fn parse_body(ty: MessageType, body: Bytes) -> Result<Self, FrameError>;
    /// Reads a plain body of a type whose body is one code byte (the acks and answers, and
    /// PING's empty one) from a slice, keeping nothing of it; `None` for the types whose body is
    /// kept, which [`WireMessage::parse_body`] reads.
    fn parse_code(ty: MessageType, body: &[u8]) -> Option<Result<Self, FrameError>>;
}

fn need(ty: MessageType, body: &[u8], need: usize) -> Result<(), FrameError> {
    if body.len() < need {
        return Err(FrameError::BodyTooShort {
            ty,
            len: body.len(),
            need,
        });
    }
    Ok(())
}

fn code(ty: MessageType, body: &[u8]) -> Result<u8, FrameError> {
    need(ty, body, 1)?;
    Ok(body[0])
}

/// Reads a NUL-padded text field: the bytes up to the first NUL.
fn padded_text(field: &'static str, raw: &[u8]) -> Result<String, FrameError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end])
        .map(str::to_owned)
        .map_err(|_| FrameError::InvalidText { field })
}

fn put_padded<B: BufMut>(dst: &mut B, field: &'static str, text: &str) -> Result<(), EncodeError> {
    let bytes = text.as_bytes();
    if bytes.len() > REGISTER_FIELD_LEN {
        return Err(EncodeError::FieldTooLong {
            field,
            len: bytes.len(),
            max: REGISTER_FIELD_LEN,
        });
    }
    dst.put_slice(bytes);
    dst.put_bytes(0, REGISTER_FIELD_LEN - bytes.len());
    Ok(())
}

impl Register {
    /// Checks that id and token fit their 32-byte fields.
    pub fn validate(&self) -> Result<(), EncodeError> {
        for (field, text) in [("id", &self.id), ("token", &self.token)] {
            if text.len() > REGISTER_FIELD_LEN {
                return Err(EncodeError::FieldTooLong {
                    field,
                    len: text.len(),
                    max: REGISTER_FIELD_LEN,
                });
            }
        }
        Ok(())
    }
}

impl WireMessage for Up {
    fn message_type(&self) -> MessageType {
        match self {
            Up::Register(_) => MessageType::Register,
            Up::Ping => MessageType::Ping,
            Up::PushResp { .. } => MessageType::PushResp,
            Up::CbResp { .. } => MessageType::CbResp,
            Up::Im { .. } => MessageType::Im,
            Up::ImResp { .. } => MessageType::ImResp,
            Up::KickResp { .. } => MessageType::KickResp,
        }
    }

    fn carries(ty: MessageType) -> bool {
        ty.is_up()
    }

    fn body_len(&self) -> usize {
        match self {
            Up::Register(_) => REGISTER_BODY_LEN,
            Up::Ping => 0,
            Up::Im { msg } => msg.len(),
            Up::PushResp { .. } | Up::CbResp { .. } | Up::ImResp { .. } | Up::KickResp { .. } => 1,
        }
    }

    fn put_body<B: BufMut>(&self, dst: &mut B) -> Result<(), EncodeError> {
        match self {
            Up::Register(r) => {
                r.validate()?;
                dst.put_u8(r.version);
                dst.put_u8(r.term_type);
                put_padded(dst, "id", &r.id)?;
                put_padded(dst, "token", &r.token)?;
            }
            Up::Ping => {}
            Up::Im { msg } => dst.put_slice(msg),
            Up::PushResp { code }
            | Up::CbResp { code }
            | Up::ImResp { code }
            | Up::KickResp { code } => dst.put_u8(*code),
        }
        Ok(())
    }

    fn parse_body(ty: MessageType, mut body: Bytes) -> Result<Self, FrameError> {
        if let Some(coded) = Up::parse_code(ty, &body) {
            return coded;
        }
        Ok(match ty {
            MessageType::Register => {
                need(ty, &body, REGISTER_BODY_LEN)?;
                let version = body.get_u8();
                let term_type = body.get_u8();
                let id = padded_text("id", &body[..REGISTER_FIELD_LEN])?;
                let token =
                    padded_text("token", &body[REGISTER_FIELD_LEN..2 * REGISTER_FIELD_LEN])?;
                Up::Register(Register {
                    version,
                    term_type,
                    id,
                    token,
                })
            }
            MessageType::Im => Up::Im { msg: body },
            other => return Err(FrameError::WrongDirection(other)),
        })
    }

    fn parse_code(ty: MessageType, body: &[u8]) -> Option<Result<Self, FrameError>> {
        let coded = |message: fn(u8) -> Up| Some(code(ty, body).map(message));
        match ty {
            MessageType::Ping => Some(Ok(Up::Ping)),
            MessageType::PushResp => coded(|code| Up::PushResp { code }),
            MessageType::CbResp => coded(|code| Up::CbResp { code }),
            MessageType::ImResp => coded(|code| Up::ImResp { code }),
            MessageType::KickResp => coded(|code| Up::KickResp { code }),
            _ => None,
        }
    }
}

impl WireMessage for Down {
    fn message_type(&self) -> MessageType {
        match self {
            Down::RegResp { .. } => MessageType::RegResp,
            Down::Pong { .. } => MessageType::Pong,
            Down::Push { .. } => MessageType::Push,
            Down::Callback { .. } => MessageType::Callback,
            Down::Im { .. } => MessageType::Im,
            Down::ImResp { .. } => MessageType::ImResp,
            Down::Kick { .. } => MessageType::Kick,
        }
    }

    fn carries(ty: MessageType) -> bool {
        ty.is_down()
    }

    fn body_len(&self) -> usize {
        match self {
            Down::Push { msg, .. } => 3 + msg.len(),
            Down::Callback { msg } => msg.len(),
            Down::Im { msg, .. } => 1 + msg.len(),
            Down::RegResp { .. } | Down::Pong { .. } | Down::ImResp { .. } | Down::Kick { .. } => 1,
        }
    }

    fn put_body<B: BufMut>(&self, dst: &mut B) -> Result<(), EncodeError> {
        match self {
            Down::Push { offline, flag, msg } => {
                dst.put_u16(*offline);
                dst.put_u8(*flag);
                dst.put_slice(msg);
            }
            Down::Callback { msg } => dst.put_slice(msg),
            Down::Im { flag, msg } => {
                dst.put_u8(*flag);
                dst.put_slice(msg);
            }
            Down::RegResp { code } | Down::Pong { code } | Down::ImResp { code } => {
                dst.put_u8(*code)
            }
            Down::Kick { reason } => dst.put_u8(*reason),
        }
        Ok(())
    }

    fn parse_body(ty: MessageType, mut body: Bytes) -> Result<Self, FrameError> {
        if let Some(coded) = Down::parse_code(ty, &body) {
            return coded;
        }
        Ok(match ty {
            MessageType::Push => {
                need(ty, &body, 3)?;
                let offline = body.get_u16();
                let flag = body.get_u8();
                Down::Push {
                    offline,
                    flag,
                    msg: body,
                }
            }
            MessageType::Callback => Down::Callback { msg: body },
            MessageType::Im => {
                need(ty, &body, 1)?;
                let flag = body.get_u8();
                Down::Im { flag, msg: body }
            }
            other => return Err(FrameError::WrongDirection(other)),
        })
    }

    fn parse_code(ty: MessageType, body: &[u8]) -> Option<Result<Self, FrameError>> {
        let coded = |message: fn(u8) -> Down| Some(code(ty, body).map(message));
        match ty {
            MessageType::RegResp => coded(|code| Down::RegResp { code }),
            MessageType::Pong => coded(|code| Down::Pong { code }),
            MessageType::ImResp => coded(|code| Down::ImResp { code }),
            MessageType::Kick => coded(|reason| Down::Kick { reason }),
            _ => None,
        }
    }
}
