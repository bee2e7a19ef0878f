//! The HTTP listeners of SPEC §8, one per audience: the public one terminals reach
//! ([`public`]: dispatcher and health, and the demo terminal with `web.demo`), the business API
//! ([`api`]: `/pub`, `/mpub`, the comet list, metrics; the admin routes of SPEC §13 in
//! [`admin`] and [`stats`]; the operator console's files in [`pages`]), and a cluster comet's
//! own metrics listener.
//!
//! Every listener is served by [`serve`], which puts the bounds of SPEC §10 on it: a request's
//! headers must arrive within `limits.http_header_timeout` (else the connection is closed), a
//! request must be done within `limits.http_request_timeout` (else `408`), and at most
//! `limits.http_concurrency` requests are in progress (else `503`). These are small middlewares
//! of our own rather than tower-http's layers because every refusal must also be counted in
//! `galopush_refused_total` and logged as SPEC §10 says. With `router.http_tls` / `api.tls` a
//! listener speaks HTTPS (SPEC §11); its TLS handshake gets `limits.http_header_timeout`.

pub mod admin;
pub mod api;
pub mod pages;
pub mod public;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use axum::Router as Routes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::LimitsConfig;
use crate::metrics::{Metrics, Refusal};

/// The bounds every HTTP listener serves under (SPEC §10).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub concurrency: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(limits: &LimitsConfig) -> HttpLimits {
        HttpLimits {
            concurrency: limits.http_concurrency,
            header_timeout: limits.http_header_timeout.get(),
            request_timeout: limits.http_request_timeout.get(),
        }
    }
}

/// How long requests in progress at shutdown get to finish once the listener has stopped
/// accepting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` until `stop` is cancelled, under `limits`, over HTTPS when
/// `tls` is given; then lets the requests in progress finish (up to [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tls: Option<TlsAcceptor>,
) {
    let routes = guarded(routes, limits, metrics.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            http: http.clone(),
            routes: routes.clone(),
            watcher: graceful.watcher(),
            metrics: metrics.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                // The handshake gets the time the headers would have.
                let handshake =
                    tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                tokio::spawn(async move {
                    match handshake.await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTPS handshake failed"),
                        Err(_) => connection.metrics.refused(Refusal::HttpHeaderTimeout),
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still in progress at shutdown were cut off");
    }
}

/// What serving one accepted HTTP connection needs.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    routes: Routes,
    watcher: Watcher,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let service = TowerToHyperService::new(self.routes);
        let connection = self
            .watcher
            .watch(self.http.serve_connection(TokioIo::new(stream), service));
        match connection.await {
            Ok(()) => {}
            Err(e) if e.is_timeout() => self.metrics.refused(Refusal::HttpHeaderTimeout),
            Err(e) => tracing::debug!(error = %e, "HTTP connection failed"),
        }
    }
}

/// Puts the request timeout and the concurrency limit around every route.
fn guarded(routes: Routes, limits: HttpLimits, metrics: Arc<Metrics>) -> Routes {
    let guard = Guard {
        in_progress: Arc::new(Semaphore::new(limits.concurrency)),
        request_timeout: limits.request_timeout,
        metrics,
    };
    routes.layer(middleware::from_fn_with_state(guard, guard_request))
}

#[derive(Clone)]
struct Guard {
    in_progress: Arc<Semaphore>,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

async fn guard_request(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let Ok(_slot) = guard.in_progress.try_acquire() else {
        guard.metrics.refused(Refusal::HttpConcurrency);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in progress (limits.http_concurrency)",
        )
            .into_response();
    };
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            guard.metrics.refused(Refusal::HttpRequestTimeout);
            // The body may be unread: the connection cannot carry another request.
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, HeaderValue::from_static("close"))],
                "request not done within limits.http_request_timeout",
            )
                .into_response()
        }
    }
}

/// The bearer token of the business API (`api.token`); empty means none is asked.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl ApiToken {
    pub fn new(token: &str) -> ApiToken {
        ApiToken(Arc::from(token))
    }

    /// Whether `authorization` (the header's value) carries the token, compared in constant
    /// time.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let presented = authorization
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }
}

/// Answers `401` to a request without the token; `/healthz` needs none.
async fn require_token(State(token): State<ApiToken>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz"
        || token.admits(request.headers().get(header::AUTHORIZATION))
    {
        return next.run(request).await;
    }
    tracing::debug!(
        path = request.uri().path(),
        "API request without the token refused"
    );
    let mut response = (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Puts the API token in front of `routes`.
pub fn with_token(routes: Routes, token: ApiToken) -> Routes {
    routes.layer(middleware::from_fn_with_state(token, require_token))
}

/// The routes of a cluster comet (on `comet.http_addr`): health and metrics, the latter behind
/// `api.token`.
pub fn comet_routes(metrics: Arc<Metrics>, token: ApiToken) -> Routes {
    let routes = Routes::new()
        .route("/metrics", get(comet_metrics))
        .route("/healthz", get(|| async { "OK" }))
        .with_state(metrics);
    with_token(routes, token)
}

async fn comet_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    prometheus_text(&metrics)
}

fn prometheus_text(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let token = ApiToken::new("s3cret");
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(token.admits(Some(&header("Bearer s3cret"))));
        assert!(!token.admits(Some(&header("Bearer s3cre"))));
        assert!(!token.admits(Some(&header("Bearer s3cret2"))));
        assert!(!token.admits(Some(&header("bearer s3cret"))));
        assert!(!token.admits(Some(&header("s3cret"))));
        assert!(!token.admits(None));
        assert!(ApiToken::new("").admits(None), "no token set: open");
    }
}
