//! Phones that are asleep (SPEC §12): a push for an iOS or Android terminal that is not live
//! goes to the stand-in playing APNs or FCM when its login record has a deviceToken, and is
//! still stored and delivered over TCP when the terminal registers; dead tokens are removed
//! from the login record; 429 and 5xx are tried again after `Retry-After`; delivery reports say
//! `apns` / `fcm` once the service took the message. Plus the rate of requests over the one
//! HTTP/2 connection (ignored by default: a measurement, not a check).

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use serde_json::{Value, json};

use crate::common::pki::setting;
use crate::harness::{Gateway, TCP, Webhook, env_name, next_acked, push};
use crate::standin::{KEY_ID, Reply, Seen, StandIn, TEAM_ID, TOPIC, TTL};

const REPORTS: &str = "deliveryReport";

/// The settings of `[apns]` (token auth unless the stand-in asks for a certificate).
fn apns(standin: &StandIn, certificate: bool) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("apns.topic", TOPIC.to_owned()),
        ("apns.endpoint", standin.url.clone()),
        ("apns.ca", setting(&standin.pki.ca)),
        ("apns.ttl", format!("{TTL}s")),
    ];
    if certificate {
        settings.push(("apns.cert_file", setting(&standin.file)));
    } else {
        settings.extend([
            ("apns.key_file", setting(&standin.file)),
            ("apns.key_id", KEY_ID.to_owned()),
            ("apns.team_id", TEAM_ID.to_owned()),
        ]);
    }
    settings
}

/// The settings of `[fcm]`.
fn fcm(standin: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("fcm.service_account", setting(&standin.file)),
        ("fcm.endpoint", standin.url.clone()),
        ("fcm.ca", setting(&standin.pki.ca)),
        ("fcm.ttl", format!("{TTL}s")),
    ]
}

async fn gateway(settings: Vec<(&'static str, String)>) -> Gateway {
    let borrowed: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gateway::start(&borrowed).await
}

/// Publishes a login record with a deviceToken and waits until it is in force.
async fn phone_login(g: &Gateway, uid: &str, term: TermType, token: &str) {
    let before = g.retired("userOnlineState").await;
    g.publish_ok(
        "userOnlineState",
        json!({"uid": uid, "termtype": term.bit(), "code": code(uid), "deviceToken": token, "online": true})
            .to_string(),
    )
    .await;
    g.wait_retired("userOnlineState", before + 1).await;
}

fn code(uid: &str) -> String {
    format!("code-{uid}")
}

fn provider(name: &str, outcome: &str) -> String {
    format!("galopush_provider_total{{provider=\"{name}\",outcome=\"{outcome}\"}}")
}

/// Whether the admin API says the terminal's login record has a deviceToken.
async fn has_device_token(g: &Gateway, uid: &str, term: TermType) -> bool {
    g.user_terminal(uid, term).await.expect("a login record")["deviceToken"] == true
}

#[tokio::test]
async fn an_offline_iphone_gets_an_apns_request_and_still_its_stored_push() {
    let apple = StandIn::apns().await;
    let g = gateway(apns(&apple, false)).await;
    phone_login(&g, "ann", TermType::Ios, "token-ann").await;
    g.send_down("push", "ann", 2, "hello \"ann\"").await;
    let seen = apple.wait_for(1).await;
    assert_eq!(seen[0].path, "/3/device/token-ann");
    assert_eq!(
        seen[0].body,
        json!({"aps": {"alert": "hello \"ann\"", "badge": 1, "sound": "default"}})
    );
    g.wait_metric(&provider("apns", "sent"), 1.0).await;
    g.send_down("push", "ann", 2, "again").await;
    let seen = apple.wait_for(2).await;
    assert_eq!(seen[1].body["aps"]["badge"], 2, "two pushes are stored");
    assert_eq!(apple.connections(), 1, "one connection, reused");

    let mut t = g.register("ann", &code("ann"), TermType::Ios, TCP).await;
    let (offline, _, body) = push(&next_acked(&mut t).await.1);
    assert_eq!((offline, body), (2, Bytes::from("again")));
}

#[tokio::test]
async fn certificate_auth_presents_the_certificate_and_no_token() {
    let apple = StandIn::apns_with_certificates().await;
    let g = gateway(apns(&apple, true)).await;
    phone_login(&g, "cat", TermType::Ios, "token-cat").await;
    g.send_down("push", "cat", 2, "by certificate").await;
    let seen = apple.wait_for(1).await;
    assert!(!seen[0].headers.contains_key("authorization"));
    g.wait_metric(&provider("apns", "sent"), 1.0).await;
}

#[tokio::test]
async fn a_dead_token_is_removed_and_the_next_push_asks_apple_nothing() {
    let apple = StandIn::apns().await;
    let g = gateway(apns(&apple, false)).await;
    phone_login(&g, "gone", TermType::Ios, "token-gone").await;
    phone_login(&g, "bad", TermType::Ios, "token-bad").await;
    apple
        .script([Reply::gone(), Reply::bad_device_token()])
        .await;
    g.send_down("push", "gone", 2, "first").await;
    apple.wait_for(1).await;
    g.send_down("push", "bad", 2, "first").await;
    apple.wait_for(2).await;
    g.wait_metric(&provider("apns", "dead_token"), 2.0).await;
    for uid in ["gone", "bad"] {
        assert!(
            !has_device_token(&g, uid, TermType::Ios).await,
            "{uid}'s token is removed"
        );
    }
    g.send_down("push", "gone", 2, "second").await;
    g.wait_metric(&provider("apns", "no_token"), 1.0).await;
    assert_eq!(
        apple.seen().await.len(),
        2,
        "no request for a removed token"
    );

    // The next login brings a new token, which is used.
    phone_login(&g, "gone", TermType::Ios, "token-gone-2").await;
    g.send_down("push", "gone", 2, "third").await;
    assert_eq!(apple.wait_for(3).await[2].path, "/3/device/token-gone-2");
    let mut t = g.register("gone", &code("gone"), TermType::Ios, TCP).await;
    let (offline, _, body) = push(&next_acked(&mut t).await.1);
    assert_eq!((offline, body), (3, Bytes::from("third")));
}

#[tokio::test]
async fn too_many_requests_then_ok_delivers_once_after_retry_after() {
    let apple = StandIn::apns().await;
    let g = gateway(apns(&apple, false)).await;
    phone_login(&g, "tim", TermType::Ios, "token-tim").await;
    apple.script([Reply::too_many(1)]).await;
    g.send_down("push", "tim", 2, "patience").await;
    g.wait_metric(&provider("apns", "sent"), 1.0).await;
    let seen = apple.wait_for(2).await;
    assert_eq!(seen.len(), 2, "one refused, one accepted: {seen:?}");
    assert_eq!(seen[0].body, seen[1].body);
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "Retry-After: 1 honoured ({:?})",
        seen[1].at - seen[0].at
    );
    assert_eq!(g.metric(&provider("apns", "retried")).await, 1.0);
}

#[tokio::test]
async fn an_offline_android_phone_gets_an_fcm_message_and_still_its_stored_push() {
    let google = StandIn::fcm().await;
    let g = gateway(fcm(&google)).await;
    phone_login(&g, "andy", TermType::Android, "fcm-andy").await;
    g.send_down("push", "andy", 1, "hi andy").await;
    let seen = google.wait_for(1).await;
    assert_eq!(
        seen[0].body,
        json!({"message": {"token": "fcm-andy", "data": {"body": "hi andy", "offline": "1"},
               "android": {"priority": "high", "ttl": format!("{TTL}s")}}})
    );
    g.wait_metric(&provider("fcm", "sent"), 1.0).await;
    g.send_down("push", "andy", 1, "still asleep").await;
    assert_eq!(
        google.wait_for(2).await[1].body["message"]["data"]["offline"],
        "2"
    );
    assert_eq!(google.issued().await, 1, "the access token is kept");

    let mut t = g
        .register("andy", &code("andy"), TermType::Android, TCP)
        .await;
    let (offline, _, body) = push(&next_acked(&mut t).await.1);
    assert_eq!((offline, body), (2, Bytes::from("still asleep")));
}

#[tokio::test]
async fn ims_go_to_the_phone_with_fcm_im_and_callbacks_never() {
    let google = StandIn::fcm().await;
    let mut settings = fcm(&google);
    settings.push(("fcm.im", "true".to_owned()));
    let g = gateway(settings).await;
    phone_login(&g, "ida", TermType::Android, "fcm-ida").await;
    g.send_down("callback", "ida", 1, "not for the phone").await;
    g.send_down("msgDownward", "ida", 1, "an IM").await;
    let data = |seen: &Seen| seen.body["message"]["data"].clone();
    assert_eq!(
        data(&google.wait_for(1).await[0]),
        json!({"body": "an IM", "offline": "1"}),
        "the callback was not sent"
    );
    g.send_down("msgDownward", "ida", 1, "another").await;
    assert_eq!(
        data(&google.wait_for(2).await[1]),
        json!({"body": "another", "offline": "2"}),
        "two IMs are stored"
    );
    g.wait_metric(&provider("fcm", "sent"), 2.0).await;
    assert_eq!(google.seen().await.len(), 2);
}

#[tokio::test]
async fn fcm_unregistered_removes_the_token_and_503_is_tried_again() {
    let google = StandIn::fcm().await;
    let g = gateway(fcm(&google)).await;
    phone_login(&g, "una", TermType::Android, "fcm-una").await;
    phone_login(&g, "sam", TermType::Android, "fcm-sam").await;
    google.script([Reply::unregistered()]).await;
    g.send_down("push", "una", 1, "anyone?").await;
    g.wait_metric(&provider("fcm", "dead_token"), 1.0).await;
    assert!(!has_device_token(&g, "una", TermType::Android).await);
    g.send_down("push", "una", 1, "anyone now?").await;
    g.wait_metric(&provider("fcm", "no_token"), 1.0).await;
    assert_eq!(google.seen().await.len(), 1);

    google.script([Reply::unavailable(1)]).await;
    g.send_down("push", "sam", 1, "later").await;
    g.wait_metric(&provider("fcm", "sent"), 1.0).await;
    let seen = google.wait_for(3).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].body, seen[2].body);
    assert!(seen[2].at - seen[1].at >= Duration::from_secs(1));
    assert_eq!(g.metric(&provider("fcm", "retried")).await, 1.0);
}

/// Runs `galopush standalone` with `settings` on free ports, expecting it to refuse to start;
/// returns what it printed on stderr.
async fn refused_start(settings: &[(&str, &str)]) -> String {
    let data = tempfile::tempdir().expect("tempdir");
    let store = setting(&data.path().join("store"));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_galopush"));
    command
        .arg("standalone")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (key, value) in [
        ("router.http_addr", "127.0.0.1:0"),
        ("api.addr", "127.0.0.1:0"),
        ("comet.tcp_addr", "127.0.0.1:0"),
        ("comet.ws_addr", "127.0.0.1:0"),
        ("store.path", store.as_str()),
    ]
    .iter()
    .chain(settings)
    {
        command.env(env_name(key), value);
    }
    let out = tokio::time::timeout(crate::common::process::WITHIN, command.output())
        .await
        .expect("the start is refused in time")
        .expect("run galopush");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn keys_that_cannot_be_used_stop_the_start_naming_the_setting() {
    let apple = StandIn::apns().await;
    let missing = setting(&apple.pki.dir.path().join("missing.p8"));
    let ca = setting(&apple.pki.ca);
    let token = [
        ("apns.key_id", KEY_ID),
        ("apns.team_id", TEAM_ID),
        ("apns.topic", TOPIC),
    ];
    let mut settings = token.to_vec();
    settings.push(("apns.key_file", &missing));
    let err = refused_start(&settings).await;
    assert!(
        err.contains("apns.key_file") && err.contains("missing.p8"),
        "{err}"
    );

    let mut settings = token.to_vec();
    settings.push(("apns.key_file", &ca));
    let err = refused_start(&settings).await;
    assert!(
        err.contains("apns.key_file"),
        "a certificate is no key: {err}"
    );

    let mut settings = token.to_vec();
    settings.extend([("apns.key_file", ca.as_str()), ("apns.cert_file", &ca)]);
    let err = refused_start(&settings).await;
    assert!(
        err.contains("apns.key_file") && err.contains("apns.cert_file"),
        "{err}"
    );

    let err = refused_start(&[("fcm.service_account", &ca)]).await;
    assert!(err.contains("fcm.service_account"), "{err}");
}

/// The first `n` reports, without their `at`.
async fn reports(hook: &Webhook, n: usize) -> Vec<Value> {
    hook.wait_for(n)
        .await
        .into_iter()
        .map(|(topic, mut report)| {
            assert_eq!(topic, REPORTS, "{report}");
            report.as_object_mut().expect("an object").remove("at");
            report
        })
        .collect()
}

#[tokio::test]
async fn reports_say_acked_stored_then_apns_and_dropped() {
    let apple = StandIn::apns().await;
    let hook = Webhook::start(0).await;
    let mut settings = apns(&apple, false);
    settings.extend([
        ("bus.webhook_url", hook.url.clone()),
        ("topics.delivery_report", REPORTS.to_owned()),
    ]);
    let g = gateway(settings).await;
    let publish = |uid: &str, id: &str| {
        json!({"receivers": [{"uid": uid, "termtype": 2}], "body": "b", "id": id}).to_string()
    };

    let mut live = g.terminal("liv", TermType::Ios, TCP).await;
    g.publish_ok("push", publish("liv", "p-1")).await;
    next_acked(&mut live).await;
    assert_eq!(
        reports(&hook, 1).await,
        [json!({"id": "p-1", "uid": "liv", "termtype": 2, "kind": "push", "outcome": "acked"})]
    );

    phone_login(&g, "zzz", TermType::Ios, "token-zzz").await;
    g.publish_ok("push", publish("zzz", "p-2")).await;
    apple.wait_for(1).await;
    assert_eq!(
        reports(&hook, 3).await[1..],
        [
            json!({"id": "p-2", "uid": "zzz", "termtype": 2, "kind": "push", "outcome": "stored"}),
            json!({"id": "p-2", "uid": "zzz", "termtype": 2, "kind": "push", "outcome": "apns"}),
        ]
    );

    g.publish_ok("push", publish("nobody", "p-3")).await;
    assert_eq!(
        reports(&hook, 4).await[3],
        json!({"id": "p-3", "uid": "nobody", "termtype": 2, "kind": "push", "outcome": "dropped"})
    );
    g.wait_metric("galopush_delivery_reports_total{outcome=\"apns\"}", 1.0)
        .await;
}

/// `POST /mpub?topic=`, which must be accepted.
async fn mpub(g: &Gateway, topic: &str, lines: Vec<String>) {
    let r = g
        .client()
        .post(format!("{}/mpub", g.api))
        .query(&[("topic", topic)])
        .body(lines.join("\n"))
        .send()
        .await
        .expect("POST /mpub");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

/// The rate of APNs requests over one HTTP/2 connection: 20000 pushes, one per offline iPhone,
/// published in batches through `/mpub`, counted at the stand-in. A measurement (run it with
/// `--ignored --nocapture`, on a release build), not a check of the normal suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn apns_requests_per_second_over_one_connection() {
    const PHONES: usize = 20_000;
    const BATCH: usize = 1000;
    let apple = StandIn::apns().await;
    let mut settings = apns(&apple, false);
    settings.extend([
        ("store.kind", "memory".to_owned()),
        ("apns.queue", PHONES.to_string()),
        ("log.level", "warn".to_owned()),
    ]);
    let g = gateway(settings).await;
    for start in (0..PHONES).step_by(BATCH) {
        mpub(
            &g,
            "userOnlineState",
            (start..start + BATCH)
                .map(|i| {
                    json!({"uid": format!("p{i}"), "termtype": 2, "code": "c",
                           "deviceToken": format!("t{i}"), "online": true})
                    .to_string()
                })
                .collect(),
        )
        .await;
    }
    g.wait_retired("userOnlineState", PHONES as u64).await;
    let started = std::time::Instant::now();
    for start in (0..PHONES).step_by(BATCH) {
        mpub(
            &g,
            "push",
            (start..start + BATCH)
                .map(|i| {
                    json!({"receivers": [{"uid": format!("p{i}"), "termtype": 2}], "body": "wake up"})
                        .to_string()
                })
                .collect(),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while g.metric(&provider("apns", "sent")).await < PHONES as f64 {
        assert!(tokio::time::Instant::now() < deadline, "not all sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let seen = apple.seen().await;
    let (first, last) = (seen[0].at, seen[seen.len() - 1].at);
    println!(
        "APNs stand-in: {} requests over {} connection(s); {:.0} requests/s from publish to the last answer ({:.2} s), {:.0}/s between the first and the last request",
        seen.len(),
        apple.connections(),
        PHONES as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        (seen.len() - 1) as f64 / (last - first).as_secs_f64(),
    );
    assert_eq!(apple.connections(), 1);
}
