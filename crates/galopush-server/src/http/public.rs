//! The public listener (`router.http_addr`, SPEC §8), the only HTTP terminals reach: the
//! dispatcher `/v1/gComet.addr` and `/healthz`, and with `web.demo = true` the demo web
//! terminal's files under `/demo/` ([`super::pages`]). Every other path is `404`; nothing here
//! changes state.
//!
//! The dispatcher answers as the original did, CORS included (an `Origin` echoed with
//! credentials allowed — on this route only, since it reveals nothing but a comet's address):
//! its own clients send `termtype=1`, a number, and some send no id at all. With `tls=1` it
//! answers the comet's TLS address (WSS for Web), or `503` when no comet has one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router as Routes;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use galopush_protocol::TermType;

use crate::metrics::{DispatchResult, Metrics};
use crate::router::Router;

/// Largest dispatcher form taken (an id and a terminal type).
const DISPATCH_FORM: usize = 4096;

/// What the dispatcher needs.
#[derive(Clone)]
pub struct PublicState {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
}

/// The routes of the public listener; with `demo`, the demo terminal's too.
pub fn routes(state: PublicState, demo: bool) -> Routes {
    let dispatcher = get(dispatch_get)
        .post(dispatch_post)
        .layer(DefaultBodyLimit::max(DISPATCH_FORM))
        .layer(middleware::from_fn(cors));
    let routes = Routes::new()
        .route("/v1/gComet.addr", dispatcher)
        .route("/healthz", get(|| async { "OK" }));
    let routes = if demo {
        routes.merge(super::pages::demo())
    } else {
        routes
    };
    routes.with_state(state)
}

/// Echoes an `Origin` with credentials allowed, as the original did, and answers preflights.
async fn cors(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type"),
            );
        }
    }
    response
}

/// A `termtype` as the dispatcher reads it: a name of SPEC §2 in any case, or a type's bit as
/// a number; anything else is unknown.
fn term_of(value: Option<&String>) -> Option<TermType> {
    let value = value?.trim();
    value
        .parse::<TermType>()
        .ok()
        .or_else(|| value.parse::<u8>().ok().and_then(TermType::from_bit))
}

fn dispatch(state: &PublicState, params: &HashMap<String, String>) -> Response {
    let uid = params
        .get("id")
        .map(String::as_str)
        .filter(|id| !id.is_empty());
    if uid.is_none() {
        state.metrics.dispatched(DispatchResult::NoId).inc();
    }
    let term = term_of(params.get("termtype"));
    if term.is_none() {
        state
            .metrics
            .dispatched(DispatchResult::UnknownTermtype)
            .inc();
    }
    let web = term == Some(TermType::Web);
    // [ext] `tls=1`: the comet's TLS address (SPEC §8, §11).
    let tls = params
        .get("tls")
        .is_some_and(|v| matches!(v.trim(), "1" | "true"));
    match state.router.dispatch(uid, web, tls) {
        Some(addr) => {
            if uid.is_some() && term.is_some() {
                state.metrics.dispatched(DispatchResult::Ok).inc();
            }
            addr.into_response()
        }
        None => {
            state.metrics.dispatched(DispatchResult::Unavailable).inc();
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn dispatch_get(
    State(state): State<PublicState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    dispatch(&state, &params)
}

/// The form fields of a POST body, with query parameters as a fallback.
async fn dispatch_post(
    State(state): State<PublicState>,
    Query(mut params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    params.extend(form_urlencoded::parse(&body).into_owned());
    dispatch(&state, &params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termtypes_by_name_or_bit() {
        let t = |s: &str| term_of(Some(&s.to_owned()));
        assert_eq!(t("Web"), Some(TermType::Web));
        assert_eq!(t("ios"), Some(TermType::Ios));
        assert_eq!(t("1"), Some(TermType::Android));
        assert_eq!(t("8"), Some(TermType::Web));
        assert_eq!(t("16"), Some(TermType::Pc));
        assert_eq!(t("3"), None, "two bits are not a terminal type");
        assert_eq!(t("0"), None);
        assert_eq!(t("Toaster"), None);
        assert_eq!(term_of(None), None);
    }
}
