//! The business side of a chaos run: a publisher that hands the routers a steady flow of
//! pushes, callbacks and IMs down (`/mpub`, retried on the other router until one answers
//! `200`, as a business service must), and the webhook the IMs up arrive at — which the run
//! takes down and brings back, as the embedded bus's consumer going away.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::process::API_TOKEN;
use crate::ledger::{Kind, Ledger};
use crate::terminals::Spec;

/// The IMs up arrive here (`POST /hook?topic=msgUpward`).
pub struct Webhook {
    port: u16,
    down: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
    server: Option<JoinHandle<()>>,
}

impl Webhook {
    pub async fn start(ledger: Arc<Ledger>) -> Webhook {
        let mut webhook = Webhook {
            port: crate::common::process::free_port(),
            down: Arc::default(),
            ledger,
            server: None,
        };
        webhook.up().await;
        webhook
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Serves (again) on its port.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the webhook's port again");
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((self.ledger.clone(), self.down.clone()));
        self.down.store(false, Ordering::SeqCst);
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Stops accepting connections, and answers `503` on those already open.
    pub fn down(&mut self) {
        self.down.store(true, Ordering::SeqCst);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn hook(
    State((ledger, down)): State<(Arc<Ledger>, Arc<AtomicBool>)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> axum::http::StatusCode {
    if down.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    if q.get("topic").map(String::as_str) == Some("msgUpward") {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(json) => match json["body"].as_str() {
                Some(im) => ledger.up_at_webhook(im),
                None => ledger.unexpected(format!("msgUpward without a body: {json}")),
            },
            Err(e) => ledger.unexpected(format!("msgUpward that is not JSON: {e}")),
        }
    }
    axum::http::StatusCode::OK
}

/// The `/mpub` body of `messages` (kind, terminal, body), one line each.
fn mpub_body(terminals: &[Spec], messages: &[(Kind, usize, String)]) -> String {
    let lines: Vec<String> = messages
        .iter()
        .map(|(_, t, body)| {
            let spec = &terminals[*t];
            serde_json::json!({
                "receivers": [{"uid": spec.uid, "termtype": spec.term.bit()}],
                "flag": 0,
                "body": body,
            })
            .to_string()
        })
        .collect();
    lines.join("\n")
}

/// Publishes `count` messages of one kind, to terminals picked by `rng`, in one `/mpub` to
/// `api`, and returns once it is answered (or after 30 s, as not taken): the messages count as
/// sent when it is `200`.
pub async fn burst(
    api: &str,
    terminals: &[Spec],
    ledger: &Ledger,
    rng: &mut fastrand::Rng,
    count: usize,
) {
    let kind = Kind::ALL[rng.usize(0..3)];
    let messages: Vec<(Kind, usize, String)> = (0..count)
        .map(|_| (kind, rng.usize(0..terminals.len()), ledger.body(kind)))
        .collect();
    let at = Instant::now();
    let answer = crate::common::process::api_client()
        .post(format!("{api}/mpub?topic={}", kind.topic()))
        .body(mpub_body(terminals, &messages))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    if answer.is_ok_and(|r| r.status().is_success()) {
        ledger.sent(&messages, at);
    }
}

/// Publishes `rate` down-messages a second, each to one terminal, until `stop`.
pub struct Publisher {
    pub apis: Vec<String>,
    pub terminals: Arc<[Spec]>,
    pub rate: u32,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    pub ledger: Arc<Ledger>,
}

impl Publisher {
    pub async fn run(self) {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {API_TOKEN}").parse().expect("header value"),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(3))
            .build()
            .expect("HTTP client");
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let tick = Duration::from_millis(100);
        let per_tick = (self.rate / 10).max(1) as usize;
        let mut next = Instant::now();
        let mut api = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            next += tick;
            let mut batch: HashMap<Kind, Vec<(Kind, usize, String)>> = HashMap::new();
            for _ in 0..per_tick {
                let kind = Kind::ALL[rng.usize(0..3)];
                let terminal = rng.usize(0..self.terminals.len());
                batch
                    .entry(kind)
                    .or_default()
                    .push((kind, terminal, self.ledger.body(kind)));
            }
            for (kind, messages) in batch {
                let body = mpub_body(&self.terminals, &messages);
                let first_attempt = Instant::now();
                // Until a router takes it: the other one first, then again after a pause.
                loop {
                    let url = format!("{}/mpub?topic={}", self.apis[api], kind.topic());
                    let taken = client
                        .post(url)
                        .body(body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if taken {
                        self.ledger.sent(&messages, first_attempt);
                        break;
                    }
                    api = (api + 1) % self.apis.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // Both routers take a share, as a business side behind a load balancer.
            api = (api + 1) % self.apis.len();
            tokio::time::sleep_until(next.max(Instant::now())).await;
        }
    }
}
