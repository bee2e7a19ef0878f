//! Attacks on the two HTTP listeners (SPEC §8, §10): a page on another origin, requests
//! without the token, a business API opened to the network without one, oversized and stalled
//! requests, too many at once.

use std::process::Command;
use std::time::{Duration, Instant};

use galopush_protocol::TermType;
use tokio::io::AsyncWriteExt;

use crate::common::process::{API_TOKEN, rss_kib};
use crate::harness::*;
use crate::raw;
use crate::{refused, still_serves};

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test]
async fn a_page_on_another_origin_can_neither_publish_nor_read_cors_answers() {
    let g = Gateway::start(&[]).await;
    let plain = reqwest::Client::new();
    let login = r#"{"uid":"mallory","termtype":1,"code":"evil","deviceToken":"","online":true}"#;
    // What a form on evil.example can send without a preflight.
    let r = plain
        .post(format!("{}/pub?topic=userOnlineState", g.http))
        .header("Origin", "http://evil.example")
        .header("Content-Type", "text/plain")
        .body(login)
        .send()
        .await
        .expect("POST to the public port");
    assert_eq!(r.status().as_u16(), 404, "the public port has no /pub");
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "no CORS echo: {:?}",
        r.headers()
    );
    for path in ["/mpub?topic=push", "/v1/comets", "/metrics", "/console/"] {
        let r = plain
            .get(format!("{}{path}", g.http))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 404, "{path} on the public port");
    }

    // The API, even with the token a page could not have, answers no CORS headers.
    for method in [reqwest::Method::POST, reqwest::Method::OPTIONS] {
        let r = g
            .client()
            .request(method.clone(), format!("{}/pub?topic=push", g.api))
            .header("Origin", "http://evil.example")
            .header("Access-Control-Request-Method", "POST")
            .body(r#"{"receivers":[{"uid":"x","termtype":1}],"flag":0,"body":"b"}"#)
            .send()
            .await
            .expect("request to the API");
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-")),
            "{method}: {:?}",
            r.headers()
        );
    }

    // mallory's login never happened: a REGISTER with its code fails.
    let mut t = g.connect(TermType::Android, TCP).await;
    let code = t
        .register("mallory", "evil", TermType::Android)
        .await
        .expect("REGRESP");
    assert_eq!(code, 3);
}

#[tokio::test]
async fn the_api_answers_401_without_the_token() {
    let g = Gateway::start(&[]).await;
    let plain = reqwest::Client::new();
    let login = r#"{"uid":"eve","termtype":1,"code":"c","deviceToken":"","online":true}"#;
    for token in [
        None,
        Some("wrong"),
        Some("test-api-token-and-more"),
        Some(""),
    ] {
        for (method, path) in [
            (reqwest::Method::POST, "/pub?topic=userOnlineState"),
            (reqwest::Method::POST, "/mpub?topic=userOnlineState"),
            (reqwest::Method::GET, "/v1/comets"),
            (reqwest::Method::GET, "/metrics"),
        ] {
            let mut request = plain
                .request(method, format!("{}{path}", g.api))
                .body(login);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let r = request.send().await.expect("request");
            assert_eq!(r.status().as_u16(), 401, "{path} with {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
        }
    }
    let r = plain
        .get(format!("{}/healthz", g.api))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200, "health needs no token");
    let mut t = g.connect(TermType::Android, TCP).await;
    assert_eq!(
        t.register("eve", "c", TermType::Android)
            .await
            .expect("REGRESP"),
        3,
        "no login was applied"
    );
    // With the token, the same login goes through.
    g.login("eve", TermType::Android, "c").await;
    let _t = g.register("eve", "c", TermType::Android, TCP).await;
}

#[test]
fn an_api_on_the_network_without_a_token_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = [
        ("router.http_addr", "127.0.0.1:0"),
        ("comet.tcp_addr", "127.0.0.1:0"),
        ("comet.ws_addr", "127.0.0.1:0"),
        ("api.addr", "0.0.0.0:0"),
    ];
    let run = |extra: &[(&str, &str)]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_galopush"))
            .arg("standalone")
            .env(env_name("store.path"), dir.path())
            .envs(base.iter().chain(extra).map(|(k, v)| (env_name(k), *v)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run galopush");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().expect("output")
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.addr") && err.contains("api.token"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("galopush ready"),
        "nothing was served"
    );
    let out = run(&[("api.token", API_TOKEN)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("galopush ready"),
        "with a token it starts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `piece` up to `times` times, stopping when the server hangs up or stops reading.
async fn send_until_refused(stream: &mut tokio::net::TcpStream, piece: &[u8], times: usize) {
    let send = async {
        for _ in 0..times {
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), send).await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let g = Gateway::start(&[("limits.max_mpub", "1048576")]).await;
    let mut watcher = g.terminal("bystander", TermType::Android, TCP).await;
    let rss_before = rss_kib(g.pid());

    // 100 MiB announced: 413 at once, while the client is still sending.
    let mut stream = raw::connect(host(&g.api), None, None).await;
    let head = format!(
        "POST /mpub?topic=push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        100 << 20
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    let chunk = vec![b'x'; 64 * 1024];
    send_until_refused(&mut stream, &chunk, 16).await;
    let (status, _) = raw::read_head(&mut stream).await.expect("an answer");
    assert_eq!(status, 413);

    // No Content-Length (chunked): read up to the limit only, then 413.
    let mut stream = raw::connect(host(&g.api), None, None).await;
    let head = format!(
        "POST /mpub?topic=push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    let mut chunked = format!("{:x}\r\n", chunk.len()).into_bytes();
    chunked.extend_from_slice(&chunk);
    chunked.extend_from_slice(b"\r\n");
    send_until_refused(&mut stream, &chunked, 64).await;
    let (status, _) = raw::read_head(&mut stream).await.expect("an answer");
    assert_eq!(status, 413);
    // `/pub` is bounded by limits.max_body. Sent raw: the early 413 closes the connection,
    // which a client still writing the body may see as a reset before it reads the answer.
    let mut stream = raw::connect(host(&g.api), None, None).await;
    let head = format!(
        "POST /pub?topic=push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Content-Length: {}\r\n\r\n",
        1_048_577
    );
    stream.write_all(head.as_bytes()).await.expect("headers");
    send_until_refused(&mut stream, &chunk, 16).await;
    let (status, _) = raw::read_head(&mut stream).await.expect("an answer");
    assert_eq!(status, 413);

    assert!(g.metric(&refused("max_mpub")).await >= 2.0);
    assert_eq!(g.metric(&refused("max_body")).await, 1.0);
    still_serves(&g, rss_before, 20 * 1024, &mut watcher, "bystander", 1).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_on_both_listeners() {
    let g = Gateway::start(&[("limits.http_header_timeout", "1s")]).await;
    for url in [&g.http, &g.api] {
        let mut stream = raw::connect(host(url), None, None).await;
        let started = Instant::now();
        let request = b"POST /pub?topic=push HTTP/1.1\r\nHost: slow\r\nX-Padding: ";
        let mut closed = false;
        // A byte every 200 ms, never finishing the headers.
        for (i, byte) in request.iter().chain(b"a".repeat(200).iter()).enumerate() {
            if stream.write_all(&[*byte]).await.is_err() {
                closed = true;
                break;
            }
            if i > 4 && raw::closed_within(&mut stream, Duration::from_millis(200)).await {
                closed = true;
                break;
            }
            assert!(
                started.elapsed() < SOON,
                "{url}: still open while dribbling"
            );
        }
        assert!(closed, "{url}: the slow client was never cut off");
    }
    assert!(g.metric(&refused("http_header_timeout")).await >= 2.0);
    let r = reqwest::get(format!("{}/healthz", g.http))
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn a_request_that_never_finishes_gets_408_and_a_busy_listener_503() {
    let g = Gateway::start(&[
        ("limits.http_request_timeout", "1s"),
        ("limits.http_concurrency", "2"),
    ])
    .await;
    let stalled_request = format!(
        "POST /pub?topic=push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n\
         Content-Length: 100\r\n\r\n0123456789"
    );
    // Two requests in progress, their bodies stalled: the third is turned away.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = raw::connect(host(&g.api), None, None).await;
        s.write_all(stalled_request.as_bytes())
            .await
            .expect("write");
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, head) = raw::http_head(
        host(&g.api),
        format!("GET /v1/comets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_TOKEN}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(status, 503, "{head}");
    for mut s in stalled {
        let (status, _) = raw::read_head(&mut s).await.expect("an answer");
        assert_eq!(status, 408);
    }
    assert_eq!(g.metric(&refused("http_concurrency")).await, 1.0);
    assert_eq!(g.metric(&refused("http_request_timeout")).await, 2.0);
    // Slots given back: requests go through again.
    assert_eq!(g.comets().await.as_array().map(Vec::len), Some(1));
}
