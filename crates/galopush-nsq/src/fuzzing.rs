//! The property the `nsq_frame_decoder` fuzz target in `fuzz/` checks, here so that the corpus
//! replay test (`crates/galopush/tests/fuzz_corpus.rs`) runs the very same check on a stable
//! toolchain. It takes any bytes; a panic is a bug.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::Decoder;

use crate::protocol::{
    FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE, FRAME_TYPE_RESPONSE, Frame, FrameDecoder,
};

/// The decoder of nsqd's frames, fed the input after its first byte in pieces whose size and
/// frame-size limit come from that first byte. It must read the same frames (and the same
/// error, if any) as from the whole input at once, and every frame it reads must encode to
/// bytes it reads back as the same frame.
pub fn frame_decoder(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 16) + 1;
    let max_frame_size = u32::from(control) * 64;
    let whole = decode_all(rest, rest.len().max(1), max_frame_size);
    let pieces = decode_all(rest, step, max_frame_size);
    assert_eq!(whole, pieces);
    for frame in whole.0 {
        let mut again = encode(&frame);
        let back = FrameDecoder::new(u32::MAX).decode(&mut again);
        assert_eq!(back.ok(), Some(Some(frame)));
        assert!(again.is_empty());
    }
}

/// The frames read from `data` fed `step` bytes at a time, and the error that stopped it.
fn decode_all(data: &[u8], step: usize, max_frame_size: u32) -> (Vec<Frame>, Option<String>) {
    let mut decoder = FrameDecoder::new(max_frame_size);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(error.to_string())),
            }
        }
    }
    (frames, None)
}

fn encode(frame: &Frame) -> BytesMut {
    let mut data = BytesMut::new();
    let frame_type = match frame {
        Frame::Response(bytes) => {
            data.put_slice(bytes);
            FRAME_TYPE_RESPONSE
        }
        Frame::Error(bytes) => {
            data.put_slice(bytes);
            FRAME_TYPE_ERROR
        }
        Frame::Message(message) => {
            data.put_i64(message.timestamp);
            data.put_u16(message.attempts);
            data.put_slice(message.id.as_bytes());
            data.put_slice(&message.body);
            FRAME_TYPE_MESSAGE
        }
    };
    let mut out = BytesMut::new();
    out.put_u32(u32::try_from(data.len() + 4).expect("a decoded frame's size fits in u32"));
    out.put_u32(frame_type);
    out.put_slice(&data);
    out
}
