//! nsqlookupd discovery: `GET /lookup?topic=T` over a minimal HTTP/1.1 client, and the
//! producers (nsqd TCP addresses) in its answer, in both the current and the pre-1.0 wrapped
//! JSON format.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;

/// Larger lookup answers are refused (nsqlookupd's are a few hundred bytes per producer).
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// One nsqd in a lookup answer.
#[derive(Debug, Deserialize)]
struct Peer {
    #[serde(default)]
    broadcast_address: String,
    /// The field before nsqlookupd 0.2.28 named `broadcast_address`.
    #[serde(default)]
    address: String,
    #[serde(default)]
    tcp_port: u16,
}

#[derive(Debug, Deserialize)]
struct LookupData {
    #[serde(default)]
    producers: Vec<Peer>,
}

/// Both `{"channels":[..],"producers":[..]}` and the pre-1.0
/// `{"status_code":200,"status_txt":"OK","data":{..}}`.
#[derive(Debug, Deserialize)]
struct LookupResponse {
    #[serde(default)]
    producers: Option<Vec<Peer>>,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    status_txt: Option<String>,
    #[serde(default)]
    data: Option<LookupData>,
}

/// Asks the nsqlookupd at `lookupd` (`host:port` or `http://host:port[/prefix]`) which nsqd
/// produce `topic`, returning their TCP addresses (`broadcast_address:tcp_port`), sorted and
/// without duplicates. An unknown topic is no producers, not an error.
pub(crate) async fn lookup_producers(
    lookupd: &str,
    topic: &str,
    user_agent: &str,
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    let lookup_error = |reason: String| Error::Lookup {
        addr: lookupd.to_owned(),
        reason,
    };
    let (authority, path) = split_http_address(lookupd).map_err(lookup_error)?;
    let request = format!(
        "GET {path}/lookup?topic={} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {user_agent}\r\n\
         Accept: application/vnd.nsq; version=1.0\r\nConnection: close\r\n\r\n",
        encode_query_value(topic)
    );
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(error)) => return Err(lookup_error(error.to_string())),
        Err(_) => return Err(lookup_error(format!("no answer within {timeout:?}"))),
    };
    let (status, body) = parse_http_response(&raw).map_err(lookup_error)?;
    producers_from_answer(status, &body).map_err(lookup_error)
}

/// `(authority, path prefix without trailing slash)`.
fn split_http_address(address: &str) -> Result<(&str, &str), String> {
    if address.starts_with("https://") {
        return Err("https is not supported for nsqlookupd".to_owned());
    }
    let rest = address.strip_prefix("http://").unwrap_or(address);
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("empty address".to_owned());
    }
    Ok((authority, path))
}

/// Topic names are `[.a-zA-Z0-9_-]` plus `#` in `#ephemeral`, which must be escaped.
fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Splits a complete HTTP/1.x response into status code and (de-chunked) body.
fn parse_http_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "incomplete HTTP response".to_owned())?;
    let head = std::str::from_utf8(&raw[..header_end])
        .map_err(|_| "HTTP response head is not UTF-8".to_owned())?;
    let rest = &raw[header_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad HTTP status line {status_line:?}"))?,
        _ => return Err(format!("bad HTTP status line {status_line:?}")),
    };
    let mut chunked = false;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(length) = content_length {
        rest.get(..length)
            .ok_or_else(|| format!("body shorter than its Content-Length {length}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "truncated chunk size".to_owned())?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size".to_owned())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| "truncated chunk".to_owned())?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or_else(|| "chunk not followed by CRLF".to_owned())?;
    }
}

fn producers_from_answer(status: u16, body: &[u8]) -> Result<Vec<String>, String> {
    if status == 404 {
        // TOPIC_NOT_FOUND: no nsqd has the topic yet.
        return Ok(Vec::new());
    }
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    let response: LookupResponse =
        serde_json::from_slice(body).map_err(|e| format!("bad lookup JSON: {e}"))?;
    let peers = match (response.producers, response.status_code, response.data) {
        (Some(producers), _, _) => producers,
        (None, Some(404), _) => Vec::new(),
        (None, Some(200) | None, Some(data)) => data.producers,
        (None, Some(code), _) => {
            return Err(format!(
                "lookup status {code} {}",
                response.status_txt.unwrap_or_default()
            ));
        }
        (None, None, None) => return Err("lookup answer without producers".to_owned()),
    };
    let mut addresses: Vec<String> = peers
        .into_iter()
        .filter_map(|peer| {
            let host = if peer.broadcast_address.is_empty() {
                peer.address
            } else {
                peer.broadcast_address
            };
            if host.is_empty() || peer.tcp_port == 0 {
                tracing::warn!(
                    ?host,
                    port = peer.tcp_port,
                    "ignoring incomplete lookup producer"
                );
                return None;
            }
            Some(if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", peer.tcp_port)
            } else {
                format!("{host}:{}", peer.tcp_port)
            })
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_query() {
        assert_eq!(
            split_http_address("127.0.0.1:4161"),
            Ok(("127.0.0.1:4161", ""))
        );
        assert_eq!(
            split_http_address("http://lookupd:4161/"),
            Ok(("lookupd:4161", ""))
        );
        assert_eq!(
            split_http_address("http://lookupd:4161/nsq/"),
            Ok(("lookupd:4161", "/nsq"))
        );
        assert!(split_http_address("https://lookupd:4161").is_err());
        assert!(split_http_address("http:///").is_err());
        assert_eq!(encode_query_value("push#ephemeral"), "push%23ephemeral");
        assert_eq!(encode_query_value("a.b_c-d"), "a.b_c-d");
    }

    #[test]
    fn current_format() {
        let json =
            b"{\"channels\":[\"galopush\"],\"producers\":[{\"remote_address\":\"10.0.0.5:51234\",\
\"hostname\":\"n1\",\"broadcast_address\":\"n1.example\",\"tcp_port\":4150,\"http_port\":4151,\
\"version\":\"1.3.0\"},{\"broadcast_address\":\"::1\",\"tcp_port\":4152,\"http_port\":4153}]}";
        let mut raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n",
            json.len()
        )
        .into_bytes();
        raw.extend_from_slice(json);
        let (status, body) = match parse_http_response(&raw) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(status, 200);
        assert_eq!(
            producers_from_answer(status, &body),
            Ok(vec!["[::1]:4152".to_owned(), "n1.example:4150".to_owned()])
        );
    }

    #[test]
    fn legacy_wrapped_format_and_chunked_body() {
        let json = b"{\"status_code\":200,\"status_txt\":\"OK\",\"data\":{\"channels\":[],\
\"producers\":[{\"address\":\"old\",\"tcp_port\":4150},\
{\"broadcast_address\":\"new\",\"tcp_port\":4150}]}}";
        let (first, second) = json.split_at(30);
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        raw.extend_from_slice(first);
        raw.extend_from_slice(format!("\r\n{:x};ext=1\r\n", second.len()).as_bytes());
        raw.extend_from_slice(second);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let (status, body) = match parse_http_response(&raw) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(body, json.to_vec());
        assert_eq!(
            producers_from_answer(status, &body),
            Ok(vec!["new:4150".to_owned(), "old:4150".to_owned()])
        );
    }

    #[test]
    fn unknown_topic_is_no_producers() {
        assert_eq!(
            producers_from_answer(404, b"{\"message\":\"TOPIC_NOT_FOUND\"}"),
            Ok(Vec::new())
        );
        assert_eq!(
            producers_from_answer(
                200,
                b"{\"status_code\":404,\"status_txt\":\"TOPIC_NOT_FOUND\",\"data\":null}"
            ),
            Ok(Vec::new())
        );
    }

    #[test]
    fn errors() {
        assert!(producers_from_answer(500, b"{\"message\":\"INTERNAL_ERROR\"}").is_err());
        assert!(producers_from_answer(200, b"not json").is_err());
        assert!(producers_from_answer(200, b"{}").is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http_response(b"SMTP 200\r\n\r\n").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err()
        );
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .is_err()
        );
    }
}
