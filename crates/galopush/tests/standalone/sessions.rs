//! SPEC §5: authentication, registration rules, timeouts, and the kicks.

use std::time::Duration;

use bytes::Bytes;
use galopush_protocol::TermType;
use galopush_protocol::message::{Down, Register, Up};
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn register_with_the_login_code_succeeds() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("alice", TermType::Android, TCP).await;
    assert_eq!(t.ping().await.expect("ping"), 0, "PONG 0 once registered");
    g.wait_metric("galopush_connections{termtype=\"Android\"}", 1.0)
        .await;
}

#[tokio::test]
async fn wrong_token_gets_regresp_3_and_is_closed() {
    let g = Gateway::start(&[]).await;
    g.login("bob", TermType::Ios, "right").await;
    let mut t = g.connect(TermType::Ios, TCP).await;
    assert_eq!(
        t.register("bob", "wrong", TermType::Ios)
            .await
            .expect("regresp"),
        3
    );
    assert!(closed(&mut t).await.is_empty());
}

#[tokio::test]
async fn no_login_record_gets_regresp_3() {
    let g = Gateway::start(&[]).await;
    let mut t = g.connect(TermType::Pc, TCP).await;
    assert_eq!(
        t.register("nobody", "x", TermType::Pc)
            .await
            .expect("regresp"),
        3
    );
    closed(&mut t).await;
    // A record for another terminal type does not count either.
    g.login("carol", TermType::Android, "c").await;
    let mut t = g.connect(TermType::Pc, TCP).await;
    assert_eq!(
        t.register("carol", "c", TermType::Pc)
            .await
            .expect("regresp"),
        3
    );
}

#[tokio::test]
async fn terminal_type_that_is_not_one_bit_is_refused() {
    let g = Gateway::start(&[("auth.mode", "open")]).await;
    for term_type in [0u8, 3, 32, 255] {
        let mut t = g.connect(TermType::Android, TCP).await;
        let register = Up::Register(Register {
            version: 1,
            term_type,
            id: "dave".into(),
            token: "t".into(),
        });
        t.send(1, register).await.expect("send");
        let (_, down) = next(&mut t).await;
        assert_eq!(down, Down::RegResp { code: 3 }, "term type {term_type}");
        closed(&mut t).await;
    }
}

#[tokio::test]
async fn second_register_on_a_connection_changes_nothing() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("erin", TermType::Pc, TCP).await;
    // Even with another identity, a registered connection stays what it was.
    assert_eq!(
        t.register("mallory", "x", TermType::Pc)
            .await
            .expect("regresp"),
        0
    );
    g.send_down("push", "erin", 31, "still erin").await;
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("still erin"));
}

#[tokio::test]
async fn before_register_ping_gets_pong_1_acks_are_ignored_and_im_closes() {
    let g = Gateway::start(&[]).await;
    let mut t = g.connect(TermType::Android, TCP).await;
    assert_eq!(t.ping().await.expect("pong"), 1);
    t.send(9, Up::PushResp { code: 0 }).await.expect("ack");
    assert_eq!(t.ping().await.expect("still open"), 1);
    t.send_im(Bytes::from("too early")).await.expect("send");
    closed(&mut t).await;
}

#[tokio::test]
async fn unregistered_connection_is_closed_after_register_timeout() {
    let g = Gateway::start(&[("comet.register_timeout", "500ms")]).await;
    let mut t = g.connect(TermType::Android, TCP).await;
    let started = std::time::Instant::now();
    closed(&mut t).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn idle_connection_is_closed_and_ping_keeps_it_open() {
    let g = Gateway::start(&[("comet.idle_timeout", "1s")]).await;
    let mut busy = g.terminal("fay", TermType::Android, TCP).await;
    let mut idle = g.terminal("gus", TermType::Android, TCP).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(busy.ping().await.expect("pong"), 0);
    }
    closed(&mut idle).await;
    assert_eq!(busy.ping().await.expect("still open"), 0);
}

#[tokio::test]
async fn second_connection_of_the_same_terminal_kicks_the_first_with_kick_1() {
    let g = Gateway::start(&[]).await;
    let mut first = g.terminal("hal", TermType::Android, TCP).await;
    let mut second = g
        .register("hal", "code-hal-1", TermType::Android, TCP)
        .await;
    let seen = closed(&mut first).await;
    assert_eq!(seen, vec![Down::Kick { reason: 1 }]);
    g.send_down("push", "hal", 1, "to the new one").await;
    let (_, down) = next_acked(&mut second).await;
    assert_eq!(push(&down).2, Bytes::from("to the new one"));
    g.wait_metric("galopush_kicks_total{reason=\"repeat_login\"}", 1.0)
        .await;
}

#[tokio::test]
async fn new_login_kicks_the_live_terminal_with_kick_1() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("ivy", TermType::Pc, TCP).await;
    g.login("ivy", TermType::Pc, "new-code").await;
    assert_eq!(closed(&mut t).await, vec![Down::Kick { reason: 1 }]);
    let mut old = g.connect(TermType::Pc, TCP).await;
    assert_eq!(
        old.register("ivy", "code-ivy-16", TermType::Pc)
            .await
            .expect("regresp"),
        3
    );
    g.register("ivy", "new-code", TermType::Pc, TCP).await;
}

#[tokio::test]
async fn android_and_ios_exclude_each_other_with_kick_2() {
    let g = Gateway::start(&[]).await;
    let mut ios = g.terminal("jay", TermType::Ios, TCP).await;
    let mut pc = g.terminal("jay", TermType::Pc, TCP).await;
    g.login("jay", TermType::Android, "a").await;
    assert_eq!(closed(&mut ios).await, vec![Down::Kick { reason: 2 }]);
    // The iOS login record is gone: its code no longer registers.
    let mut again = g.connect(TermType::Ios, TCP).await;
    assert_eq!(
        again
            .register("jay", "code-jay-2", TermType::Ios)
            .await
            .expect("regresp"),
        3
    );
    // Other terminal types are untouched.
    assert_eq!(pc.ping().await.expect("pc still open"), 0);
    g.wait_metric("galopush_kicks_total{reason=\"mutual_exclusion\"}", 1.0)
        .await;
}

#[tokio::test]
async fn logout_kicks_with_kick_4_and_the_code_stops_working() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("kim", TermType::WinPhone, TCP).await;
    g.publish_ok(
        "userOnlineState",
        json!({"uid": "kim", "termtype": 4, "code": "code-kim-4", "online": false}).to_string(),
    )
    .await;
    assert_eq!(closed(&mut t).await, vec![Down::Kick { reason: 4 }]);
    let mut again = g.connect(TermType::WinPhone, TCP).await;
    assert_eq!(
        again
            .register("kim", "code-kim-4", TermType::WinPhone)
            .await
            .expect("regresp"),
        3
    );
}

#[tokio::test]
async fn logout_of_another_code_leaves_the_live_terminal_alone() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("lee", TermType::Pc, TCP).await;
    g.publish_ok(
        "userOnlineState",
        json!({"uid": "lee", "termtype": 16, "code": "some-old-code", "online": false}).to_string(),
    )
    .await;
    g.wait_retired("userOnlineState", 2).await;
    assert_eq!(t.ping().await.expect("still open"), 0);
}

#[tokio::test]
async fn open_mode_registers_anyone_and_keeps_their_offline_messages() {
    let g = Gateway::start(&[("auth.mode", "open")]).await;
    let t = g.register("max", "anything", TermType::Android, TCP).await;
    g.close(t, "max", TermType::Android).await;
    g.send_down("push", "max", 1, "while away").await;
    g.wait_retired("push", 1).await;
    let mut back = g.register("max", "anything", TermType::Android, TCP).await;
    let (_, down) = next_acked(&mut back).await;
    assert_eq!(push(&down), (1, 0, Bytes::from("while away")));
}

#[tokio::test]
async fn closed_connections_are_no_longer_live() {
    let g = Gateway::start(&[]).await;
    let t = g.terminal("ned", TermType::Android, TCP).await;
    let comets = g.comets().await;
    assert_eq!(comets[0]["sessions"], 1);
    t.close().await.expect("close");
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let comets = g.comets().await;
        if comets[0]["sessions"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "session still live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What is published now is stored, not sent to the closed connection.
    g.send_down("push", "ned", 1, "stored").await;
    g.wait_metric("galopush_offline_stored_total{kind=\"push\"}", 1.0)
        .await;
}

/// Every KICK sent so far, whatever its reason.
async fn kicks(g: &Gateway) -> f64 {
    let mut total = 0.0;
    for reason in [
        "repeat_login",
        "mutual_exclusion",
        "session_timeout",
        "logged_out",
    ] {
        total += g
            .metric(&format!("galopush_kicks_total{{reason=\"{reason}\"}}"))
            .await;
    }
    total
}

/// `GET /v1/users/<uid>`: the entry of one terminal type, which must be there.
async fn user_terminal(g: &Gateway, uid: &str, term: TermType) -> serde_json::Value {
    g.user_terminal(uid, term)
        .await
        .unwrap_or_else(|| panic!("no terminal {term} for {uid}"))
}

#[tokio::test]
async fn a_repeated_login_with_the_same_code_kicks_no_one_and_takes_the_new_device_token() {
    let g = Gateway::start(&[]).await;
    let mut t = g.terminal("oli", TermType::Android, TCP).await;
    assert_eq!(
        user_terminal(&g, "oli", TermType::Android).await["deviceToken"],
        false
    );
    let kicked = kicks(&g).await;
    // The business side sends the login it already sent again, with a new deviceToken.
    g.publish_ok(
        "userOnlineState",
        json!({"uid": "oli", "termtype": 1, "code": "code-oli-1",
               "deviceToken": "dt-new", "online": true})
        .to_string(),
    )
    .await;
    g.wait_retired("userOnlineState", 2).await;
    g.send_down("push", "oli", 1, "after the repeated login")
        .await;
    // The first frame after the repeat is the push: no KICK came before it.
    let (_, down) = next_acked(&mut t).await;
    assert_eq!(push(&down).2, Bytes::from("after the repeated login"));
    assert_eq!(t.ping().await.expect("still open"), 0);
    assert_eq!(kicks(&g).await, kicked, "no KICK counted");
    let android = user_terminal(&g, "oli", TermType::Android).await;
    assert_eq!(android["deviceToken"], true, "{android}");
    assert_eq!(android["login"], true, "{android}");
    assert!(android["live"].is_object(), "still live: {android}");

    // A login with another code is a new login: KICK 1, as before.
    g.login("oli", TermType::Android, "another-code").await;
    assert_eq!(closed(&mut t).await, vec![Down::Kick { reason: 1 }]);
    assert_eq!(kicks(&g).await, kicked + 1.0);
}

#[tokio::test]
async fn a_repeated_login_does_not_apply_the_android_ios_exclusion() {
    // Open mode lets Android and iOS both hold a record, each from its REGISTER.
    let g = Gateway::start(&[("auth.mode", "open")]).await;
    let mut android = g.register("pia", "a-code", TermType::Android, TCP).await;
    let mut ios = g.register("pia", "i-code", TermType::Ios, TCP).await;
    let kicked = kicks(&g).await;
    g.publish_ok(
        "userOnlineState",
        json!({"uid": "pia", "termtype": 1, "code": "a-code",
               "deviceToken": "dt", "online": true})
        .to_string(),
    )
    .await;
    g.wait_retired("userOnlineState", 1).await;
    g.send_down("push", "pia", 3, "both still here").await;
    for t in [&mut android, &mut ios] {
        let (_, down) = next_acked(t).await;
        assert_eq!(push(&down).2, Bytes::from("both still here"));
    }
    assert_eq!(kicks(&g).await, kicked, "neither KICK 1 nor KICK 2");
    assert_eq!(
        user_terminal(&g, "pia", TermType::Ios).await["login"],
        true,
        "the iOS record is kept"
    );
    // A new Android login still excludes iOS.
    g.login("pia", TermType::Android, "a-code-2").await;
    assert_eq!(closed(&mut ios).await, vec![Down::Kick { reason: 2 }]);
    assert_eq!(closed(&mut android).await, vec![Down::Kick { reason: 1 }]);
}
