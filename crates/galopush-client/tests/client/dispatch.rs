//! Asking the dispatcher for a comet: the POST form, the GET query, 503 and other statuses.

use galopush_client::{ClientError, TermType, dispatch, dispatch_get};

use crate::fake::{bounded, http_responder};

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
