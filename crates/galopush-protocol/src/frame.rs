//! Binary frames (SPEC §3): a header byte with encoding and type, the TID, the body length
//! (absent for PING) and the encoded body.
//!
//! [`decode`] reads one frame from the front of a buffer that may hold any prefix of the stream;
//! it checks the type as soon as the first byte is there and the length before it reserves room
//! for the body, and never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::encoding::Encoding;
use crate::error::{EncodeError, FrameError};
use crate::message::{MessageType, WireMessage};

/// Length of a frame header with its length field.
pub const HEADER_LEN: usize = 9;
/// Length of a PING frame: header byte and TID, no length field.
pub const PING_LEN: usize = 5;

/// One frame: the body encoding, the transaction id and the (plain) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<M> {
    pub encoding: Encoding,
    pub tid: u32,
    pub message: M,
}

impl<M> Frame<M> {
    /// A frame with the given parts.
    pub fn new(encoding: Encoding, tid: u32, message: M) -> Self {
        Frame {
            encoding,
            tid,
            message,
        }
    }
}

impl<M: WireMessage> Frame<M> {
    /// The number of bytes the frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        if self.message.message_type() == MessageType::Ping {
            PING_LEN
        } else {
            HEADER_LEN + self.message.body_len()
        }
    }

    /// Appends the frame to `dst`. On error nothing is appended.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let ty = self.message.message_type();
        let mark = dst.len();
        dst.reserve(self.encoded_len());
        dst.put_u8(self.encoding.bits() << 6 | ty as u8);
        dst.put_u32(self.tid);
        if ty == MessageType::Ping {
            return Ok(());
        }
        let len = self.message.body_len();
        let Ok(wire_len) = u32::try_from(len) else {
            dst.truncate(mark);
            return Err(EncodeError::BodyTooLong(len));
        };
        dst.put_u32(wire_len);
        let start = dst.len();
        if let Err(e) = self.message.put_body(dst) {
            dst.truncate(mark);
            return Err(e);
        }
        self.encoding.encode(&mut dst[start..]);
        Ok(())
    }

    /// The frame as a new buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }
}

/// Takes one frame of direction `M` from the front of `src`.
///
/// Returns `Ok(None)` when `src` holds only part of a frame (and reserves room for the rest once
/// the length has been checked against `max_body`), or the reason the stream cannot be read on.
pub fn decode<M: WireMessage>(
    src: &mut BytesMut,
    max_body: u32,
) -> Result<Option<Frame<M>>, FrameError> {
    match front::<M>(src, max_body)? {
        Front::Partial { total } => {
            if let Some(total) = total {
                src.reserve(total - src.len());
            }
            Ok(None)
        }
        Front::Read(frame, len) => {
            src.advance(len);
            Ok(Some(frame))
        }
        Front::Kept {
            ty,
            encoding,
            tid,
            len,
        } => {
            src.advance(HEADER_LEN);
            let mut body = src.split_to(len);
            encoding.decode(&mut body);
            let message = M::parse_body(ty, body.freeze())?;
            Ok(Some(Frame::new(encoding, tid, message)))
        }
    }
}

/// Reads one frame of direction `M` from the front of `src` when its message keeps nothing of
/// its bytes (PING, the acks and answers): the frame and how many bytes it took. `Ok(None)` when
/// `src` holds part of a frame, or a frame whose body is kept; [`decode`] reads those from a
/// buffer. Errors are [`decode`]'s.
///
/// For a reader that has nothing buffered: an ack read from the chunk it arrived in needs no
/// buffer of its own.
pub fn decode_slice<M: WireMessage>(
    src: &[u8],
    max_body: u32,
) -> Result<Option<(Frame<M>, usize)>, FrameError> {
    Ok(match front::<M>(src, max_body)? {
        Front::Read(frame, len) => Some((frame, len)),
        Front::Partial { .. } | Front::Kept { .. } => None,
    })
}

/// What the front of a stream's bytes holds.
enum Front<M> {
    /// Part of a frame: `total` bytes in all, once the length is known.
    Partial { total: Option<usize> },
    /// A whole frame whose message keeps nothing of its bytes, read; and its length.
    Read(Frame<M>, usize),
    /// A whole frame whose body is kept (REGISTER, IM, the down-messages with a body): its
    /// header and body length, the body after [`HEADER_LEN`].
    Kept {
        ty: MessageType,
        encoding: Encoding,
        tid: u32,
        len: usize,
    },
}

/// The longest body read from a copy on the stack, for the types whose body is a code byte
/// (longer ones are legal, the bytes after the code ignored, and read as any other body).
const CODE_BODY: usize = 16;

fn front<M: WireMessage>(src: &[u8], max_body: u32) -> Result<Front<M>, FrameError> {
    let Some(&first) = src.first() else {
        return Ok(Front::Partial { total: None });
    };
    let ty = MessageType::from_u8(first & 0x3f)?;
    if !M::carries(ty) {
        return Err(FrameError::WrongDirection(ty));
    }
    let encoding = Encoding::from_bits(first >> 6);
    let (header, len) = if ty == MessageType::Ping {
        if src.len() < PING_LEN {
            return Ok(Front::Partial { total: None });
        }
        (PING_LEN, 0)
    } else {
        if src.len() < HEADER_LEN {
            return Ok(Front::Partial { total: None });
        }
        let len = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
        if len > max_body {
            return Err(FrameError::BodyTooLong { len, max: max_body });
        }
        (HEADER_LEN, len as usize)
    };
    let total = header + len;
    if src.len() < total {
        return Ok(Front::Partial { total: Some(total) });
    }
    let tid = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
    if len <= CODE_BODY {
        let mut copy = [0; CODE_BODY];
        let body = &mut copy[..len];
        body.copy_from_slice(&src[header..total]);
        encoding.decode(body);
        if let Some(message) = M::parse_code(ty, body) {
            return Ok(Front::Read(Frame::new(encoding, tid, message?), total));
        }
    }
    Ok(Front::Kept {
        ty,
        encoding,
        tid,
        len,
    })
}
