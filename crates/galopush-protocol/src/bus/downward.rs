//! A reader of its own for down-messages (`push`, `callback`, `msgDownward`) in the shape
//! business services write them, the hot path of every delivery.
//!
//! serde_json spends about 5,000 instructions on a 100-byte unicast message (callgrind): its
//! per-string machinery (escape scanning set up per string, a UTF-8 check per string, a
//! scratch buffer that grows for an escaped body) costs more than the bytes. This reads a strict
//! subset of JSON in one pass over text checked as UTF-8 once. Whatever is outside the subset
//! (a key or a uid with escapes, a key it does not know or sees twice, a number written any
//! other way than plain digits, a surrogate escape, anything malformed) gives `None`, and the
//! caller reads the message with serde_json, which gives the value or the error it always gave:
//! what this returns is exactly what serde_json returns for the same text (the property is
//! checked in the tests below and by the `bus_json` fuzz target).
//!
//! No crate does this: the JSON crates are general parsers (serde_json is the one used), and the
//! SIMD ones buy little on small messages (DEPENDENCIES.md).

use super::{Downward, Receivers};

/// The down-message `json` holds, or `None` when it is outside the subset read here.
pub(crate) fn read(json: &[u8]) -> Option<Downward> {
    let mut scan = Scan {
        text: std::str::from_utf8(json).ok()?,
        at: 0,
    };
    let message = scan.message()?;
    scan.skip_space();
    (scan.at == scan.text.len()).then_some(message)
}

/// The bytes a JSON string cannot hold as they are: a quote, a backslash, control characters.
const SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether any of the eight bytes of `word` is special (see [`SPECIAL`]). The zero-byte test
/// of "Bit Twiddling Hacks": `x - 0x01… & !x & 0x80…` is non-zero exactly when some byte of `x`
/// is zero (and, with `0x20…` subtracted, when some byte is below 0x20); it may flag the wrong
/// byte, so the caller finds the byte itself.
fn has_special(word: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (below(word, 0x20) | below(quote, 1) | below(backslash, 1)) != 0
}

/// A position in the message's text.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after spaces, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.bytes().get(self.at).copied()
    }

    /// Takes `byte` after spaces.
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Takes `,` (`true`: more follows) or `close` (`false`: the list or object ends).
    fn next_or_end(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// `{"receivers": [...], "flag": n, "body": "...", "id": "..." | null}`, keys in any order,
    /// `flag` and `id` optional.
    fn message(&mut self) -> Option<Downward> {
        let mut receivers = None;
        let mut flag = None;
        let mut body = None;
        let mut id = None;
        self.expect(b'{')?;
        loop {
            let key = self.key(&["\"receivers\"", "\"flag\"", "\"body\"", "\"id\""])?;
            self.expect(b':')?;
            match key {
                "\"receivers\"" if receivers.is_none() => receivers = Some(self.receivers()?),
                "\"flag\"" if flag.is_none() => flag = Some(self.small_number()?),
                "\"body\"" if body.is_none() => body = Some(self.string()?),
                "\"id\"" if id.is_none() => {
                    id = Some(if self.peek()? == b'n' {
                        self.text[self.at..]
                            .starts_with("null")
                            .then(|| self.at += 4)?;
                        None
                    } else {
                        Some(self.string()?)
                    });
                }
                _ => return None,
            }
            if !self.next_or_end(b'}')? {
                break;
            }
        }
        Some(Downward {
            receivers: receivers?,
            flag: flag.unwrap_or(0),
            body: body?,
            id: id.flatten(),
        })
    }

    /// `[{"uid": "...", "termtype": n}, ...]`, keys in any order.
    fn receivers(&mut self) -> Option<Receivers> {
        let mut out = Receivers::default();
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(out);
        }
        loop {
            self.skip_space();
            if let Some((uid, termtype)) = self.compact_receiver() {
                if !out.push(uid, termtype) {
                    return None;
                }
                if !self.next_or_end(b']')? {
                    return Some(out);
                }
                continue;
            }
            let (mut uid, mut termtype) = (None, None);
            self.expect(b'{')?;
            loop {
                let key = self.key(&["\"uid\"", "\"termtype\""])?;
                self.expect(b':')?;
                match key {
                    "\"uid\"" if uid.is_none() => uid = Some(self.plain_string()?),
                    "\"termtype\"" if termtype.is_none() => termtype = Some(self.small_number()?),
                    _ => return None,
                }
                if !self.next_or_end(b'}')? {
                    break;
                }
            }
            if !out.push(uid?, termtype?) {
                return None;
            }
            if !self.next_or_end(b']')? {
                return Some(out);
            }
        }
    }

    /// A receiver written `{"uid":"...","termtype":n}`, without spaces and in that order (what
    /// encoders write for a struct, Go's included), taken; `None`, with nothing taken, for any
    /// other way of writing it, which the general loop reads. A broadcast's list is mostly this,
    /// and matching it whole costs a third of reading it key by key (callgrind: ~480 → ~150
    /// instructions a receiver).
    fn compact_receiver(&mut self) -> Option<(&'a str, u8)> {
        const HEAD: &[u8] = br#"{"uid":""#;
        const MIDDLE: &[u8] = br#"","termtype":"#;
        let text = self.bytes();
        let start = self.at + HEAD.len();
        if !text.get(self.at..)?.starts_with(HEAD) {
            return None;
        }
        let end = self.special_from(start)?;
        if !text[end..].starts_with(MIDDLE) {
            return None;
        }
        let digits = end + MIDDLE.len();
        // One to three digits, no leading zero, at most 255, then the brace (so not a fraction or
        // an exponent): what `small_number` takes.
        let (termtype, len) = match text.get(digits..digits + 4)? {
            [d @ b'0'..=b'9', b'}', ..] => (d - b'0', 1),
            [d @ b'1'..=b'9', e @ b'0'..=b'9', b'}', _] => ((d - b'0') * 10 + (e - b'0'), 2),
            [d @ b'1'..=b'9', e @ b'0'..=b'9', f @ b'0'..=b'9', b'}'] => {
                let value =
                    u16::from(d - b'0') * 100 + u16::from(e - b'0') * 10 + u16::from(f - b'0');
                (u8::try_from(value).ok()?, 3)
            }
            _ => return None,
        };
        // The quote, braces and digits around the uid are ASCII: the slice is on char
        // boundaries of the checked text.
        let uid = self.text.get(start..end)?;
        self.at = digits + len + 1;
        Some((uid, termtype))
    }

    /// The key of `keys` (each with its quotes) that comes next, taken; `None` for any other
    /// (a key written with escapes is another here: serde_json reads it). Compared as it is,
    /// which costs a fraction of reading a string for each key of a receivers list.
    fn key(&mut self, keys: &[&'static str]) -> Option<&'static str> {
        self.skip_space();
        let rest = &self.text[self.at..];
        let key = keys.iter().find(|key| rest.starts_with(**key))?;
        self.at += key.len();
        Some(key)
    }

    /// A number from 0 to 255 in plain digits (what a `u8` field takes most often).
    fn small_number(&mut self) -> Option<u8> {
        self.skip_space();
        let rest = &self.bytes()[self.at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // No leading zero (not JSON), at most three digits, and not the start of a fraction or
        // an exponent (serde_json reads those as floats, which a `u8` refuses).
        if digits == 0 || digits > 3 || (digits > 1 && rest[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = rest.get(digits) {
            return None;
        }
        let value = rest[..digits]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        self.at += digits;
        u8::try_from(value).ok()
    }

    /// Where the first quote, backslash or control character (which a string must escape) is
    /// from `from` on: eight bytes at a time while none of them is one, then byte by byte.
    /// memchr's set-up costs more than it saves on strings this short; the word test takes a
    /// third of the instructions of the byte loop over a 100-byte body.
    fn special_from(&self, from: usize) -> Option<usize> {
        let rest = self.bytes().get(from..)?;
        let mut at = 0;
        while let Some(word) = rest[at..].first_chunk::<8>() {
            if has_special(u64::from_le_bytes(*word)) {
                break;
            }
            at += 8;
        }
        rest[at..]
            .iter()
            .position(|&b| SPECIAL[usize::from(b)])
            .map(|found| from + at + found)
    }

    /// A string without escapes, borrowed from the text.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let end = self.special_from(start)?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some(&self.text[start..end])
    }

    /// A string, its escapes undone, in one allocation of the size its text gives.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let bytes = self.bytes();
        let start = self.at;
        // Where it ends: the first quote not escaped.
        let mut end = self.special_from(start)?;
        if bytes[end] == b'"' {
            self.at = end + 1;
            return Some(self.text[start..end].to_owned());
        }
        while bytes[end] == b'\\' {
            end = self.special_from(end + 2)?;
        }
        if bytes[end] != b'"' {
            return None;
        }
        let mut out = String::with_capacity(end - start);
        while self.at < end {
            let run = bytes[self.at..end]
                .iter()
                .position(|&b| b == b'\\')
                .unwrap_or(end - self.at);
            out.push_str(&self.text[self.at..self.at + run]);
            self.at += run;
            if self.at < end {
                out.push(self.escape()?);
            }
        }
        self.at = end + 1;
        Some(out)
    }

    /// The character of the escape at the position (its backslash), taken.
    fn escape(&mut self) -> Option<char> {
        let code = *self.bytes().get(self.at + 1)?;
        self.at += 2;
        Some(match code {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = self.text.get(self.at..self.at + 4)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                self.at += 4;
                // A surrogate (half of a pair, or alone) is left to serde_json.
                char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde_json reads from `json`, the reference this reader must agree with.
    fn by_serde(json: &[u8]) -> Option<Downward> {
        serde_json::from_slice(json).ok()
    }

    /// This reader never reads a message differently from serde_json.
    fn agrees(json: &[u8]) -> Result<(), TestCaseError> {
        if let Some(message) = read(json) {
            prop_assert_eq!(
                Some(message),
                by_serde(json),
                "{}",
                String::from_utf8_lossy(json)
            );
        }
        Ok(())
    }

    #[test]
    fn the_word_test_finds_every_special_byte_wherever_it_is() {
        for byte in 0..=255u8 {
            for at in 0..8 {
                for filler in [b'a', 0x7f, 0xff, b'!', b'#', b'[', b']', 0x20] {
                    let mut word = [filler; 8];
                    word[at] = byte;
                    assert_eq!(
                        has_special(u64::from_le_bytes(word)),
                        SPECIAL[usize::from(byte)] || SPECIAL[usize::from(filler)],
                        "{byte:#x} at {at} among {filler:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn finds_the_first_special_byte_across_words() {
        let text = "abcdefghijklmnopqrstuvwxyz0123456789\"ABCDEFGHIJ\\\u{1}";
        let scan = Scan { text, at: 0 };
        let firsts: Vec<usize> = (0..text.len())
            .map(|from| scan.special_from(from).unwrap_or(usize::MAX))
            .collect();
        let expected: Vec<usize> = (0..text.len())
            .map(|from| {
                text.bytes()
                    .enumerate()
                    .skip(from)
                    .find(|&(_, b)| SPECIAL[usize::from(b)])
                    .map_or(usize::MAX, |(i, _)| i)
            })
            .collect();
        assert_eq!(firsts, expected);
        assert_eq!(scan.special_from(text.len() + 1), None);
    }

    #[test]
    fn reads_the_usual_shapes_as_serde_json_does() {
        let usual = [
            r#"{"receivers":[{"uid":"u1","termtype":1}],"flag":0,"body":"{\"seq\":1,\"t\":2}"}"#,
            r#"{"receivers":[{"uid":"u1","termtype":1},{"termtype":31,"uid":"u2"}],"body":"hi","id":"m-1"}"#,
            r#" { "body" : "a\nb\t\"c\"\\\/\b\f\r\u00e9\u4e2d" , "receivers" : [ ] , "flag" : 255 , "id" : null } "#,
            "{\"receivers\":[{\"uid\":\"用户\",\"termtype\":2}],\"flag\":7,\"body\":\"ünïcödé 🎉\"}",
            r#"{"receivers":[],"body":""}"#,
            r#"{"receivers":[{"uid":"a","termtype":0},{"uid":"bb","termtype":16},{ "uid":"c","termtype":255},{"uid":"d","termtype":31}],"body":"x"}"#,
        ];
        for json in usual {
            let message = read(json.as_bytes());
            assert!(message.is_some(), "read here: {json}");
            assert_eq!(message, by_serde(json.as_bytes()), "{json}");
        }
    }

    #[test]
    fn leaves_to_serde_json_what_it_does_not_read() {
        let others = [
            // serde_json reads these (escaped key, escaped uid, a negative zero, a surrogate
            // pair, a key it ignores) ...
            r#"{"receivers":[],"bo\u0064y":"x"}"#,
            r#"{"receivers":[{"uid":"u\u0031","termtype":1}],"body":"x"}"#,
            r#"{"receivers":[],"flag":-0,"body":"x"}"#,
            r#"{"receivers":[],"body":"\ud83c\udf89"}"#,
            r#"{"receivers":[],"body":"x","extra":[1,{"a":2}]}"#,
            // ... and refuses these.
            r#"{"receivers":[],"body":"x","body":"y"}"#,
            r#"{"receivers":[],"flag":256,"body":"x"}"#,
            r#"{"receivers":[],"flag":1.0,"body":"x"}"#,
            r#"{"receivers":[],"flag":01,"body":"x"}"#,
            r#"{"receivers":[{"uid":"u","termtype":1,}],"body":"x"}"#,
            r#"{"receivers":[{"uid":"u"}],"body":"x"}"#,
            r#"{"receivers":[{"uid":"u","termtype":256}],"body":"x"}"#,
            r#"{"receivers":[{"uid":"u","termtype":01}],"body":"x"}"#,
            r#"{"receivers":[{"uid":"u","termtype":1.5}],"body":"x"}"#,
            r#"{"receivers":[{"uid":"u","termtype":1}"#,
            r#"{"receivers":[],"body":"\ud83c"}"#,
            r#"{"receivers":[],"body":"\x"}"#,
            r#"{"receivers":[]}"#,
            r#"{"receivers":[],"body":"x"} x"#,
            r#"{"receivers":[],"body":"x""#,
            "{\"receivers\":[],\"body\":\"a\u{1}b\"}",
        ];
        for json in others {
            assert_eq!(read(json.as_bytes()), None, "{json}");
        }
    }

    /// Pieces of down-messages, valid and not, glued in any order.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\n",
            "\"receivers\"",
            "\"flag\"",
            "\"body\"",
            "\"id\"",
            "\"uid\"",
            "\"termtype\"",
            "\"other\"",
            "null",
            "0",
            "1",
            "255",
            "256",
            "-1",
            "1.5",
            "1e2",
            "07",
            "\"u1\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"\\ud83c\\udf89\"",
            "\"\\ud83c\"",
            "\"\\q\"",
            "\"é\"",
            "true",
            "\"\\/\\\\\"",
        ])
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_glued_pieces(pieces in prop::collection::vec(piece(), 0..40)) {
            agrees(pieces.concat().as_bytes())?;
        }

        #[test]
        fn agrees_with_serde_json_on_messages_with_a_byte_changed_or_added(
            uids in prop::collection::vec(("[a-z0-9é]{1,8}", 0u8..=255), 0..4),
            body in "\\PC{0,20}",
            flag in 0u8..=255,
            id in prop::option::of("[a-z0-9\"\\\\]{0,8}"),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![
                prop::sample::select(b"\"\\,:{}[] \t\x01\x1f0-.eEun/".to_vec()),
                any::<u8>(),
            ],
            insert in any::<bool>(),
        ) {
            let message = Downward {
                receivers: uids.iter().fold(Receivers::default(), |mut r, (uid, t)| {
                    r.push(uid, *t);
                    r
                }),
                flag,
                body,
                id,
            };
            let mut json = serde_json::to_vec(&message).expect("serializes");
            prop_assert_eq!(read(&json), Some(message));
            let at = at.index(json.len());
            if insert {
                json.insert(at, byte);
            } else {
                json[at] = byte;
            }
            agrees(&json)?;
        }
    }
}
