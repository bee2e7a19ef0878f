//! The admin routes of SPEC §13 on the business API, behind `api.token` like every API route:
//! a user's terminals (`GET /v1/users/<uid>`), logging a user's terminals out
//! (`POST /v1/users/<uid>/logout?termtype=<mask>`) and the operator's figures (`GET /v1/stats`).
//!
//! A logout is a `userOnlineState` with `online = false` for each type of the mask, handed to
//! the bus exactly as `/pub` hands one: it is durable when answered, applied in order with the
//! business side's own logins, and the router's one login path does the rest (the record's
//! `login` turns false, a live terminal gets KICK 4). Its empty `code` means "whatever code the
//! record has".

use std::collections::HashMap;

use axum::Json;
use axum::Router as Routes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use galopush_protocol::bus::{self, UserOnlineState};
use galopush_protocol::{TermMask, TermType};
use serde_json::json;

use super::api::{ApiState, bad_request, refused};

/// The longest uid a terminal can register with: a REGISTER's `id` field (SPEC §3, §10).
const MAX_UID: usize = 32;

/// The admin routes, to be put behind the API token.
pub fn routes() -> Routes<ApiState> {
    Routes::new()
        .route("/v1/users/{uid}", get(user))
        .route("/v1/users/{uid}/logout", post(logout))
        .route("/v1/stats", get(stats))
}

/// A uid a terminal could have registered with, or why not (a `400`).
fn checked_uid(uid: &str) -> Result<&str, String> {
    if uid.len() > MAX_UID {
        return Err(format!(
            "uid is {} bytes; a terminal's id is at most {MAX_UID} bytes (SPEC §3)",
            uid.len()
        ));
    }
    if uid.contains('\0') {
        return Err("uid contains a NUL byte, which a terminal's id cannot (SPEC §3)".into());
    }
    Ok(uid)
}

/// The `termtype` query parameter: a mask of terminal types, 1 to 31; or why not (a `400`).
fn mask_of(params: &HashMap<String, String>) -> Result<TermMask, String> {
    let raw = params
        .get("termtype")
        .ok_or("missing termtype: a mask of terminal types, 1 to 31 (31 = all)")?;
    raw.trim()
        .parse::<u8>()
        .ok()
        .filter(|m| (1..=TermMask::ALL.0).contains(m))
        .map(TermMask)
        .ok_or_else(|| {
            format!(
                "termtype {raw:?} is not a mask of terminal types: 1 to 31, the sum of Android 1, \
                 iOS 2, WinPhone 4, Web 8, PC 16"
            )
        })
}

async fn user(State(state): State<ApiState>, Path(uid): Path<String>) -> Response {
    let uid = match checked_uid(&uid) {
        Ok(uid) => uid,
        Err(why) => return bad_request(why),
    };
    match state.router.user(uid).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => {
            tracing::warn!(%uid, error = %e, "cannot read a user for the admin API");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

async fn logout(
    State(state): State<ApiState>,
    Path(uid): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (uid, mask) = match (checked_uid(&uid), mask_of(&params)) {
        (Ok(uid), Ok(mask)) => (uid, mask),
        (Err(why), _) | (_, Err(why)) => return bad_request(why),
    };
    let bodies: Vec<Bytes> = mask
        .types()
        .map(|term: TermType| {
            let message = UserOnlineState {
                uid: uid.to_owned(),
                termtype: term.bit(),
                code: String::new(),
                device_token: String::new(),
                online: false,
            };
            Bytes::from(bus::encode(&message, state.base64))
        })
        .collect();
    let topic = state.router.topics().user_online_state.clone();
    match state.intake.accept(&topic, bodies).await {
        Ok(()) => {
            tracing::info!(%uid, termtype = mask.0, "logout through the admin API");
            Json(json!({"uid": uid, "termtype": mask.0})).into_response()
        }
        Err(e) => refused(&state, &topic, e),
    }
}

async fn stats(State(state): State<ApiState>) -> Response {
    Json(state.stats.json()).into_response()
}
