//! The HTTP surface of SPEC §8: the dispatcher, `/pub` and `/mpub`, the comet list, metrics and
//! health.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router as Routes;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use galopush_protocol::TermType;

use crate::bus::{AcceptError, Intake};
use crate::metrics::Metrics;
use crate::router::Router;

/// Largest request body taken (an `/mpub` batch).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub router: Arc<Router>,
    pub intake: Arc<dyn Intake>,
    pub metrics: Arc<Metrics>,
}

/// The routes of SPEC §8.
pub fn routes(state: HttpState) -> Routes {
    Routes::new()
        .route("/v1/gComet.addr", get(dispatch_get).post(dispatch_post))
        .route("/pub", post(publish))
        .route("/mpub", post(publish_many))
        .route("/v1/comets", get(comets))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "OK" }))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// The routes of a comet process (on `comet.rpc_addr`): health and metrics.
pub fn comet_routes(metrics: Arc<Metrics>) -> Routes {
    Routes::new()
        .route("/metrics", get(comet_metrics))
        .route("/healthz", get(|| async { "OK" }))
        .with_state(metrics)
}

async fn comet_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    prometheus_text(&metrics)
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

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

fn dispatch(state: &HttpState, params: &HashMap<String, String>) -> Response {
    let Some(uid) = params.get("id").filter(|id| !id.is_empty()) else {
        return bad_request("missing id");
    };
    let Some(name) = params.get("termtype") else {
        return bad_request("missing termtype");
    };
    let term = match name.parse::<TermType>() {
        Ok(t) => t,
        Err(e) => return bad_request(e.to_string()),
    };
    match state.router.dispatch(uid, term) {
        Some(addr) => addr.into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn dispatch_get(
    State(state): State<HttpState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    dispatch(&state, &params)
}

/// The form fields of a POST body, with query parameters as a fallback.
async fn dispatch_post(
    State(state): State<HttpState>,
    Query(mut params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    params.extend(form_urlencoded::parse(&body).into_owned());
    dispatch(&state, &params)
}

fn topic_of(params: &HashMap<String, String>) -> Option<&str> {
    params
        .get("topic")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

async fn accept(state: &HttpState, topic: &str, bodies: Vec<Bytes>) -> Response {
    match state.intake.accept(topic, bodies).await {
        Ok(()) => "OK".into_response(),
        Err(AcceptError::Malformed(why)) => bad_request(why),
        Err(AcceptError::Unavailable(why)) => {
            tracing::warn!(topic, reason = %why, "message refused: not durable");
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

async fn publish(
    State(state): State<HttpState>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(topic) = topic_of(&params) else {
        return bad_request("missing topic");
    };
    accept(&state, topic, vec![body]).await
}

/// nsqd's `/mpub` format: one message per line.
async fn publish_many(
    State(state): State<HttpState>,
    Query(params): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(topic) = topic_of(&params) else {
        return bad_request("missing topic");
    };
    let mut lines: Vec<Bytes> = Vec::new();
    let mut start = 0;
    // memchr finds the newlines of a megabyte broadcast batch a word at a time.
    for i in memchr::memchr_iter(b'\n', &body) {
        lines.push(body.slice(start..i));
        start = i + 1;
    }
    if start < body.len() {
        lines.push(body.slice(start..));
    }
    let lines = lines
        .into_iter()
        .map(|l| match l.last() {
            Some(b'\r') => l.slice(..l.len() - 1),
            _ => l,
        })
        .filter(|l| !l.is_empty())
        .collect();
    accept(&state, topic, lines).await
}

async fn comets(State(state): State<HttpState>) -> Response {
    axum::Json(state.router.comets()).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    prometheus_text(&state.metrics)
}

fn prometheus_text(metrics: &Metrics) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (headers, metrics.render()).into_response()
}
