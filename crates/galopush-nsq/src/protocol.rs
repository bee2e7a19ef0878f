//! NSQ TCP protocol V2 on the wire: the magic, command encoding, server frame decoding and the
//! topic/channel name rule. No I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::error::Error;
use crate::message::MessageId;

/// The four bytes a client sends first to select protocol V2.
pub(crate) const MAGIC_V2: &[u8; 4] = b"  V2";
/// The data of the response frame nsqd sends as a heartbeat.
pub(crate) const HEARTBEAT: &[u8] = b"_heartbeat_";
/// The data of the response frame acknowledging SUB, PUB, MPUB (and IDENTIFY without
/// feature negotiation).
pub(crate) const OK: &[u8] = b"OK";
/// The data of the response frame acknowledging CLS.
pub(crate) const CLOSE_WAIT: &[u8] = b"CLOSE_WAIT";

/// Frame type of a response frame.
pub(crate) const FRAME_TYPE_RESPONSE: u32 = 0;
/// Frame type of an error frame.
pub(crate) const FRAME_TYPE_ERROR: u32 = 1;
/// Frame type of a message frame.
pub(crate) const FRAME_TYPE_MESSAGE: u32 = 2;

/// Bytes before the body in a message frame's data: timestamp, attempts, id.
pub(crate) const MESSAGE_HEADER_LEN: usize = 8 + 2 + MessageId::LEN;

/// The longest REQ delay nsqd accepts by default (`--max-req-timeout`, 1 h); a larger one
/// is a fatal `E_INVALID`.
pub(crate) const MAX_REQ_DELAY_MS: u64 = 60 * 60 * 1000;

/// Whether nsqd accepts `name` as a topic name: 1–64 characters of `[.a-zA-Z0-9_-]`,
/// optionally ending in `#ephemeral` (counted in the 64).
pub fn is_valid_topic_name(name: &str) -> bool {
    is_valid_name(name)
}

/// Whether nsqd accepts `name` as a channel name (same rule as topics).
pub fn is_valid_channel_name(name: &str) -> bool {
    is_valid_name(name)
}

fn is_valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 64 {
        return false;
    }
    let base = name.strip_suffix("#ephemeral").unwrap_or(name);
    !base.is_empty()
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The AUTH secret, kept out of `Debug` output (commands show up in error messages).
pub(crate) struct Secret<'a>(pub(crate) &'a [u8]);

impl std::fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A command the client sends to nsqd.
#[derive(Debug)]
pub(crate) enum Command<'a> {
    /// `IDENTIFY\n` + size + JSON.
    Identify(&'a [u8]),
    /// `AUTH\n` + size + secret.
    Auth(Secret<'a>),
    /// `SUB <topic> <channel>\n`.
    Sub { topic: &'a str, channel: &'a str },
    /// `RDY <count>\n`.
    Rdy(u64),
    /// `FIN <id>\n`.
    Fin(&'a MessageId),
    /// `REQ <id> <delay_ms>\n`.
    Req(&'a MessageId, u64),
    /// `TOUCH <id>\n`.
    Touch(&'a MessageId),
    /// `NOP\n`, the answer to a heartbeat.
    Nop,
    /// `CLS\n`, the start of a clean close.
    Cls,
    /// `PUB <topic>\n` + size + body.
    Pub { topic: &'a str, body: &'a [u8] },
    /// `MPUB <topic>\n` + total size + count + (size + body)*.
    Mpub { topic: &'a str, bodies: &'a [Bytes] },
}

impl Command<'_> {
    /// Appends the wire form of the command to `dst`.
    pub(crate) fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Command::Identify(json) => {
                let size = body_size(json.len())?;
                dst.reserve(9 + 4 + json.len());
                dst.put_slice(b"IDENTIFY\n");
                dst.put_u32(size);
                dst.put_slice(json);
            }
            Command::Auth(Secret(secret)) => {
                let size = body_size(secret.len())?;
                dst.reserve(5 + 4 + secret.len());
                dst.put_slice(b"AUTH\n");
                dst.put_u32(size);
                dst.put_slice(secret);
            }
            Command::Sub { topic, channel } => {
                dst.reserve(6 + topic.len() + channel.len());
                dst.put_slice(b"SUB ");
                dst.put_slice(topic.as_bytes());
                dst.put_u8(b' ');
                dst.put_slice(channel.as_bytes());
                dst.put_u8(b'\n');
            }
            Command::Rdy(count) => {
                dst.put_slice(format!("RDY {count}\n").as_bytes());
            }
            Command::Fin(id) => id_command(dst, b"FIN ", id, None),
            Command::Req(id, delay_ms) => id_command(dst, b"REQ ", id, Some(*delay_ms)),
            Command::Touch(id) => id_command(dst, b"TOUCH ", id, None),
            Command::Nop => dst.put_slice(b"NOP\n"),
            Command::Cls => dst.put_slice(b"CLS\n"),
            Command::Pub { topic, body } => {
                let size = body_size(body.len())?;
                dst.reserve(5 + topic.len() + 4 + body.len());
                dst.put_slice(b"PUB ");
                dst.put_slice(topic.as_bytes());
                dst.put_u8(b'\n');
                dst.put_u32(size);
                dst.put_slice(body);
            }
            Command::Mpub { topic, bodies } => {
                let total = bodies
                    .iter()
                    .try_fold(4usize, |acc, body| acc.checked_add(4 + body.len()))
                    .ok_or(Error::BodyTooLarge(usize::MAX))?;
                let size = body_size(total)?;
                let count = u32::try_from(bodies.len()).map_err(|_| Error::BodyTooLarge(total))?;
                dst.reserve(6 + topic.len() + 4 + total);
                dst.put_slice(b"MPUB ");
                dst.put_slice(topic.as_bytes());
                dst.put_u8(b'\n');
                dst.put_u32(size);
                dst.put_u32(count);
                for body in bodies.iter() {
                    dst.put_u32(body_size(body.len())?);
                    dst.put_slice(body);
                }
            }
        }
        Ok(())
    }
}

fn id_command(dst: &mut BytesMut, verb: &[u8], id: &MessageId, delay_ms: Option<u64>) {
    dst.reserve(verb.len() + MessageId::LEN + 22);
    dst.put_slice(verb);
    dst.put_slice(id.as_bytes());
    if let Some(delay_ms) = delay_ms {
        dst.put_slice(format!(" {delay_ms}").as_bytes());
    }
    dst.put_u8(b'\n');
}

/// nsqd reads sizes as a signed 32-bit integer.
fn body_size(len: usize) -> Result<u32, Error> {
    match i32::try_from(len) {
        Ok(size) => Ok(size.unsigned_abs()),
        Err(_) => Err(Error::BodyTooLarge(len)),
    }
}

/// A message frame's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawMessage {
    pub(crate) timestamp: i64,
    pub(crate) attempts: u16,
    pub(crate) id: MessageId,
    pub(crate) body: Bytes,
}

/// A frame sent by nsqd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Response(Bytes),
    Error(Bytes),
    Message(RawMessage),
}

impl Frame {
    /// Whether this is the heartbeat response frame.
    pub(crate) fn is_heartbeat(&self) -> bool {
        matches!(self, Frame::Response(data) if data.as_ref() == HEARTBEAT)
    }
}

/// Decodes nsqd frames: u32 size (covering type and data), u32 type, data.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    max_frame_size: u32,
}

impl FrameDecoder {
    /// A decoder refusing frames whose size field exceeds `max_frame_size`.
    pub(crate) fn new(max_frame_size: u32) -> FrameDecoder {
        FrameDecoder { max_frame_size }
    }
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if size < 4 {
            return Err(Error::Protocol(format!(
                "frame size {size} is smaller than the frame type"
            )));
        }
        if size > self.max_frame_size {
            return Err(Error::Protocol(format!(
                "frame size {size} exceeds the limit of {} bytes",
                self.max_frame_size
            )));
        }
        let frame_len = 4 + size as usize;
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let frame_type = src.get_u32();
        let data = src.split_to(size as usize - 4).freeze();
        match frame_type {
            FRAME_TYPE_RESPONSE => Ok(Some(Frame::Response(data))),
            FRAME_TYPE_ERROR => Ok(Some(Frame::Error(data))),
            FRAME_TYPE_MESSAGE => decode_message(data).map(|m| Some(Frame::Message(m))),
            other => Err(Error::Protocol(format!("unknown frame type {other}"))),
        }
    }
}

fn decode_message(mut data: Bytes) -> Result<RawMessage, Error> {
    if data.len() < MESSAGE_HEADER_LEN {
        return Err(Error::Protocol(format!(
            "message frame of {} bytes is shorter than its {MESSAGE_HEADER_LEN}-byte header",
            data.len()
        )));
    }
    let timestamp = data.get_i64();
    let attempts = data.get_u16();
    let mut id = [0u8; MessageId::LEN];
    data.copy_to_slice(&mut id);
    let id = MessageId::new(id).ok_or_else(|| {
        Error::Protocol("message id contains bytes that cannot be sent back".to_owned())
    })?;
    Ok(RawMessage {
        timestamp,
        attempts,
        id,
        body: data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(command: Command<'_>) -> Vec<u8> {
        let mut dst = BytesMut::new();
        match command.encode(&mut dst) {
            Ok(()) => dst.to_vec(),
            Err(error) => panic!("encode failed: {error}"),
        }
    }

    fn id() -> MessageId {
        match MessageId::new(*b"0123456789abcdef") {
            Some(id) => id,
            None => panic!("valid id refused"),
        }
    }

    fn frame(frame_type: u32, data: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(4 + data.len() as u32);
        buf.put_u32(frame_type);
        buf.put_slice(data);
        buf
    }

    #[test]
    fn names() {
        assert!(is_valid_topic_name("userOnlineState"));
        assert!(is_valid_topic_name("a.b_c-d"));
        assert!(is_valid_topic_name("push#ephemeral"));
        assert!(is_valid_channel_name(&"x".repeat(64)));
        assert!(!is_valid_channel_name(&"x".repeat(65)));
        assert!(!is_valid_topic_name(&format!(
            "{}#ephemeral",
            "x".repeat(55)
        )));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("#ephemeral"));
        assert!(!is_valid_topic_name("a b"));
        assert!(!is_valid_topic_name("a#b"));
        assert!(!is_valid_topic_name("ä"));
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            encode(Command::Sub {
                topic: "t",
                channel: "c"
            }),
            b"SUB t c\n"
        );
        assert_eq!(encode(Command::Rdy(25)), b"RDY 25\n");
        assert_eq!(encode(Command::Fin(&id())), b"FIN 0123456789abcdef\n");
        assert_eq!(
            encode(Command::Req(&id(), 1500)),
            b"REQ 0123456789abcdef 1500\n"
        );
        assert_eq!(encode(Command::Touch(&id())), b"TOUCH 0123456789abcdef\n");
        assert_eq!(encode(Command::Nop), b"NOP\n");
        assert_eq!(encode(Command::Cls), b"CLS\n");
    }

    #[test]
    fn commands_with_bodies() {
        assert_eq!(
            encode(Command::Identify(b"{}")),
            b"IDENTIFY\n\x00\x00\x00\x02{}"
        );
        assert_eq!(
            encode(Command::Auth(Secret(b"s3cret"))),
            b"AUTH\n\x00\x00\x00\x06s3cret"
        );
        assert!(!format!("{:?}", Command::Auth(Secret(b"s3cret"))).contains("s3cret"));
        assert_eq!(
            encode(Command::Pub {
                topic: "t",
                body: b"hello"
            }),
            b"PUB t\n\x00\x00\x00\x05hello"
        );
        let bodies = [Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        assert_eq!(
            encode(Command::Mpub {
                topic: "t",
                bodies: &bodies
            }),
            b"MPUB t\n\x00\x00\x00\x0f\x00\x00\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x01c"
        );
    }

    #[test]
    fn decodes_frames_split_anywhere() {
        let mut message = BytesMut::new();
        message.put_i64(1_700_000_000_000_000_000);
        message.put_u16(3);
        message.put_slice(b"0123456789abcdef");
        message.put_slice(b"body");
        let mut wire = frame(FRAME_TYPE_RESPONSE, HEARTBEAT);
        wire.extend_from_slice(&frame(FRAME_TYPE_ERROR, b"E_INVALID bad"));
        wire.extend_from_slice(&frame(FRAME_TYPE_MESSAGE, &message));
        let wire = wire.freeze();
        for split in 0..wire.len() {
            let mut decoder = FrameDecoder::new(1024);
            let mut buf = BytesMut::from(&wire[..split]);
            let mut frames = Vec::new();
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => panic!("decode failed: {error}"),
                }
            }
            buf.extend_from_slice(&wire[split..]);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(error) => panic!("decode failed: {error}"),
                }
            }
            assert_eq!(frames.len(), 3, "split at {split}");
            assert!(frames[0].is_heartbeat());
            assert_eq!(
                frames[1],
                Frame::Error(Bytes::from_static(b"E_INVALID bad"))
            );
            assert_eq!(
                frames[2],
                Frame::Message(RawMessage {
                    timestamp: 1_700_000_000_000_000_000,
                    attempts: 3,
                    id: id(),
                    body: Bytes::from_static(b"body"),
                })
            );
        }
    }

    #[test]
    fn refuses_malformed_frames() {
        let mut decoder = FrameDecoder::new(1024);
        let mut oversized = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut oversized),
            Err(Error::Protocol(_))
        ));
        let mut undersized = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            decoder.decode(&mut undersized),
            Err(Error::Protocol(_))
        ));
        let mut bad_type = frame(7, b"x");
        assert!(matches!(
            decoder.decode(&mut bad_type),
            Err(Error::Protocol(_))
        ));
        let mut short_message = frame(FRAME_TYPE_MESSAGE, b"too short");
        assert!(matches!(
            decoder.decode(&mut short_message),
            Err(Error::Protocol(_))
        ));
        let mut bad_id = BytesMut::new();
        bad_id.put_i64(0);
        bad_id.put_u16(1);
        bad_id.put_slice(b"0123456789abc\nef");
        let mut bad_id = frame(FRAME_TYPE_MESSAGE, &bad_id);
        assert!(matches!(
            decoder.decode(&mut bad_id),
            Err(Error::Protocol(_))
        ));
    }
}
