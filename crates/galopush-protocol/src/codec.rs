//! `tokio_util::codec` Decoder/Encoder for a TCP stream of frames, one per direction.
//!
//! The comet reads [`Up`] and writes [`Down`] ([`ServerCodec`]); a terminal the other way round
//! ([`ClientCodec`]). Input may arrive in pieces of any size.

use std::marker::PhantomData;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{EncodeError, FrameError};
use crate::frame::{self, Frame};
use crate::message::{Down, Up, WireMessage};

/// Frames decoded as `In`, encoded from `Out`, with a cap on body length.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    max_body: u32,
    direction: PhantomData<fn(Out) -> In>,
}

/// The comet's side: reads what terminals send, writes what they receive.
pub type ServerCodec = FrameCodec<Up, Down>;
/// A terminal's side.
pub type ClientCodec = FrameCodec<Down, Up>;

impl<In, Out> FrameCodec<In, Out> {
    /// A codec that refuses bodies longer than `max_body` bytes.
    pub fn new(max_body: u32) -> Self {
        FrameCodec {
            max_body,
            direction: PhantomData,
        }
    }

    /// The body length limit.
    pub fn max_body(&self) -> u32 {
        self.max_body
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        FrameCodec::new(crate::DEFAULT_MAX_BODY)
    }
}

impl<In, Out> Clone for FrameCodec<In, Out> {
    fn clone(&self) -> Self {
        FrameCodec::new(self.max_body)
    }
}

impl<In: WireMessage, Out> Decoder for FrameCodec<In, Out> {
    type Item = Frame<In>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        frame::decode(src, self.max_body)
    }
}

impl<In, Out: WireMessage> Encoder<Frame<Out>> for FrameCodec<In, Out> {
    type Error = EncodeError;

    fn encode(&mut self, item: Frame<Out>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode(dst)
    }
}

impl<In, Out: WireMessage> Encoder<&Frame<Out>> for FrameCodec<In, Out> {
    type Error = EncodeError;

    fn encode(&mut self, item: &Frame<Out>, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode(dst)
    }
}
