//! The demo web terminal (`/demo/` with `web.demo = true`) in Chromium: a Web terminal made of
//! the page and the browser SDK, against the gateway's real dispatcher and comet.

use galopush_protocol::TermType;
use serde_json::json;

use crate::driver::Browser;
use crate::harness::*;

/// The size of the demo's screenshots (docs/demo.png is one).
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 720;

#[tokio::test]
async fn the_demo_page_registers_receives_a_push_acks_it_and_sends_an_im_to_the_webhook() {
    let Some(browser) = Browser::open("demo", WIDTH, HEIGHT).await else {
        return;
    };
    let hook = Webhook::start(0).await;
    let g = Gateway::start(&[("web.demo", "true"), ("bus.webhook_url", &hook.url)]).await;
    g.login("wendy", TermType::Web, "w-code").await;
    browser.goto(&format!("{}/demo/", g.http)).await;
    browser.type_into("#uid", "wendy").await;
    browser.type_into("#code", "w-code").await;
    browser.click("#connect").await;
    browser.wait_text("#state", "registered as wendy").await;
    g.wait_metric("galopush_connections{termtype=\"Web\"}", 1.0)
        .await;

    g.send_down("push", "wendy", 8, "hello from the business side")
        .await;
    browser
        .wait_text("#log", "hello from the business side")
        .await;
    // The page's SDK acked it: the gateway counts the delivery acked, not failed.
    g.wait_metric(
        "galopush_deliveries_total{kind=\"push\",outcome=\"acked\"}",
        1.0,
    )
    .await;
    assert_eq!(
        g.metric("galopush_deliveries_total{kind=\"push\",outcome=\"failed\"}")
            .await,
        0.0
    );

    g.send_down("msgDownward", "wendy", 8, "an IM for the browser")
        .await;
    browser.wait_text("#log", "an IM for the browser").await;

    browser
        .type_into("#im-text", "hello from the browser")
        .await;
    browser.click("#im-send").await;
    browser.wait_text("#log", "IMRESP 0").await;
    let got = hook.wait_for(1).await;
    assert_eq!(
        got[0],
        (
            "msgUpward".to_owned(),
            json!({"uid": "wendy", "termtype": 8, "body": "hello from the browser"})
        )
    );
    browser.screenshot("demo").await;
}

#[tokio::test]
async fn the_demo_page_says_when_the_code_is_not_a_login() {
    let Some(browser) = Browser::open("demo_refused", WIDTH, HEIGHT).await else {
        return;
    };
    let g = Gateway::start(&[("web.demo", "true")]).await;
    g.login("wes", TermType::Web, "right").await;
    browser.goto(&format!("{}/demo/", g.http)).await;
    browser.type_into("#uid", "wes").await;
    browser.type_into("#code", "wrong").await;
    browser.click("#connect").await;
    browser.wait_text("#state", "REGISTER refused").await;
    g.wait_metric("galopush_registrations_total{result=\"refused\"}", 1.0)
        .await;
    assert_eq!(
        browser
            .find("#connect")
            .await
            .prop("disabled")
            .await
            .expect("prop")
            .as_deref(),
        Some("false"),
        "the page lets the user try again, and does not retry a refused code by itself"
    );
    browser.screenshot("demo_refused").await;
}
