//! Firebase Cloud Messaging, HTTP v1 (SPEC §12): `POST /v1/projects/<project_id>/messages:send`
//! with `{"message":{"token":…,"data":{"body":…,"offline":"<count>"},"android":{"priority":
//! "high","ttl":"<ttl>s"}}}`, authorized by an OAuth2 access token. The token comes from the
//! service account: an RS256 JWT signed with its `private_key` (`iss` = `client_email`, `scope`
//! = Firebase messaging, `aud` = `token_uri`) exchanged at its `token_uri`, kept and exchanged
//! again five minutes before it expires (or at once when FCM answers 401). Same client as
//! [`super::apns`]: reqwest over HTTP/2, jsonwebtoken on aws-lc-rs.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Answer, Notice, PhoneError, client_builder, retry_after, transient, unix_now};
use crate::config::FcmConfig;

/// The OAuth2 scope of sending messages.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// What the assertion is exchanged for.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion is good for (Google takes at most an hour).
const ASSERTION_LIFETIME: u64 = 3600;
/// An access token is exchanged again this long before it expires.
const RENEW_BEFORE: u64 = 300;

/// The fields of a service account's JSON key file that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    token_uri: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    project_id: String,
}

/// An access token and when it expires (Unix seconds).
struct Access {
    token: Arc<str>,
    expires: u64,
}

impl Access {
    /// Whether it is still good to send with at `now`: more than [`RENEW_BEFORE`] from expiry.
    fn fresh(&self, now: u64) -> bool {
        now.saturating_add(RENEW_BEFORE) < self.expires
    }
}

/// The FCM client.
pub struct Fcm {
    client: reqwest::Client,
    send_url: String,
    ttl: Duration,
    client_email: String,
    token_uri: String,
    header: Header,
    key: EncodingKey,
    /// Held across an exchange, so that one exchange serves every request waiting for it.
    access: tokio::sync::Mutex<Option<Access>>,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

#[derive(Serialize)]
struct Send<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    data: Data<'a>,
    android: Android,
}

#[derive(Serialize)]
struct Data<'a> {
    body: &'a str,
    offline: String,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
    ttl: String,
}

impl Fcm {
    /// Reads the service account of `config`.
    pub fn new(config: &FcmConfig) -> Result<Fcm, PhoneError> {
        const KEY: &str = "fcm.service_account";
        let path = &config.service_account;
        let text = std::fs::read(path)
            .map_err(|e| PhoneError::new(KEY, format!("{}: {e}", path.display())))?;
        let account: ServiceAccount = serde_json::from_slice(&text).map_err(|e| {
            PhoneError::new(
                KEY,
                format!("{}: not a service account key file: {e}", path.display()),
            )
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            PhoneError::new(
                KEY,
                format!("{}: private_key is not an RSA key: {e}", path.display()),
            )
        })?;
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://"))
        {
            return Err(PhoneError::new(
                KEY,
                format!("{}: token_uri is not a URL", path.display()),
            ));
        }
        let project = match (config.project_id.as_str(), account.project_id.as_str()) {
            ("", "") => {
                return Err(PhoneError::new(
                    "fcm.project_id",
                    "not set, and the service account names none",
                ));
            }
            ("", project) | (project, _) => project,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = (!account.private_key_id.is_empty()).then(|| account.private_key_id.clone());
        let client = client_builder(&config.ca, "fcm.ca")?
            .build()
            .map_err(|e| PhoneError::new("fcm", format!("cannot build the HTTP client: {e}")))?;
        let fcm = Fcm {
            client,
            send_url: format!(
                "{}/v1/projects/{project}/messages:send",
                config.endpoint.trim_end_matches('/')
            ),
            ttl: config.ttl.get(),
            client_email: account.client_email,
            token_uri: account.token_uri,
            header,
            key,
            access: tokio::sync::Mutex::new(None),
        };
        fcm.assertion(unix_now())
            .map_err(|e| PhoneError::new(KEY, format!("cannot sign with private_key: {e}")))?;
        Ok(fcm)
    }

    /// The signed JWT exchanged for an access token at `now` (Unix seconds).
    fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Assertion {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }

    /// The access token to send with, exchanged first when there is none or it expires within
    /// [`RENEW_BEFORE`]; an exchange that fails is the answer of the send.
    async fn access_token(&self) -> Result<Arc<str>, Answer> {
        let mut access = self.access.lock().await;
        let now = unix_now();
        if let Some(a) = access.as_ref().filter(|a| a.fresh(now)) {
            return Ok(a.token.clone());
        }
        let assertion = self
            .assertion(now)
            .map_err(|e| Answer::Refused(format!("cannot sign the assertion: {e}")))?;
        let response = self
            .client
            .post(&self.token_uri)
            .form(&[("grant_type", GRANT_TYPE), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "FCM token exchange failed");
                Answer::Later(None)
            })?;
        let status = response.status();
        if transient(status) {
            return Err(Answer::Later(retry_after(response.headers())));
        }
        if status != StatusCode::OK {
            let text = response.text().await.unwrap_or_default();
            return Err(Answer::Refused(format!(
                "token_uri answered {status}: {}",
                excerpt(&text)
            )));
        }
        let body = response.bytes().await.unwrap_or_default();
        let granted: Granted = serde_json::from_slice(&body)
            .map_err(|e| Answer::Refused(format!("token_uri answered no access token: {e}")))?;
        let token: Arc<str> = Arc::from(granted.access_token);
        *access = Some(Access {
            token: token.clone(),
            expires: now.saturating_add(granted.expires_in),
        });
        Ok(token)
    }

    /// Sends one message to the phone holding `token`.
    pub async fn send(&self, token: &str, notice: &Notice, offline: u32) -> Answer {
        let access = match self.access_token().await {
            Ok(a) => a,
            Err(answer) => return answer,
        };
        let body = serde_json::to_vec(&Send {
            message: Message {
                token,
                data: Data {
                    body: &String::from_utf8_lossy(&notice.body),
                    offline: offline.to_string(),
                },
                android: Android {
                    priority: "high",
                    ttl: format!("{}s", self.ttl.as_secs()),
                },
            },
        })
        .unwrap_or_default();
        let response = match self
            .client
            .post(&self.send_url)
            .bearer_auth(&access)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "FCM request failed");
                return Answer::Later(None);
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            return Answer::Accepted;
        }
        if status == StatusCode::UNAUTHORIZED {
            // The access token was refused: exchange another before the next try.
            let mut kept = self.access.lock().await;
            if kept.as_ref().is_some_and(|a| a.token == access) {
                *kept = None;
            }
            return Answer::Later(None);
        }
        if transient(status) {
            return Answer::Later(retry_after(response.headers()));
        }
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::NOT_FOUND && text.contains("UNREGISTERED") {
            return Answer::DeadToken;
        }
        Answer::Refused(format!("FCM answered {status}: {}", excerpt(&text)))
    }
}

/// The start of an error body, for a log line.
fn excerpt(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(200)
        .map_or(text.len(), |(at, _)| at);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_token_is_exchanged_again_before_it_expires() {
        let issued = 1_800_000_000;
        let access = Access {
            token: Arc::from("ya29.a"),
            expires: issued + 3599,
        };
        assert!(access.fresh(issued));
        assert!(access.fresh(issued + 3599 - RENEW_BEFORE - 1));
        assert!(!access.fresh(issued + 3599 - RENEW_BEFORE));
        assert!(!access.fresh(issued + 3599));
        assert!(!access.fresh(u64::MAX), "no overflow");
    }
}
