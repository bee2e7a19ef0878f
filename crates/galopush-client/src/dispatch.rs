//! The router's HTTP side as a terminal sees it: which comet to connect to (SPEC §8), plain or
//! TLS, and, for demos, a login published through the business API (SPEC §7, §8). Both may be
//! served over `https://`, trusting the system's roots or a given CA ([`Trust`]).

use std::time::Duration;

use galopush_protocol::TermType;
use galopush_protocol::bus::{self, UserOnlineState};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::error::{ClientError, Result};
use crate::tls::Trust;

/// Path of the dispatcher.
const DISPATCH_PATH: &str = "/v1/gComet.addr";
/// Default name of the login topic (SPEC §7).
const USER_ONLINE_STATE_TOPIC: &str = "userOnlineState";
/// Bound on one HTTP exchange with the router.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client for one router, reusing its connections across calls.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    client: reqwest::Client,
    base: String,
}

impl Dispatcher {
    /// A client for the router at `http_base`, e.g. `http://127.0.0.1:5150` (or `https://…`,
    /// trusting the system's roots).
    pub fn new(http_base: &str) -> Result<Dispatcher> {
        Dispatcher::with_trust(http_base, &Trust::system())
    }

    /// A client for the router at `http_base`, trusting `trust` when it is `https://`.
    pub fn with_trust(http_base: &str, trust: &Trust) -> Result<Dispatcher> {
        Ok(Dispatcher {
            client: trust.http_client_builder()?.timeout(HTTP_TIMEOUT).build()?,
            base: http_base.trim_end_matches('/').to_owned(),
        })
    }

    /// The comet (`host:port`) for terminal `uid` of type `term`, asked with
    /// `POST /v1/gComet.addr` and form fields `id` and `termtype`.
    pub async fn comet_addr(&self, uid: &str, term: TermType) -> Result<String> {
        self.post(&[("id", uid), ("termtype", term.name())]).await
    }

    /// The comet's TLS listener (`host:port`) for terminal `uid` of type `term`: its TLS TCP
    /// listener, or its WSS one for Web terminals. Asked as [`Dispatcher::comet_addr`] with
    /// the form field `tls=1` added; [`ClientError::NoComet`] when no comet has a TLS listener.
    pub async fn comet_addr_tls(&self, uid: &str, term: TermType) -> Result<String> {
        self.post(&[("id", uid), ("termtype", term.name()), ("tls", "1")])
            .await
    }

    /// Asks the dispatcher with `POST` and `form`.
    async fn post(&self, form: &[(&str, &str)]) -> Result<String> {
        let response = self
            .client
            .post(format!("{}{DISPATCH_PATH}", self.base))
            .form(form)
            .send()
            .await?;
        comet_addr_from(response).await
    }

    /// As [`Dispatcher::comet_addr`], asked with `GET` and query parameters.
    pub async fn comet_addr_get(&self, uid: &str, term: TermType) -> Result<String> {
        let response = self
            .client
            .get(format!("{}{DISPATCH_PATH}", self.base))
            .query(&[("id", uid), ("termtype", term.name())])
            .send()
            .await?;
        comet_addr_from(response).await
    }
}

/// The business API (`api.addr`, SPEC §8) as far as a demo terminal uses it: to log itself in.
#[derive(Debug, Clone)]
pub struct BusinessApi {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl BusinessApi {
    /// A client for the API at `api_base`, e.g. `http://127.0.0.1:5152` (or `https://…`,
    /// trusting the system's roots), with its bearer token (`api.token`) when it has one.
    pub fn new(api_base: &str, token: Option<&str>) -> Result<BusinessApi> {
        BusinessApi::with_trust(api_base, token, &Trust::system())
    }

    /// As [`BusinessApi::new`], trusting `trust` when the API is `https://`.
    pub fn with_trust(api_base: &str, token: Option<&str>, trust: &Trust) -> Result<BusinessApi> {
        Ok(BusinessApi {
            client: trust.http_client_builder()?.timeout(HTTP_TIMEOUT).build()?,
            base: api_base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    /// Logs terminal `uid`/`term` in with `token` as its code, by publishing a
    /// `userOnlineState` message (raw JSON) with `POST /pub`.
    pub async fn login(&self, uid: &str, term: TermType, token: &str) -> Result<()> {
        let state = UserOnlineState {
            uid: uid.to_owned(),
            termtype: term.bit(),
            code: token.to_owned(),
            device_token: String::new(),
            online: true,
        };
        let mut request = self
            .client
            .post(format!("{}/pub", self.base))
            .query(&[("topic", USER_ONLINE_STATE_TOPIC)])
            .header(CONTENT_TYPE, "application/json");
        if let Some(api_token) = &self.token {
            request = request.bearer_auth(api_token);
        }
        let response = request.body(bus::encode(&state, false)).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(ClientError::Status {
            status: status.as_u16(),
            body: response.text().await?,
        })
    }
}

/// Reads the dispatcher's answer: 200 with `host:port`, 503 when no comet is available.
async fn comet_addr_from(response: reqwest::Response) -> Result<String> {
    let status = response.status();
    let body = response.text().await?;
    match status {
        StatusCode::OK => {
            let addr = body.trim();
            if addr.is_empty() {
                return Err(ClientError::Unexpected(
                    "the dispatcher answered 200 with an empty body".to_owned(),
                ));
            }
            Ok(addr.to_owned())
        }
        StatusCode::SERVICE_UNAVAILABLE => Err(ClientError::NoComet),
        other => Err(ClientError::Status {
            status: other.as_u16(),
            body,
        }),
    }
}

/// The comet for terminal `uid` of type `term`, from the router at `http_base`
/// (`POST /v1/gComet.addr`). For many calls, reuse a [`Dispatcher`].
pub async fn dispatch(http_base: &str, uid: &str, term: TermType) -> Result<String> {
    Dispatcher::new(http_base)?.comet_addr(uid, term).await
}

/// As [`dispatch`], with `GET` and query parameters.
pub async fn dispatch_get(http_base: &str, uid: &str, term: TermType) -> Result<String> {
    Dispatcher::new(http_base)?.comet_addr_get(uid, term).await
}
