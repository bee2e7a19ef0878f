//! Keeps the examples of `docs/protocol.md` equal to the test vectors in
//! `tests/data/vectors.json`, which `tests/vectors.rs` decodes and re-encodes byte for byte: an
//! example in the documentation cannot drift from what the protocol tests verify.
//!
//! An example is a fenced code block whose info string is `<format> vector=<selector>`:
//!
//! | info string                                   | must equal                                   |
//! |-----------------------------------------------|----------------------------------------------|
//! | `hex vector=frames/<name>/<encoding>`         | `wire_hex` of that `frames` entry            |
//! | `hex vector=encodings/<encoding>/<plain_hex>` | `encoded_hex` of that `encodings` entry      |
//! | `json vector=web/<cmd>`                       | `json` of the `web` entry with that `cmd`    |
//! | `text vector=web/<cmd>`                       | `wire_text` of the same entry                |
//!
//! In a frame's `<name>` spaces are written as `-`. In `hex` blocks whitespace only groups bytes
//! and is ignored; `json` and `text` blocks must match exactly. A block that names a vector that
//! does not exist, or more than one, fails the test, as does a document with too few examples.

use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");

/// One marked example: where it is, what it names and what it holds.
#[derive(Debug)]
struct Example {
    /// 1-based line of the opening fence.
    line: usize,
    format: String,
    selector: String,
    content: String,
}

/// The fenced code blocks of `doc` whose info string has a `vector=` attribute.
fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim_start();
        let Some(fence) = opening_fence(trimmed) else {
            continue;
        };
        let info = trimmed[fence.len()..].trim();
        let mut body = Vec::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            let inner_trimmed = inner.trim();
            if inner_trimmed.starts_with(fence.as_str())
                && inner_trimmed
                    .chars()
                    .all(|c| c == fence.chars().next().unwrap_or('`'))
            {
                closed = true;
                break;
            }
            body.push(inner);
        }
        assert!(closed, "docs/protocol.md:{}: unclosed code block", i + 1);
        let mut words = info.split_whitespace();
        let format = words.next().unwrap_or_default().to_owned();
        let selector = words.find_map(|w| w.strip_prefix("vector="));
        if let Some(selector) = selector {
            out.push(Example {
                line: i + 1,
                format,
                selector: selector.to_owned(),
                content: body.join("\n"),
            });
        } else {
            assert!(
                !info.contains("vector"),
                "docs/protocol.md:{}: info string {info:?} mentions a vector but has no \
                 `vector=<selector>` word",
                i + 1
            );
        }
    }
    out
}

/// The fence (three or more backticks or tildes) a line opens with, if any.
fn opening_fence(line: &str) -> Option<String> {
    let first = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let fence: String = line.chars().take_while(|c| *c == first).collect();
    (fence.len() >= 3).then_some(fence)
}

fn str_field<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry[key]
        .as_str()
        .unwrap_or_else(|| panic!("vectors.json entry {entry} has a string `{key}`"))
}

fn list<'a>(vectors: &'a Value, key: &str) -> &'a [Value] {
    vectors[key]
        .as_array()
        .unwrap_or_else(|| panic!("vectors.json has a `{key}` list"))
}

/// The single entry of `entries` that `matches`, or why there is not exactly one.
fn only<'a>(
    entries: &'a [Value],
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Result<&'a Value, String> {
    let mut found = entries.iter().filter(|e| matches(e));
    match (found.next(), found.next()) {
        (Some(entry), None) => Ok(entry),
        (None, _) => Err(format!("no vector matches {what}")),
        (Some(_), Some(_)) => Err(format!("more than one vector matches {what}")),
    }
}

/// The text the vector named by `example` says the block must hold, normalised as the block's
/// format is compared.
fn expected(vectors: &Value, example: &Example) -> Result<String, String> {
    let parts: Vec<&str> = example.selector.split('/').collect();
    let number = |s: &str| -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{s:?} in selector {:?} is not a number", example.selector))
    };
    match (example.format.as_str(), parts.as_slice()) {
        ("hex", ["frames", name, encoding]) => {
            let encoding = number(encoding)?;
            let entry = only(
                list(vectors, "frames"),
                &format!("frames name {name:?} encoding {encoding}"),
                |e| {
                    str_field(e, "name").replace(' ', "-") == *name
                        && e["encoding"].as_u64() == Some(encoding)
                },
            )?;
            Ok(str_field(entry, "wire_hex").to_ascii_lowercase())
        }
        ("hex", ["encodings", encoding, plain]) => {
            let encoding = number(encoding)?;
            let plain = plain.to_ascii_lowercase();
            let entry = only(
                list(vectors, "encodings"),
                &format!("encodings encoding {encoding} plain_hex {plain:?}"),
                |e| {
                    e["encoding"].as_u64() == Some(encoding)
                        && str_field(e, "plain_hex").eq_ignore_ascii_case(&plain)
                },
            )?;
            Ok(str_field(entry, "encoded_hex").to_ascii_lowercase())
        }
        (format @ ("json" | "text"), ["web", cmd]) => {
            let cmd = number(cmd)?;
            let entry = only(list(vectors, "web"), &format!("web cmd {cmd}"), |e| {
                serde_json::from_str::<Value>(str_field(e, "json"))
                    .expect("a web vector's json is JSON")["cmd"]
                    .as_u64()
                    == Some(cmd)
            })?;
            let field = if format == "json" {
                "json"
            } else {
                "wire_text"
            };
            Ok(str_field(entry, field).to_owned())
        }
        _ => Err(format!(
            "`{} vector={}` is not a known form (hex vector=frames/<name>/<encoding>, \
             hex vector=encodings/<encoding>/<plain_hex>, json vector=web/<cmd>, \
             text vector=web/<cmd>)",
            example.format, example.selector
        )),
    }
}

/// The block's content as it is compared: hex without whitespace and in lower case, anything
/// else as written (without the final line break).
fn actual(example: &Example) -> Result<String, String> {
    if example.format != "hex" {
        return Ok(example.content.clone());
    }
    let hex: String = example
        .content
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("hex block holds {bad:?}, which is not a hex digit"));
    }
    Ok(hex.to_ascii_lowercase())
}

#[test]
fn every_example_in_the_protocol_doc_equals_its_vector() {
    let doc = std::fs::read_to_string(DOC).expect("docs/protocol.md is readable");
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(VECTORS).expect("tests/data/vectors.json is readable"),
    )
    .expect("vectors.json is JSON");

    let examples = examples(&doc);
    let mut failures = Vec::new();
    for example in &examples {
        let checked = expected(&vectors, example).and_then(|want| {
            let got = actual(example)?;
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "the block holds\n    {got}\nthe vector holds\n    {want}"
                ))
            }
        });
        if let Err(why) = checked {
            failures.push(format!(
                "docs/protocol.md:{} `{} vector={}`: {why}",
                example.line, example.format, example.selector
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} example(s) differ from vectors.json:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // A broken marker convention must not pass by finding nothing to check.
    let count = |format: &str, list: &str| {
        examples
            .iter()
            .filter(|e| e.format == format && e.selector.starts_with(list))
            .count()
    };
    for (format, list) in [
        ("hex", "frames/"),
        ("hex", "encodings/"),
        ("json", "web/"),
        ("text", "web/"),
    ] {
        assert!(
            count(format, list) > 0,
            "docs/protocol.md has no `{format} vector={list}…` example"
        );
    }
    assert!(
        examples.len() >= 20,
        "docs/protocol.md has only {} marked examples",
        examples.len()
    );
}

#[test]
fn the_extractor_finds_marked_blocks_and_only_those() {
    let doc = "text\n\n```hex vector=frames/ping/0\n03 01020304\n```\n\n\
               ```json\n{\"not\":\"checked\"}\n```\n\n\
               ~~~~text vector=web/3\nabc\n~~~~\n";
    let found = examples(doc);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].line, found[0].format.as_str()),
        (3, "hex"),
        "{found:?}"
    );
    assert_eq!(found[0].selector, "frames/ping/0");
    assert_eq!(found[0].content, "03 01020304");
    assert_eq!(
        (found[1].format.as_str(), found[1].selector.as_str()),
        ("text", "web/3")
    );
    assert_eq!(found[1].content, "abc");
}
