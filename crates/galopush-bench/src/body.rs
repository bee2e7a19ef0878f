//! The body of a bench message, `{"seq":S,"t":T}`: which message it is and when it was sent
//! (µs since the bench started), padded with `,"pad":"xx…"` when a bigger body is asked for.
//! Written straight into the `/mpub` line, escaped as the JSON string it travels in (or as it
//! is, as an MQTT payload), and read back on the receive path without allocating.

use std::io::Write;

/// What padding adds besides its `x`s: `,"pad":""`.
const PAD_FRAME: usize = 9;

/// Appends the body as it appears inside a JSON string: `{\"seq\":S,\"t\":T}`, padded to
/// `size` bytes (once unescaped) when that is more.
pub(crate) fn write_escaped(out: &mut Vec<u8>, seq: u64, sent_us: u64, size: usize) {
    write_quoted(out, seq, sent_us, size, br#"\""#);
}

/// Appends the body as it is: `{"seq":S,"t":T}` padded to `size` bytes when that is more (an
/// MQTT payload).
pub(crate) fn write_raw(out: &mut Vec<u8>, seq: u64, sent_us: u64, size: usize) {
    write_quoted(out, seq, sent_us, size, b"\"");
}

/// The body with each of its quotes written as `quote`.
fn write_quoted(out: &mut Vec<u8>, seq: u64, sent_us: u64, size: usize, quote: &[u8]) {
    let start = out.len();
    let key = |out: &mut Vec<u8>, name: &[u8]| {
        out.extend_from_slice(quote);
        out.extend_from_slice(name);
        out.extend_from_slice(quote);
        out.push(b':');
    };
    out.push(b'{');
    key(out, b"seq");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{seq},");
    key(out, b"t");
    let _ = write!(out, "{sent_us}");
    // Unescaped, the four quotes are one byte each; the closing brace is still to come.
    let plain = out.len() - start - 4 * (quote.len() - 1) + 1;
    if size > plain + PAD_FRAME {
        out.push(b',');
        key(out, b"pad");
        out.extend_from_slice(quote);
        out.resize(out.len() + size - plain - PAD_FRAME, b'x');
        out.extend_from_slice(quote);
    }
    out.push(b'}');
}

/// The sequence number and send time of a body written by [`write_escaped`], once unescaped
/// by the server; `None` for anything else.
pub(crate) fn parse(body: &[u8]) -> Option<(u64, u64)> {
    let rest = body.strip_prefix(br#"{"seq":"#)?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","t":"#)?;
    let (sent_us, rest) = number(rest)?;
    let rest = match rest.strip_prefix(br#","pad":""#) {
        Some(pad) => pad
            .strip_suffix(br#""}"#)?
            .iter()
            .all(|&b| b == b'x')
            .then_some(&b"}"[..])?,
        None => rest,
    };
    (rest == b"}").then_some((seq, sent_us))
}

/// A decimal number at the start of `text` (at most 19 digits, so it fits a u64) and the rest.
fn number(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = text[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((value, &text[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_json() {
        let mut line = b"{\"body\":\"".to_vec();
        write_escaped(&mut line, 42, 1_234_567, 0);
        line.extend_from_slice(b"\"}");
        let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        let body = value["body"].as_str().expect("a string");
        assert_eq!(body, r#"{"seq":42,"t":1234567}"#);
        assert_eq!(parse(body.as_bytes()), Some((42, 1_234_567)));
    }

    #[test]
    fn padded_to_the_size_asked() {
        for size in [0, 22, 31, 32, 33, 4096] {
            let mut line = b"{\"body\":\"".to_vec();
            write_escaped(&mut line, 42, 1_234_567, size);
            line.extend_from_slice(b"\"}");
            let value: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
            let body = value["body"].as_str().expect("a string");
            // Unpadded it is 22 bytes; padding needs room for `,"pad":"x"`.
            let expected = if size > 22 + PAD_FRAME { size } else { 22 };
            assert_eq!(body.len(), expected, "{body}");
            assert_eq!(parse(body.as_bytes()), Some((42, 1_234_567)), "{body}");
        }
    }

    #[test]
    fn raw_bodies_read_back() {
        for size in [0, 40, 4096] {
            let mut payload = Vec::new();
            write_raw(&mut payload, 7, 99, size);
            assert_eq!(
                payload.len(),
                size.max(16),
                "{:?}",
                String::from_utf8_lossy(&payload)
            );
            assert_eq!(parse(&payload), Some((7, 99)));
        }
    }

    #[test]
    fn rejects_other_bodies() {
        for body in [
            &b""[..],
            b"hello",
            br#"{"seq":1}"#,
            br#"{"seq":,"t":2}"#,
            br#"{"seq":1,"t":2} "#,
            br#"{"seq":99999999999999999999,"t":2}"#,
            br#"{"seq":1,"t":2,"pad":"xy"}"#,
            br#"{"seq":1,"t":2,"pad":"xx"#,
        ] {
            assert_eq!(parse(body), None, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
