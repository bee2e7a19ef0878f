//! The business API (`api.addr`, SPEC §8): `/pub` and `/mpub`, the comet list, the admin
//! routes of SPEC §13 ([`super::admin`]), metrics and health, for business services and
//! operators — never for terminals. Every route but `/healthz` and the operator console's own
//! files ([`super::pages`]) takes the bearer token `api.token` when one is set, and no route
//! answers with CORS headers, so a page on another origin cannot call it.
//!
//! Bodies are bounded before they are read (SPEC §10): a `Content-Length` over the limit is
//! answered `413` at once, and a body without one is read only up to the limit.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router as Routes;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::stats::Stats;
use super::{ApiToken, admin, pages, prometheus_text, with_token};
use crate::bus::{AcceptError, Intake};
use crate::metrics::{Metrics, Refusal};
use crate::router::Router;

/// What the API's handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub router: Arc<Router>,
    pub intake: Arc<dyn Intake>,
    pub metrics: Arc<Metrics>,
    /// Largest `/pub` body (`limits.max_body`).
    pub max_pub: usize,
    /// Largest `/mpub` body (`limits.max_mpub`).
    pub max_mpub: usize,
    /// The figures of `/v1/stats` and their sampler.
    pub stats: Arc<Stats>,
    /// Write the bus messages the API makes itself (a logout) as base64 (`bus.base64`, for
    /// NSQ consumers that expect the original's encoding).
    pub base64: bool,
}

/// The routes of the business API, behind `token`, and the console's files, which are not: a
/// browser cannot send the token when it navigates to a page, and the files hold no data (the
/// page asks for the token and sends it with every call it makes to the routes above).
pub fn routes(state: ApiState, token: ApiToken) -> Routes {
    let routes = Routes::new()
        .route("/pub", post(publish))
        .route("/mpub", post(publish_many))
        .route("/v1/comets", get(comets))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "OK" }))
        .merge(admin::routes())
        .with_state(state);
    with_token(routes, token).merge(pages::console())
}

pub(super) fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

/// `413`, closing the connection: the rest of the body is not read, so the connection cannot
/// carry another request.
fn too_large(limit: usize, key: &str) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONNECTION, HeaderValue::from_static("close"))],
        format!("body over {limit} bytes (limits.{key})"),
    )
        .into_response()
}

/// Reads a request's body, at most `limit` bytes; over it, `413` (counted as `refusal`)
/// before the rest is read.
async fn read_body(
    state: &ApiState,
    body: Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
    refusal: Refusal,
) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        state.metrics.refused(refusal);
        return Err(too_large(limit, refusal.key()));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // A body that broke off is the client's doing, not a refusal.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            state.metrics.refused(refusal);
            too_large(limit, refusal.key())
        } else {
            bad_request(format!("cannot read the body: {e}"))
        }
    })
}

fn topic_of(params: &HashMap<String, String>) -> Option<&str> {
    params
        .get("topic")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

async fn accept(state: &ApiState, topic: &str, bodies: Vec<Bytes>) -> Response {
    match state.intake.accept(topic, bodies).await {
        Ok(()) => "OK".into_response(),
        Err(e) => refused(state, topic, e),
    }
}

/// The answer to messages the bus did not take.
pub(super) fn refused(state: &ApiState, topic: &str, error: AcceptError) -> Response {
    match error {
        AcceptError::Malformed(why) => bad_request(why),
        AcceptError::Full { limit } => {
            state.metrics.refused(Refusal::InboxPending);
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the inbox holds {limit} messages not yet applied (limits.inbox_pending); retry"
                ),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        AcceptError::TooMany { limit } => {
            state.metrics.refused(Refusal::InboxPending);
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more messages than the inbox holds ({limit}, limits.inbox_pending)"),
            )
                .into_response()
        }
        AcceptError::Unavailable(why) => {
            tracing::warn!(topic, reason = %why, "message refused: not durable");
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

/// The topic and body of a `/pub` or `/mpub` request, the body at most `limit` bytes.
async fn topic_and_body(
    state: &ApiState,
    params: &HashMap<String, String>,
    request: Request,
    limit: usize,
    refusal: Refusal,
) -> Result<(String, Bytes), Response> {
    let topic = topic_of(params).ok_or_else(|| bad_request("missing topic"))?;
    let (parts, body) = request.into_parts();
    let body = read_body(state, body, &parts.headers, limit, refusal).await?;
    Ok((topic.to_owned(), body))
}

async fn publish(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    match topic_and_body(&state, &params, request, state.max_pub, Refusal::MaxBody).await {
        Ok((topic, body)) => accept(&state, &topic, vec![body]).await,
        Err(refused) => refused,
    }
}

/// nsqd's `/mpub` format: one message per line.
async fn publish_many(
    State(state): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    match topic_and_body(&state, &params, request, state.max_mpub, Refusal::MaxMpub).await {
        Ok((topic, body)) => {
            accept(&state, &topic, galopush_protocol::bus::split_mpub(&body)).await
        }
        Err(refused) => refused,
    }
}

async fn comets(State(state): State<ApiState>) -> Response {
    axum::Json(state.router.comets()).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    prometheus_text(&state.metrics)
}
