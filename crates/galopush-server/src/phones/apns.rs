//! Apple Push Notification service over HTTP/2 (SPEC §12): `POST /3/device/<token>` with
//! `apns-topic`, `apns-push-type: alert`, `apns-priority: 10` and `apns-expiration` (now +
//! `apns.ttl`), body `{"aps":{"alert":<body as text>,"badge":<offline count>,"sound":"default"}}`
//! cut to Apple's 4 KB on a character boundary. Authenticated with a token (an ES256 JWT from
//! the .p8 key, `kid` = `key_id`, `iss` = `team_id`, renewed every 50 minutes: Apple refuses
//! one older than 60) or with a certificate (the PEM certificate and key as the client's TLS
//! identity). All requests share one HTTP/2 connection, many streams in flight.
//!
//! The client is reqwest (HTTP/2 only, rustls on aws-lc-rs) with jsonwebtoken for the JWT, not
//! the `apns-h2` crate: its endpoint is an enum of Apple's two hosts written into every
//! request's URL, and its TLS is the platform's roots on ring or OpenSSL, so neither a test
//! stand-in, a private proxy, a custom CA (`apns.ca`), nor the process's one crypto library
//! (aws-lc-rs) fits it.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use reqwest::StatusCode;
use serde::Serialize;

use super::{Answer, Notice, PhoneError, client_builder, retry_after, transient, unix_now};
use crate::config::ApnsConfig;

/// Apple's production host.
pub const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's development host (`apns.sandbox`).
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// The largest payload Apple takes for a notification.
const MAX_PAYLOAD: usize = 4096;
/// A token is renewed when it is this old; Apple refuses one older than 60 minutes.
const TOKEN_RENEWAL: Duration = Duration::from_secs(50 * 60);

/// The base URL requests go to.
pub fn endpoint(config: &ApnsConfig) -> &str {
    match (config.endpoint.as_str(), config.sandbox) {
        ("", false) => PRODUCTION,
        ("", true) => SANDBOX,
        (endpoint, _) => endpoint,
    }
}

/// The APNs client.
pub struct Apns {
    client: reqwest::Client,
    base: String,
    topic: String,
    ttl: Duration,
    /// `None` with certificate auth: the TLS identity authenticates.
    tokens: Option<TokenSigner>,
}

impl Apns {
    /// Reads the key or certificate of `config`.
    pub fn new(config: &ApnsConfig) -> Result<Apns, PhoneError> {
        let mut builder = client_builder(&config.ca, "apns.ca")?.http2_prior_knowledge();
        let tokens = if config.key_file.as_os_str().is_empty() {
            let path = &config.cert_file;
            let pem = std::fs::read(path).map_err(|e| {
                PhoneError::new("apns.cert_file", format!("{}: {e}", path.display()))
            })?;
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                PhoneError::new(
                    "apns.cert_file",
                    format!("{}: not a PEM certificate and key: {e}", path.display()),
                )
            })?;
            builder = builder.identity(identity);
            None
        } else {
            let path = &config.key_file;
            let pem = std::fs::read(path).map_err(|e| {
                PhoneError::new("apns.key_file", format!("{}: {e}", path.display()))
            })?;
            let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
                PhoneError::new(
                    "apns.key_file",
                    format!("{}: not a .p8 (PKCS#8 P-256) key: {e}", path.display()),
                )
            })?;
            Some(TokenSigner::new(key, &config.key_id, &config.team_id))
        };
        let client = builder
            .build()
            .map_err(|e| PhoneError::new("apns", format!("cannot build the HTTP client: {e}")))?;
        if let Some(tokens) = &tokens {
            tokens.bearer(unix_now()).map_err(|e| {
                PhoneError::new("apns.key_file", format!("cannot sign with the key: {e}"))
            })?;
        }
        Ok(Apns {
            client,
            base: endpoint(config).trim_end_matches('/').to_owned(),
            topic: config.topic.clone(),
            ttl: config.ttl.get(),
            tokens,
        })
    }

    /// Sends one notification to the phone holding `token`.
    pub async fn send(&self, token: &str, notice: &Notice, badge: u32) -> Answer {
        let now = unix_now();
        let mut request = self
            .client
            .post(format!("{}/3/device/{token}", self.base))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header(
                "apns-expiration",
                now.saturating_add(self.ttl.as_secs()).to_string(),
            )
            .body(payload(&String::from_utf8_lossy(&notice.body), badge));
        if let Some(tokens) = &self.tokens {
            match tokens.bearer(now) {
                Ok(jwt) => request = request.header("authorization", format!("bearer {jwt}")),
                Err(e) => return Answer::Refused(format!("cannot sign the token: {e}")),
            }
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "APNs request failed");
                return Answer::Later(None);
            }
        };
        let status = response.status();
        if status == StatusCode::OK {
            return Answer::Accepted;
        }
        if transient(status) {
            return Answer::Later(retry_after(response.headers()));
        }
        let body = response.bytes().await.unwrap_or_default();
        let reason = serde_json::from_slice::<Reason>(&body)
            .map(|r| r.reason)
            .unwrap_or_default();
        match (status, reason.as_str()) {
            (StatusCode::GONE, _) | (StatusCode::BAD_REQUEST, "BadDeviceToken") => {
                Answer::DeadToken
            }
            _ => Answer::Refused(format!("APNs answered {status} {reason}")),
        }
    }
}

/// The body of an error answer.
#[derive(serde::Deserialize)]
struct Reason {
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct Payload<'a> {
    aps: Aps<'a>,
}

#[derive(Serialize)]
struct Aps<'a> {
    alert: &'a str,
    badge: u32,
    sound: &'static str,
}

/// The request body: `alert` cut, on a character boundary, so that the whole fits
/// [`MAX_PAYLOAD`].
pub fn payload(alert: &str, badge: u32) -> Vec<u8> {
    let json = |alert| {
        serde_json::to_vec(&Payload {
            aps: Aps {
                alert,
                badge,
                sound: "default",
            },
        })
        .unwrap_or_default()
    };
    let whole = json(alert);
    if whole.len() <= MAX_PAYLOAD {
        return whole;
    }
    let room = MAX_PAYLOAD.saturating_sub(json("").len());
    let mut used = 0;
    let end = alert
        .char_indices()
        .find_map(|(at, c)| {
            used += escaped_len(c);
            (used > room).then_some(at)
        })
        .unwrap_or(alert.len());
    json(&alert[..end])
}

/// The bytes a character takes in a JSON string, as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The JWT of token auth, made again once it is [`TOKEN_RENEWAL`] old.
struct TokenSigner {
    key: EncodingKey,
    header: Header,
    team_id: String,
    /// The token in use and when it was issued (Unix seconds).
    current: Mutex<Option<(u64, Arc<str>)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl TokenSigner {
    fn new(key: EncodingKey, key_id: &str, team_id: &str) -> TokenSigner {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key_id.to_owned());
        TokenSigner {
            key,
            header,
            team_id: team_id.to_owned(),
            current: Mutex::new(None),
        }
    }

    /// The token to send at `now` (Unix seconds).
    fn bearer(&self, now: u64) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let mut current = self.current.lock();
        if let Some((issued, jwt)) = &*current
            && now.saturating_sub(*issued) < TOKEN_RENEWAL.as_secs()
        {
            return Ok(jwt.clone());
        }
        let claims = Claims {
            iss: &self.team_id,
            iat: now,
        };
        let jwt: Arc<str> = Arc::from(jsonwebtoken::encode(&self.header, &claims, &self.key)?);
        *current = Some((now, jwt.clone()));
        Ok(jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A P-256 key made now, as a .p8 file holds it.
    fn p8() -> EncodingKey {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("key");
        let der = pair.to_pkcs8v1().expect("PKCS#8");
        EncodingKey::from_ec_der(der.as_ref())
    }

    fn part(jwt: &str, index: usize) -> serde_json::Value {
        let text = jwt.split('.').nth(index).expect("three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).expect("base64url")).expect("JSON")
    }

    #[test]
    fn the_token_is_renewed_before_it_is_an_hour_old() {
        let signer = TokenSigner::new(p8(), "KEY123", "TEAM45");
        let start = 1_800_000_000;
        let first = signer.bearer(start).expect("sign");
        assert_eq!(
            part(&first, 0),
            serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": "KEY123"})
        );
        assert_eq!(
            part(&first, 1),
            serde_json::json!({"iss": "TEAM45", "iat": start})
        );
        assert_eq!(
            signer.bearer(start + 49 * 60).expect("sign"),
            first,
            "reused while young"
        );
        let mut now = start;
        for _ in 0..200 {
            now += 7 * 60;
            let jwt = signer.bearer(now).expect("sign");
            let iat = part(&jwt, 1)["iat"].as_u64().expect("iat");
            assert!(now - iat < 60 * 60, "a token {}s old sent", now - iat);
            assert!(now - iat < TOKEN_RENEWAL.as_secs());
        }
        let renewed = signer.bearer(start + 50 * 60).expect("sign");
        assert_ne!(renewed, first);
    }

    #[test]
    fn the_payload_is_the_one_of_the_spec_and_fits_4_kb() {
        assert_eq!(
            String::from_utf8(payload("hello \"you\"", 3)).expect("UTF-8"),
            r#"{"aps":{"alert":"hello \"you\"","badge":3,"sound":"default"}}"#
        );
        for filler in ["x", "é", "日", "😀", "\"", "\n", "\u{1}"] {
            let long = filler.repeat(5000);
            let body = payload(&long, 1);
            assert!(body.len() <= MAX_PAYLOAD, "{filler:?}: {}", body.len());
            assert!(
                body.len() > MAX_PAYLOAD - 8,
                "{filler:?}: cut too much, {}",
                body.len()
            );
            let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            let alert = parsed["aps"]["alert"].as_str().expect("alert");
            assert!(long.starts_with(alert));
        }
    }
}
