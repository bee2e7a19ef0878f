//! The operator console (`/console/` on the business API) in Chromium, against a gateway with
//! an API token and a TCP terminal: the token asked once and kept out of URLs, the comet and the
//! user shown, a push sent from the page's form, a logout from the page's button.

use galopush_protocol::TermType;
use galopush_protocol::message::Down;

use crate::common::process::API_TOKEN;
use crate::driver::Browser;
use crate::harness::*;

/// The size of the console's screenshots (docs/console.png is one).
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1500;

/// The cell of the comets table with the sessions of all comets.
const SESSIONS_IN_ALL: &str = "#comets tfoot td:nth-child(4)";

#[tokio::test]
async fn the_console_shows_the_comet_and_a_user_sends_a_push_and_logs_the_user_out() {
    let Some(browser) = Browser::open("console", WIDTH, HEIGHT).await else {
        return;
    };
    let g = Gateway::start(&[]).await;
    let mut tom = g.terminal("tom", TermType::Android, TCP).await;
    let _tom_pc = g.terminal("tom", TermType::Pc, TCP).await;
    browser.goto(&format!("{}/console/", g.api)).await;

    // The page loads without the token, then asks for it.
    browser
        .wait_text("#token-dialog", "asks for its token")
        .await;
    browser.type_into("#token-input", API_TOKEN).await;
    browser.click("#token-form button[type=submit]").await;
    let comets = browser.wait_text("#comets tbody", "comet-1").await;
    assert!(
        comets.contains(&g.tcp) && comets.contains(&g.ws),
        "{comets}"
    );
    browser.wait_exact(SESSIONS_IN_ALL, "2").await;
    let url = browser.client.current_url().await.expect("URL");
    assert!(
        !url.as_str().contains(API_TOKEN),
        "the token is never in a URL: {url}"
    );
    assert_eq!(
        browser
            .run("return sessionStorage.getItem('galopush-console-token')")
            .await,
        API_TOKEN,
        "kept in the tab's sessionStorage"
    );

    // Asked once: a reload uses the kept token.
    browser.client.refresh().await.expect("reload");
    browser.wait_text("#comets tbody", "comet-1").await;
    assert_eq!(
        browser
            .run("return document.getElementById('token-dialog').open")
            .await,
        false
    );

    browser.type_into("#user-uid", "tom").await;
    browser.click("#user-form button[type=submit]").await;
    let terminals = browser.wait_text("#user-table", "on comet-1").await;
    assert!(
        terminals.contains("Android") && terminals.contains("PC"),
        "{terminals}"
    );

    browser.type_into("#send-uid", "tom").await;
    browser.click("#send-types input[value='16']").await;
    browser
        .type_into("#send-body", "sent from the console")
        .await;
    browser.click("#send-form button[type=submit]").await;
    browser.wait_text("#send-result", "Accepted on push").await;
    let (_, down) = next_acked(&mut tom).await;
    assert_eq!(push(&down).2, bytes::Bytes::from("sent from the console"));
    browser
        .wait_exact("#deliveries tr[data-kind='push'] td:nth-child(2)", "1")
        .await;

    browser.screenshot("console").await;
    browser
        .click("#user-table tr[data-termtype='1'] button")
        .await;
    assert_eq!(closed(&mut tom).await, vec![Down::Kick { reason: 4 }]);
    browser.wait_text("#user-table", "logged out").await;
    browser.wait_exact(SESSIONS_IN_ALL, "1").await;
    assert_eq!(
        g.metric("galopush_kicks_total{reason=\"logged_out\"}")
            .await,
        1.0,
        "only the Android terminal was logged out"
    );
    browser.screenshot("console_logged_out").await;
}

#[tokio::test]
async fn a_wrong_token_is_asked_again() {
    let Some(browser) = Browser::open("console_wrong_token", WIDTH, HEIGHT).await else {
        return;
    };
    let g = Gateway::start(&[]).await;
    browser.goto(&format!("{}/console/", g.api)).await;
    browser.type_into("#token-input", "not-the-token").await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_text("#token-error", "refused that token")
        .await;
    assert_eq!(
        browser
            .run("return sessionStorage.getItem('galopush-console-token')")
            .await,
        serde_json::Value::Null,
        "a refused token is forgotten"
    );
    browser.screenshot("console_wrong_token").await;
}
