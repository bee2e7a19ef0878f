//! SPEC §8 and §9: the dispatcher (POST form and GET), CORS, `/v1/comets`, `/healthz`,
//! `/metrics`, and bad configuration stopping the program with a message naming the key.

use std::process::Command;

use galopush_protocol::TermType;

use crate::harness::*;

#[tokio::test]
async fn dispatcher_answers_the_comet_for_each_transport() {
    let g = Gateway::start(&[]).await;
    let post = |id: &str, termtype: &str| {
        g.client()
            .post(format!("{}/v1/gComet.addr", g.http))
            .form(&[("id", id), ("termtype", termtype)])
            .send()
    };
    let answer = |id: &'static str, termtype: &'static str| {
        let request = post(id, termtype);
        async move {
            let r = request.await.expect("post");
            assert_eq!(r.status().as_u16(), 200, "id={id:?} termtype={termtype:?}");
            r.text().await.expect("body")
        }
    };
    assert_eq!(answer("xena", "Android").await, g.tcp);
    assert_eq!(answer("xena", "Web").await, g.ws);
    assert_eq!(answer("xena", "web").await, g.ws, "names in any case");
    // As the original and its own clients (its bench client sends `termtype=1`): a type's
    // bit as a number, an unknown type as a TCP terminal, no id as anyone.
    assert_eq!(answer("xena", "8").await, g.ws);
    assert_eq!(answer("xena", "1").await, g.tcp);
    assert_eq!(answer("xena", "Fridge").await, g.tcp);
    assert_eq!(answer("xena", "3").await, g.tcp);
    assert_eq!(answer("", "Android").await, g.tcp);
    let r = g
        .client()
        .get(format!("{}/v1/gComet.addr?id=xena&termtype=PC", g.http))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), g.tcp);
    let r = g
        .client()
        .get(format!("{}/v1/gComet.addr", g.http))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "no id and no termtype");
    assert_eq!(r.text().await.expect("body"), g.tcp);
    let series = |result: &str| format!("galopush_dispatch_total{{result=\"{result}\"}}");
    assert_eq!(g.metric(&series("unknown_termtype")).await, 3.0);
    assert_eq!(g.metric(&series("no_id")).await, 2.0);
    assert_eq!(g.metric(&series("ok")).await, 6.0);
}

#[tokio::test]
async fn cors_echoes_the_origin_with_credentials() {
    let g = Gateway::start(&[]).await;
    let r = g
        .client()
        .get(format!("{}/v1/gComet.addr?id=a&termtype=Web", g.http))
        .header("Origin", "https://app.example")
        .send()
        .await
        .expect("get");
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let r = g
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/gComet.addr", g.http),
        )
        .header("Origin", "https://app.example")
        .send()
        .await
        .expect("preflight");
    assert!(r.status().is_success());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn comets_health_and_metrics() {
    let g = Gateway::start(&[]).await;
    let _t = g.terminal("yul", TermType::Android, TCP).await;
    let comets = g.comets().await;
    assert_eq!(
        comets,
        serde_json::json!([{"id": "comet-1", "tcp": g.tcp, "ws": g.ws, "sessions": 1}])
    );
    let health = g
        .client()
        .get(format!("{}/healthz", g.http))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let health = reqwest::get(format!("{}/healthz", g.api))
        .await
        .expect("API healthz");
    assert_eq!(health.status().as_u16(), 200, "health needs no token");
    let text = g
        .client()
        .get(format!("{}/metrics", g.api))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for family in [
        "galopush_connections",
        "galopush_deliveries_total",
        "galopush_offline_stored_total",
        "galopush_offline_delivered_total",
        "galopush_bus_messages_total",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
    assert!(text.contains("galopush_connections{termtype=\"Android\"} 1"));
}

fn run_with(env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_galopush"))
        .arg("standalone")
        .env(env_name("store.path"), dir.path())
        .envs(env.iter().map(|(k, v)| (env_name(k), *v)))
        .output()
        .expect("run galopush")
}

#[test]
fn bad_configuration_stops_the_program_naming_the_key() {
    for (key, value) in [
        ("comet.tcp_addr", "nowhere"),
        ("delivery.ack_timeout", "soon"),
        ("auth.mode", "closed"),
    ] {
        let out = run_with(&[(key, value)]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&env_name(key)), "{key}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_galopush"))
        .arg("standalone")
        .env("GALOPUSH_COMET__NO_SUCH_KEY", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GALOPUSH_COMET__NO_SUCH_KEY"));
}

#[test]
fn a_port_in_use_stops_the_program_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_with(&[
        ("router.http_addr", &addr),
        ("comet.tcp_addr", "127.0.0.1:0"),
        ("comet.ws_addr", "127.0.0.1:0"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr) && err.contains("router.http_addr"),
        "{err}"
    );
}

#[tokio::test]
async fn sighup_without_tls_is_harmless() {
    let g = Gateway::start(&[]).await;
    g.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        g.alive(),
        "SIGHUP's default action would have ended the process"
    );
    let r = g
        .client()
        .get(format!("{}/healthz", g.http))
        .send()
        .await
        .expect("still serving");
    assert_eq!(r.status().as_u16(), 200);
}
