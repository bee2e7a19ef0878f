//! SPEC §13 on a cluster router: a user's terminals show the comet the user is live on (from
//! the comets' reports) and what Redis keeps for them, `/v1/stats` shows sessions by comet, and
//! a logout through the router kicks a terminal on another process.

use galopush_protocol::TermType;
use galopush_protocol::message::Down;
use serde_json::{Value, json};

use crate::common::process::api_client;
use crate::nodes::*;

async fn get(router: &Node, path: &str) -> Value {
    let r = api_client()
        .get(format!("{}{path}", router.api()))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    serde_json::from_str(&r.text().await.expect("body")).expect("JSON")
}

#[tokio::test]
async fn a_router_shows_where_a_user_is_live_and_logs_them_out_across_the_link() {
    if !redis_or_skip(REDIS).await {
        return;
    }
    let cluster = Cluster::new(REDIS, &[]);
    let router = cluster.router(None, &[]).await;
    let rpc = router.addr("rpc");
    let _a = cluster.comet("comet-a", &[&rpc]).await;
    let b = cluster.comet("comet-b", &[&rpc]).await;
    router.wait_comets(2, 0).await;
    router.login("zoe", TermType::Android, "z").await;
    router.login("zoe", TermType::Pc, "zp").await;
    let mut on_b = register(&b.addr("tcp"), "zoe", "z", TermType::Android).await;
    router.wait_comets(2, 1).await;
    router.push("zoe", 16, "kept for the PC").await;
    router
        .wait_metric("galopush_offline_stored_total{kind=\"push\"}", |v| v >= 1.0)
        .await;

    let user = get(&router, "/v1/users/zoe").await;
    let terminals = user["terminals"].as_array().expect("terminals");
    assert_eq!(terminals.len(), 2, "{user}");
    assert_eq!(terminals[0]["termtype"], 1);
    assert_eq!(terminals[0]["login"], true);
    assert_eq!(terminals[0]["live"]["comet"], "comet-b", "{user}");
    assert!(terminals[0]["live"]["since"].as_u64().expect("since") > 0);
    assert_eq!(terminals[1]["termtype"], 16);
    assert_eq!(terminals[1]["live"], Value::Null);
    assert_eq!(
        terminals[1]["offline"],
        json!({"push": 1, "callback": 0, "im": 0}),
        "read from Redis"
    );

    let stats = get(&router, "/v1/stats").await;
    let comets = stats["sessions"]["comets"].as_array().expect("comets");
    let ids: Vec<&str> = comets.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["comet-a", "comet-b"]);
    assert_eq!(comets[0]["total"], 0);
    assert_eq!(comets[1]["total"], 1);
    assert_eq!(comets[1]["termtypes"]["Android"], 1);
    assert_eq!(stats["sessions"]["total"], 1);

    let r = api_client()
        .post(format!("{}/v1/users/zoe/logout?termtype=1", router.api()))
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(closed(&mut on_b).await, vec![Down::Kick { reason: 4 }]);
    router.wait_comets(2, 0).await;
    let user = get(&router, "/v1/users/zoe").await;
    assert_eq!(user["terminals"][0]["login"], false, "{user}");
    assert_eq!(user["terminals"][0]["live"], Value::Null, "{user}");
    cluster.clean().await;
}
