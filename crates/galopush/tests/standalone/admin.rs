//! SPEC §13 on the business API: a user's terminals (`GET /v1/users/<uid>`), a logout by the
//! operator (`POST /v1/users/<uid>/logout`), the figures of `GET /v1/stats`, and the console's
//! and the demo terminal's files — who may fetch each, and what bad input is answered.

use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use serde_json::{Value, json};

use crate::harness::*;

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// `GET {api}{path}` with the token; the status and the body as JSON (`Null` when not JSON).
async fn get(g: &Gateway, path: &str) -> (u16, Value) {
    let r = g
        .client()
        .get(format!("{}{path}", g.api))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `POST {api}{path}` with the token; the status and the body's text.
async fn post(g: &Gateway, path: &str) -> (u16, String) {
    let r = g
        .client()
        .post(format!("{}{path}", g.api))
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The terminal of `termtype` in a `/v1/users` answer.
fn terminal(user: &Value, termtype: u8) -> Value {
    user["terminals"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["termtype"] == termtype))
        .cloned()
        .unwrap_or_else(|| panic!("no terminal {termtype} in {user}"))
}

#[tokio::test]
async fn a_users_terminals_show_login_live_where_and_stored_counts() {
    let g = Gateway::start(&[]).await;
    let before = now_ms();
    let _android = g.terminal("ana", TermType::Android, TCP).await;
    let _web = g.terminal("ana", TermType::Web, WEB).await;
    let after = now_ms();
    // A PC terminal logged in with a device token, never connected: what is sent to it is kept.
    g.publish_ok(
        "userOnlineState",
        json!({"uid": "ana", "termtype": 16, "code": "pc", "deviceToken": "dt-1", "online": true})
            .to_string(),
    )
    .await;
    for (topic, body) in [
        ("push", "p1"),
        ("push", "p2"),
        ("callback", "c1"),
        ("msgDownward", "i1"),
    ] {
        g.send_down(topic, "ana", 16, body).await;
    }
    g.wait_retired("msgDownward", 1).await;
    g.wait_retired("callback", 1).await;
    g.wait_retired("push", 2).await;

    let (status, user) = get(&g, "/v1/users/ana").await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["uid"], "ana");
    let types: Vec<u64> = user["terminals"]
        .as_array()
        .expect("terminals")
        .iter()
        .filter_map(|t| t["termtype"].as_u64())
        .collect();
    assert_eq!(
        types,
        [1, 8, 16],
        "one entry per type, in bit order: {user}"
    );

    let android = terminal(&user, 1);
    assert_eq!(android["login"], true);
    assert_eq!(android["deviceToken"], false);
    assert_eq!(android["live"]["comet"], "comet-1");
    let since = android["live"]["since"].as_u64().expect("since");
    assert!(
        (before..=after).contains(&since),
        "{since} not within {before}..={after}"
    );
    assert_eq!(
        android["offline"],
        json!({"push": 0, "callback": 0, "im": 0})
    );
    assert_eq!(terminal(&user, 8)["live"]["comet"], "comet-1");

    let pc = terminal(&user, 16);
    assert_eq!(pc["login"], true);
    assert_eq!(
        pc["deviceToken"], true,
        "whether there is one, never the token"
    );
    assert!(!user.to_string().contains("dt-1"), "{user}");
    assert_eq!(pc["live"], Value::Null);
    assert_eq!(
        pc["offline"],
        json!({"push": 2, "callback": 1, "im": 1}),
        "two pushes coalesced, a callback, an IM"
    );

    let (status, nobody) = get(&g, "/v1/users/nobody").await;
    assert_eq!(status, 200);
    assert_eq!(nobody, json!({"uid": "nobody", "terminals": []}));
}

#[tokio::test]
async fn a_logout_kicks_the_live_terminals_of_its_types_with_kick_4() {
    let g = Gateway::start(&[]).await;
    let mut android = g.terminal("bea", TermType::Android, TCP).await;
    let mut pc = g.terminal("bea", TermType::Pc, TCP).await;
    let mut web = g.terminal("bea", TermType::Web, WEB).await;

    let (status, text) = post(&g, "/v1/users/bea/logout?termtype=9").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!({"uid": "bea", "termtype": 9})
    );
    assert_eq!(closed(&mut android).await, vec![Down::Kick { reason: 4 }]);
    assert_eq!(closed(&mut web).await, vec![Down::Kick { reason: 4 }]);
    assert_eq!(
        pc.ping().await.expect("PC still live"),
        0,
        "not in the mask"
    );
    assert_eq!(
        g.metric("galopush_kicks_total{reason=\"logged_out\"}")
            .await,
        2.0
    );
    g.wait_retired("userOnlineState", 5).await;

    let (_, user) = get(&g, "/v1/users/bea").await;
    let android = terminal(&user, 1);
    assert_eq!(android["login"], false);
    assert_eq!(android["live"], Value::Null);
    assert_eq!(terminal(&user, 16)["login"], true);
    assert_eq!(terminal(&user, 16)["live"]["comet"], "comet-1");

    // The code of the logged-out record no longer registers.
    let mut again = g.connect(TermType::Android, TCP).await;
    let code = again
        .register("bea", "code-bea-1", TermType::Android)
        .await
        .expect("REGRESP");
    assert_eq!(code, 3);
}

#[tokio::test]
async fn admin_input_is_checked_and_the_token_is_required() {
    let g = Gateway::start(&[]).await;
    let long = "u".repeat(33);
    let (status, _) = get(&g, &format!("/v1/users/{long}")).await;
    assert_eq!(status, 400);
    let r = g
        .client()
        .get(format!("{}/v1/users/{long}", g.api))
        .send()
        .await
        .expect("GET");
    let text = r.text().await.expect("body");
    assert!(text.contains("33 bytes") && text.contains("32"), "{text}");
    let (status, _) = get(&g, &format!("/v1/users/{}", "u".repeat(32))).await;
    assert_eq!(status, 200, "32 bytes is a uid a terminal can have");

    for (query, expected) in [
        ("", "missing termtype"),
        ("?termtype=0", "1 to 31"),
        ("?termtype=32", "1 to 31"),
        ("?termtype=Android", "1 to 31"),
        ("?termtype=-1", "1 to 31"),
    ] {
        let (status, text) = post(&g, &format!("/v1/users/cy/logout{query}")).await;
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(expected), "{query}: {text}");
    }
    let (status, text) = post(&g, &format!("/v1/users/{long}/logout?termtype=1")).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        g.retired("userOnlineState").await,
        0,
        "nothing refused reached the bus"
    );

    let plain = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/v1/users/cy"),
        (reqwest::Method::POST, "/v1/users/cy/logout?termtype=31"),
        (reqwest::Method::GET, "/v1/stats"),
    ] {
        let r = plain
            .request(method.clone(), format!("{}{path}", g.api))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-")),
            "{path}: no CORS on the API"
        );
    }
}

#[tokio::test]
async fn stats_count_sessions_deliveries_refusals_and_their_rates() {
    let g = Gateway::start(&[("limits.max_body", "2048")]).await;
    let mut cid = g.terminal("cid", TermType::Android, TCP).await;
    let _dan = g.terminal("dan", TermType::Web, WEB).await;
    g.send_down("push", "cid", 1, "counted").await;
    next_acked(&mut cid).await;
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    g.send_down("push", "nobody", 31, "dropped").await;
    g.wait_metric("galopush_dropped_total{reason=\"no_login\"}", 1.0)
        .await;
    let (status, _) = g.publish("push", "x".repeat(4096)).await;
    assert_eq!(status, 413);

    let (status, stats) = get(&g, "/v1/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert!(stats["at"].as_u64().expect("at") > 0);
    assert_eq!(stats["bus"], "embedded");
    assert_eq!(
        stats["sessions"],
        json!({
            "total": 2,
            "termtypes": {"Android": 1, "iOS": 0, "WinPhone": 0, "Web": 1, "PC": 0},
            "comets": [{
                "id": "comet-1",
                "total": 2,
                "termtypes": {"Android": 1, "iOS": 0, "WinPhone": 0, "Web": 1, "PC": 0},
            }],
        })
    );
    assert_eq!(
        stats["deliveries"]["push"],
        json!({"acked": 1, "failed": 0, "stored": 0, "fromStore": 0})
    );
    assert_eq!(stats["dropped"]["no_login"], 1);
    assert_eq!(stats["refused"]["max_body"], 1);
    assert_eq!(stats["refused"]["inbox_pending"], 0);
    assert_eq!(stats["registrations"]["accepted"], 2);
    assert_eq!(stats["inbox"]["limit"], 100_000);
    assert_eq!(stats["outbox"]["limit"], 100_000);
    assert!(stats["inbox"]["pending"].as_u64().is_some());
    assert_eq!(stats["topics"]["msgDownward"], "msgDownward");
    for window in ["1s", "1m"] {
        let rates = &stats["rates"][window];
        assert!(
            rates["seconds"].as_f64().expect("seconds") > 0.0,
            "{window}: {rates}"
        );
        assert!(
            rates["deliveries"]["callback"]["acked"].as_f64() == Some(0.0),
            "{window}: {rates}"
        );
    }
    // The sampler's first copy was taken at start, before anything was delivered.
    let minute = &stats["rates"]["1m"];
    assert!(
        minute["deliveries"]["push"]["acked"]
            .as_f64()
            .expect("rate")
            > 0.0,
        "{minute}"
    );
    assert!(minute["refused"]["max_body"].as_f64().expect("rate") > 0.0);
}

#[tokio::test]
async fn the_console_loads_without_the_token_and_its_data_needs_it() {
    let g = Gateway::start(&[]).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = plain
        .get(format!("{}/console", g.api))
        .send()
        .await
        .expect("GET /console");
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/console/");

    let r = plain
        .get(format!("{}/console/", g.api))
        .send()
        .await
        .expect("GET /console/");
    assert_eq!(r.status().as_u16(), 200, "the page needs no token");
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().expect("CSP");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(h.keys().all(|k| !k.as_str().starts_with("access-control-")));
    let page = r.text().await.expect("page");
    assert!(page.contains("galopush console") && page.contains("console.js"));
    assert!(
        !page.contains("test-api-token"),
        "the page carries no secret"
    );

    let etag = h["etag"].clone();
    let r = plain
        .get(format!("{}/console/", g.api))
        .header("If-None-Match", etag)
        .send()
        .await
        .expect("revalidate");
    assert_eq!(r.status().as_u16(), 304, "unchanged: not sent again");

    for (file, content_type) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("chart.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    ] {
        let r = plain
            .get(format!("{}/console/{file}", g.api))
            .send()
            .await
            .expect("file");
        assert_eq!(r.status().as_u16(), 200, "{file}");
        assert_eq!(r.headers()["content-type"], content_type, "{file}");
    }
    let r = plain
        .get(format!("{}/console/secrets.txt", g.api))
        .send()
        .await
        .expect("no such file");
    assert_eq!(r.status().as_u16(), 404);
    let r = plain
        .get(format!("{}/v1/stats", g.api))
        .send()
        .await
        .expect("stats");
    assert_eq!(r.status().as_u16(), 401, "the data behind the page does");
    let r = plain
        .get(format!("{}/console/", g.http))
        .send()
        .await
        .expect("public listener");
    assert_eq!(
        r.status().as_u16(),
        404,
        "the console is not on the public listener"
    );
}

#[tokio::test]
async fn the_demo_terminal_is_served_on_the_public_listener_only_with_web_demo() {
    let off = Gateway::start(&[]).await;
    let r = reqwest::get(format!("{}/demo/", off.http))
        .await
        .expect("GET /demo/");
    assert_eq!(r.status().as_u16(), 404, "off by default");

    let on = Gateway::start(&[("web.demo", "true")]).await;
    let r = reqwest::get(format!("{}/demo/", on.http))
        .await
        .expect("GET /demo/");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("CSP")
        .to_owned();
    assert!(csp.contains("connect-src 'self' ws: wss:"), "{csp}");
    let page = r.text().await.expect("page");
    assert!(
        page.contains("auth.mode = \"open\""),
        "the page says what it needs"
    );

    let r = reqwest::get(format!("{}/demo/galopush.js", on.http))
        .await
        .expect("the SDK");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let served = r.text().await.expect("SDK text");
    let sdk = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/sdk/galopush.js"),
    )
    .expect("web/sdk/galopush.js");
    assert_eq!(
        served, sdk,
        "the SDK beside the page is web/sdk/galopush.js"
    );
    let r = reqwest::get(format!("{}/demo/", on.api))
        .await
        .expect("API listener");
    assert!(
        !r.status().is_success(),
        "the demo is not on the API listener: {}",
        r.status()
    );
}
