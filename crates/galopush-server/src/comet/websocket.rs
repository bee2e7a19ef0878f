//! The server side of WebSocket (RFC 6455) as the comet needs it: the opening handshake, and
//! reading a terminal's frames under a size limit that changes when the terminal registers
//! (SPEC §10: `limits.max_unregistered_frame` before, `limits.max_body` after).
//!
//! The request parsing, the handshake response and the frame headers are tungstenite's; only
//! the loop around them is ours. tokio-tungstenite's stream is not used because its size limits
//! are fixed at the handshake with no way to change them on a live connection, so a 1 KiB limit
//! before REGISTER would also be the limit after; and because it keeps read and write state per
//! connection that an idle terminal does not need. A frame's length is checked against the
//! limit as soon as its header is in, before any of its payload is kept.

use std::io::Cursor;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::handshake::server::{Request, create_response, write_response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use super::transport::{Stream, read_some};

/// Largest opening handshake request taken, headers included (cookies of the page's site can
/// make it a few KiB).
pub const MAX_REQUEST: usize = 8192;

/// Why a WebSocket handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a WebSocket upgrade: {0}")]
    Malformed(String),
    #[error("upgrade on unknown path {0:?}")]
    UnknownPath(String),
    #[error("handshake request over {MAX_REQUEST} bytes")]
    TooLarge,
    #[error("connection closed during the handshake")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the upgrade request from `stream` (into `read`, which keeps whatever the terminal sent
/// after it) and answers `101 Switching Protocols`, on paths `/ws` and `/` only (SPEC §4).
/// Anything else is answered `400` or `404` and refused.
pub async fn accept<S: Stream>(stream: &mut S, read: &mut BytesMut) -> Result<(), HandshakeError> {
    loop {
        match Request::try_parse(read) {
            Ok(Some((size, request))) => {
                read.advance(size);
                let path = request.uri().path();
                if path != "/ws" && path != "/" {
                    let path = path.to_owned();
                    refuse(stream, "404 Not Found").await;
                    return Err(HandshakeError::UnknownPath(path));
                }
                let response = match create_response(&request) {
                    Ok(r) => r,
                    Err(e) => {
                        refuse(stream, "400 Bad Request").await;
                        return Err(HandshakeError::Malformed(e.to_string()));
                    }
                };
                let mut out = Vec::with_capacity(160);
                write_response(&mut out, &response)
                    .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
                stream.write_all(&out).await?;
                return Ok(());
            }
            Ok(None) if read.len() >= MAX_REQUEST => {
                refuse(stream, "431 Request Header Fields Too Large").await;
                return Err(HandshakeError::TooLarge);
            }
            Ok(None) => {}
            Err(e) => {
                refuse(stream, "400 Bad Request").await;
                return Err(HandshakeError::Malformed(e.to_string()));
            }
        }
        if read_some(stream, read).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

async fn refuse<S: Stream>(stream: &mut S, status: &str) {
    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// Why a terminal's frames cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("websocket message of {len} bytes is over the limit of {max}")]
    TooLong { len: u64, max: u32 },
}

/// What reading a terminal's frames produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole message (text or binary), unmasked.
    Message(Bytes),
    /// A ping was answered with a pong in the replies: they are to be written.
    Replied,
    /// The terminal sent a close frame (answered in the replies).
    Closed,
}

/// Reads a terminal's frames from a buffer of what the socket delivered.
#[derive(Debug)]
pub struct FrameReader {
    /// A fragmented message being put together.
    partial: Option<BytesMut>,
    /// Largest message taken, fragments together.
    max: u32,
}

impl FrameReader {
    pub fn new(max: u32) -> FrameReader {
        FrameReader { partial: None, max }
    }

    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// Takes the next whole message from `read`, answering pings and closes into `replies`;
    /// `None` when more bytes are needed.
    pub fn next(
        &mut self,
        read: &mut BytesMut,
        replies: &mut Vec<u8>,
    ) -> Result<Option<Incoming>, FrameError> {
        loop {
            let mut cursor = Cursor::new(&read[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                Err(_) => return Err(FrameError::Protocol("malformed frame header")),
            };
            let head = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(FrameError::Protocol(
                    "reserved bits set (no extension agreed)",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(FrameError::Protocol("unmasked frame from a client"));
            };
            let control = matches!(header.opcode, OpCode::Control(_));
            if control && (len > 125 || !header.is_final) {
                return Err(FrameError::Protocol("control frame too long or fragmented"));
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.len() as u64);
            if !control && so_far.saturating_add(len) > u64::from(self.max) {
                return Err(FrameError::TooLong {
                    len: so_far.saturating_add(len),
                    max: self.max,
                });
            }
            // `len` is at most `max` (a u32) or 125 here.
            let len = len as usize;
            if read.len() < head + len {
                return Ok(None);
            }
            read.advance(head);
            let mut payload = read.split_to(len);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Ping) => {
                    format(Frame::pong(payload.freeze()), replies);
                    return Ok(Some(Incoming::Replied));
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    // The reply echoes the status code, as RFC 6455 §5.5.1 suggests.
                    let code = payload.freeze().slice(..if len >= 2 { 2 } else { 0 });
                    let header = FrameHeader {
                        opcode: OpCode::Control(Control::Close),
                        ..FrameHeader::default()
                    };
                    format(Frame::from_payload(header, code), replies);
                    return Ok(Some(Incoming::Closed));
                }
                OpCode::Data(Data::Text | Data::Binary) => {
                    if self.partial.is_some() {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    if header.is_final {
                        return Ok(Some(Incoming::Message(payload.freeze())));
                    }
                    self.partial = Some(payload);
                }
                OpCode::Data(Data::Continue) => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(FrameError::Protocol("continuation without a message"));
                    };
                    partial.extend_from_slice(&payload);
                    if header.is_final {
                        let whole = self.partial.take().unwrap_or_default();
                        return Ok(Some(Incoming::Message(whole.freeze())));
                    }
                }
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(FrameError::Protocol("reserved opcode"));
                }
            }
        }
    }
}

/// Formats a server frame (never masked) onto `out`.
pub fn format(frame: Frame, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = frame.format(out);
}

/// The close frame a server sends when it ends a connection itself (1000, normal closure).
pub fn close_frame(out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    format(
        Frame::from_payload(header, Bytes::from_static(&[0x03, 0xe8])),
        out,
    );
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as browsers send them.
    fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some([0x12, 0x34, 0x56, 0x78]),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .expect("format");
        out
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);

    #[test]
    fn messages_whole_fragmented_and_split_across_reads() {
        let mut reader = FrameReader::new(100);
        let mut replies = Vec::new();
        let mut wire = client_frame(TEXT, true, b"hello");
        wire.extend(client_frame(TEXT, false, b"frag"));
        wire.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        wire.extend(client_frame(OpCode::Data(Data::Continue), true, b"mented"));
        let mut read = BytesMut::new();
        let mut got = Vec::new();
        // One byte at a time: every split of a frame must wait for the rest.
        for b in wire {
            read.extend_from_slice(&[b]);
            while let Some(m) = reader.next(&mut read, &mut replies).expect("valid") {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            [
                Incoming::Message(Bytes::from_static(b"hello")),
                Incoming::Replied,
                Incoming::Message(Bytes::from_static(b"fragmented")),
            ]
        );
        assert_eq!(
            replies,
            [0x8a, 0x01, b'p'],
            "an unmasked pong echoing the ping"
        );
        assert!(read.is_empty());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_by_its_header_alone() {
        let mut reader = FrameReader::new(1024);
        let frame = client_frame(TEXT, true, &vec![b'x'; 1 << 20]);
        // The header and a few bytes: nothing more is needed to refuse it.
        let mut read = BytesMut::from(&frame[..20]);
        let e = reader
            .next(&mut read, &mut Vec::new())
            .expect_err("too long");
        assert!(
            matches!(e, FrameError::TooLong { len, max: 1024 } if len == 1 << 20),
            "{e}"
        );

        // Fragments count together; a raised limit takes the same message.
        let mut read = BytesMut::from(&client_frame(TEXT, false, &[b'a'; 600])[..]);
        read.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &[b'b'; 600],
        ));
        let refused = FrameReader::new(1024).next(&mut read.clone(), &mut Vec::new());
        assert!(matches!(
            refused,
            Err(FrameError::TooLong { len: 1200, .. })
        ));
        let mut raised = FrameReader::new(1024);
        raised.set_max(4096);
        let whole = raised.next(&mut read, &mut Vec::new()).expect("fits now");
        assert!(matches!(whole, Some(Incoming::Message(m)) if m.len() == 1200));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let unmasked = {
            let mut out = Vec::new();
            Frame::message(Bytes::from_static(b"x"), TEXT, true)
                .format(&mut out)
                .expect("format");
            out
        };
        let long_ping = client_frame(OpCode::Control(Control::Ping), true, &[0; 126]);
        let stray = client_frame(OpCode::Data(Data::Continue), true, b"x");
        let reserved = client_frame(OpCode::Data(Data::Reserved(3)), true, b"x");
        for wire in [unmasked, long_ping, stray, reserved] {
            let mut read = BytesMut::from(&wire[..]);
            let got = FrameReader::new(1024).next(&mut read, &mut Vec::new());
            assert!(matches!(got, Err(FrameError::Protocol(_))), "{got:?}");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, in whatever pieces: no panic, and no message over the
        /// limit comes out.
        #[test]
        fn any_bytes_in_any_pieces(
            wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(1usize..64, 1..64),
        ) {
            let mut reader = FrameReader::new(256);
            let mut read = BytesMut::new();
            let mut replies = Vec::new();
            let mut rest = &wire[..];
            'feed: for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at((*cut).min(rest.len()));
                rest = after;
                read.extend_from_slice(piece);
                loop {
                    match reader.next(&mut read, &mut replies) {
                        Ok(Some(Incoming::Message(m))) => proptest::prop_assert!(m.len() <= 256),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }

    #[test]
    fn a_close_is_answered_with_its_code() {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut read =
            BytesMut::from(&client_frame(OpCode::Control(Control::Close), true, &payload)[..]);
        let mut replies = Vec::new();
        let got = FrameReader::new(1024)
            .next(&mut read, &mut replies)
            .expect("valid");
        assert_eq!(got, Some(Incoming::Closed));
        assert_eq!(replies, [0x88, 0x02, 0x03, 0xe9]);
    }
}
