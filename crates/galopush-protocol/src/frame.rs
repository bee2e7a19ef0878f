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
    let Some(&first) = src.first() else {
        return Ok(None);
    };
    let ty = MessageType::from_u8(first & 0x3f)?;
    if !M::carries(ty) {
        return Err(FrameError::WrongDirection(ty));
    }
    let encoding = Encoding::from_bits(first >> 6);
    if ty == MessageType::Ping {
        if src.len() < PING_LEN {
            return Ok(None);
        }
        src.advance(1);
        let tid = src.get_u32();
        let message = M::parse_body(ty, Bytes::new())?;
        return Ok(Some(Frame::new(encoding, tid, message)));
    }
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
    if len > max_body {
        return Err(FrameError::BodyTooLong { len, max: max_body });
    }
    let total = HEADER_LEN + len as usize;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(1);
    let tid = src.get_u32();
    src.advance(4);
    let mut body = src.split_to(len as usize);
    encoding.decode(&mut body);
    let message = M::parse_body(ty, body.freeze())?;
    Ok(Some(Frame::new(encoding, tid, message)))
}
