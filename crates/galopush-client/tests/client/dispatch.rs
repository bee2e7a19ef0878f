//! Asking the dispatcher for a comet: the POST form, the GET query, 503 and other statuses,
//! `tls=1` for a TLS comet, and the dispatcher and the API over HTTPS.

use galopush_client::{BusinessApi, ClientError, Dispatcher, TermType, dispatch, dispatch_get};

use crate::fake::{bounded, http_responder, https_responder, tls_refuser};
use crate::pki::Pki;

#[tokio::test]
async fn post_sends_the_form_and_returns_the_address() {
    let (base, server) = http_responder(vec![(200, "127.0.0.1:5161\r\n".to_owned())]).await;
    let addr = bounded("dispatch", dispatch(&base, "user 1", TermType::Android))
        .await
        .expect("dispatch");
    assert_eq!(addr, "127.0.0.1:5161");
    let requests = server.await.expect("fake router");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/gComet.addr");
    assert_eq!(
        request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.body, "id=user+1&termtype=Android");
}

#[tokio::test]
async fn get_sends_the_query_and_returns_the_address() {
    let (base, server) = http_responder(vec![(200, "10.0.0.7:5162".to_owned())]).await;
    let addr = bounded("dispatch", dispatch_get(&base, "u2", TermType::Ios))
        .await
        .expect("dispatch");
    assert_eq!(addr, "10.0.0.7:5162");
    let requests = server.await.expect("fake router");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].target, "/v1/gComet.addr?id=u2&termtype=iOS");
    assert_eq!(requests[0].body, "");
}

#[tokio::test]
async fn unavailable_is_no_comet_and_other_statuses_carry_status_and_body() {
    let (base, server) = http_responder(vec![
        (503, String::new()),
        (400, "unknown termtype".to_owned()),
    ])
    .await;
    let unavailable = bounded("dispatch", dispatch(&base, "u", TermType::Web)).await;
    assert!(
        matches!(unavailable, Err(ClientError::NoComet)),
        "{unavailable:?}"
    );
    let refused = bounded("dispatch", dispatch_get(&base, "u", TermType::Pc)).await;
    match refused {
        Err(ClientError::Status { status, body }) => {
            assert_eq!(status, 400);
            assert_eq!(body, "unknown termtype");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    server.await.expect("fake router");
}

#[tokio::test]
async fn asking_for_a_tls_comet_adds_tls_1() {
    let (base, server) = http_responder(vec![
        (200, "127.0.0.1:5163".to_owned()),
        (503, String::new()),
    ])
    .await;
    let dispatcher = Dispatcher::with_trust(&base, &Pki::localhost().trust()).expect("client");
    let addr = bounded(
        "dispatch",
        dispatcher.comet_addr_tls("u1", TermType::Android),
    )
    .await
    .expect("dispatch");
    assert_eq!(addr, "127.0.0.1:5163");
    let none = bounded("dispatch", dispatcher.comet_addr_tls("u2", TermType::Web)).await;
    assert!(
        matches!(none, Err(ClientError::NoComet)),
        "no comet with a TLS listener: {none:?}"
    );
    let requests = server.await.expect("fake router");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/v1/gComet.addr");
    assert_eq!(requests[0].body, "id=u1&termtype=Android&tls=1");
    assert_eq!(requests[1].body, "id=u2&termtype=Web&tls=1");
}

#[tokio::test]
async fn the_dispatcher_and_the_api_over_https_trust_the_given_ca() {
    let pki = Pki::localhost();
    let (base, server) = https_responder(
        vec![(200, "127.0.0.1:5164".to_owned()), (200, String::new())],
        pki.acceptor(),
    )
    .await;
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let dispatcher = Dispatcher::with_trust(&base, &pki.trust()).expect("client");
    let addr = bounded("dispatch", dispatcher.comet_addr_tls("u", TermType::Pc))
        .await
        .expect("dispatch over HTTPS");
    assert_eq!(addr, "127.0.0.1:5164");
    let api = BusinessApi::with_trust(&base, Some("api-secret"), &pki.trust()).expect("client");
    bounded("login", api.login("u", TermType::Pc, "code"))
        .await
        .expect("login over HTTPS");
    let requests = server.await.expect("fake router");
    assert_eq!(requests[0].target, "/v1/gComet.addr");
    assert_eq!(requests[0].body, "id=u&termtype=PC&tls=1");
    assert_eq!(requests[1].target, "/pub?topic=userOnlineState");
    assert_eq!(
        requests[1].authorization.as_deref(),
        Some("Bearer api-secret")
    );

    let (addr, refuser) = tls_refuser(pki.acceptor()).await;
    let stranger = Dispatcher::with_trust(&format!("https://{addr}"), &Pki::localhost().trust())
        .expect("client");
    let refused = bounded("dispatch", stranger.comet_addr("u", TermType::Pc)).await;
    let error = refused.expect_err("a router whose certificate is not trusted");
    assert!(matches!(error, ClientError::Http(_)), "{error:?}");
    assert!(
        error.to_string().contains("UnknownIssuer"),
        "the message says why: {error}"
    );
    refuser.await.expect("fake router");
}
