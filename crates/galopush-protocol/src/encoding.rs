//! Body encodings of the binary protocol (SPEC §3): none, bit-not, pair-swap and ring-xor.
//!
//! They are obfuscation, not security. Each transforms a body in place; the encoding code lives
//! in bits 7-6 of a frame's first byte and applies to the body only.

/// One of the four body encodings, numbered as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Encoding {
    /// Identity.
    #[default]
    None = 0,
    /// Every byte inverted.
    BitNot = 1,
    /// Bytes swapped pairwise (0↔1, 2↔3, …); an odd last byte stays.
    PairSwap = 2,
    /// Each byte XORed with its predecessor, then the first with the last.
    RingXor = 3,
}

impl Encoding {
    /// All encodings, in wire order.
    pub const ALL: [Encoding; 4] = [
        Encoding::None,
        Encoding::BitNot,
        Encoding::PairSwap,
        Encoding::RingXor,
    ];

    /// The encoding for a 2-bit wire code; only the low two bits are looked at.
    pub fn from_bits(bits: u8) -> Encoding {
        match bits & 0b11 {
            0 => Encoding::None,
            1 => Encoding::BitNot,
            2 => Encoding::PairSwap,
            _ => Encoding::RingXor,
        }
    }

    /// The 2-bit wire code.
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// Transforms a plain body into its encoded form, in place.
    pub fn encode(self, body: &mut [u8]) {
        match self {
            Encoding::None => {}
            Encoding::BitNot => bit_not(body),
            Encoding::PairSwap => pair_swap(body),
            Encoding::RingXor => {
                let n = body.len();
                if n <= 1 {
                    return;
                }
                for i in 0..n - 1 {
                    body[i + 1] ^= body[i];
                }
                body[0] ^= body[n - 1];
            }
        }
    }

    /// Transforms an encoded body back into its plain form, in place.
    pub fn decode(self, body: &mut [u8]) {
        match self {
            Encoding::None => {}
            Encoding::BitNot => bit_not(body),
            Encoding::PairSwap => pair_swap(body),
            Encoding::RingXor => {
                let n = body.len();
                if n <= 1 {
                    return;
                }
                body[0] ^= body[n - 1];
                for i in (1..n).rev() {
                    body[i] ^= body[i - 1];
                }
            }
        }
    }
}

fn bit_not(body: &mut [u8]) {
    for b in body {
        *b = !*b;
    }
}

fn pair_swap(body: &mut [u8]) {
    for pair in body.chunks_exact_mut(2) {
        pair.swap(0, 1);
    }
}
