//! Stand-ins for the phones' push services, living in the test: HTTP/2 servers over TLS
//! (ALPN `h2`, certificates from a test CA) that play Apple's APNs and Google's FCM with its
//! OAuth2 token endpoint. Each checks what SPEC §12 says a request carries — the JWT's
//! signature with the public half of a key made at test time, its claims, the headers, the body
//! byte for byte — records every request with the problems it found, and answers as the test
//! scripts (200 when nothing is scripted). A request with a problem is answered 400, so the
//! gateway never counts it as sent.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::common::pki::Pki;
use crate::harness::SOON;

pub const KEY_ID: &str = "KEYID12345";
pub const TEAM_ID: &str = "TEAM123456";
pub const TOPIC: &str = "com.example.galopush";
pub const PROJECT: &str = "galopush-test";
pub const CLIENT_EMAIL: &str = "push@galopush-test.iam.gserviceaccount.com";
/// The `apns.ttl` / `fcm.ttl` the tests configure.
pub const TTL: u64 = 3600;

/// One scripted answer.
#[derive(Clone)]
pub struct Reply {
    status: u16,
    body: String,
    retry_after: Option<u64>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200, "")
    }

    fn status(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_owned(),
            retry_after: None,
        }
    }

    /// APNs: the app is gone from the phone.
    pub fn gone() -> Reply {
        Reply::status(
            410,
            r#"{"reason":"Unregistered","timestamp":1700000000000}"#,
        )
    }

    /// APNs: a token that was never good.
    pub fn bad_device_token() -> Reply {
        Reply::status(400, r#"{"reason":"BadDeviceToken"}"#)
    }

    /// FCM: the app is gone from the phone.
    pub fn unregistered() -> Reply {
        Reply::status(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
        )
    }

    /// Too many requests, with `Retry-After`.
    pub fn too_many(retry_after: u64) -> Reply {
        Reply {
            retry_after: Some(retry_after),
            ..Reply::status(429, r#"{"reason":"TooManyRequests"}"#)
        }
    }

    /// The service is down for a moment, with `Retry-After`.
    pub fn unavailable(retry_after: u64) -> Reply {
        Reply {
            retry_after: Some(retry_after),
            ..Reply::status(503, r#"{"reason":"ServiceUnavailable"}"#)
        }
    }
}

/// A request to send a notification, as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// What does not match SPEC §12; empty when the request is right.
    pub problems: Vec<String>,
    pub at: Instant,
}

/// Which service is played, with what its requests are checked against.
enum Role {
    Apns {
        /// The public half of the .p8 key; `None` with certificate auth.
        public_key: Option<Vec<u8>>,
    },
    Fcm {
        /// The service account's public key (PKCS#1 DER).
        public_key: Vec<u8>,
        token_uri: String,
    },
}

struct State {
    role: Role,
    script: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Access tokens handed out by the FCM token endpoint.
    issued: Mutex<Vec<String>>,
}

/// A running stand-in.
pub struct StandIn {
    pub url: String,
    /// The test CA, which the gateway is given as `apns.ca` / `fcm.ca`.
    pub pki: Pki,
    /// The files the gateway's settings name (the .p8 key, the service account, the
    /// certificate).
    pub file: PathBuf,
    state: Arc<State>,
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl StandIn {
    /// APNs with token auth: a P-256 key made now, written as a .p8 file.
    pub async fn apns() -> StandIn {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 key");
        let pki = Pki::new();
        let file = pki.dir.path().join("AuthKey.p8");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8");
        std::fs::write(&file, pem("PRIVATE KEY", pkcs8.as_ref())).expect("write .p8");
        let role = Role::Apns {
            public_key: Some(pair.public_key().as_ref().to_vec()),
        };
        StandIn::serve(pki, file, role, false).await
    }

    /// APNs with certificate auth: the gateway must present a certificate of the test CA;
    /// `file` holds it and its key, as one PEM.
    pub async fn apns_with_certificates() -> StandIn {
        let pki = Pki::new();
        let (cert, key) = pki.leaf("push-client");
        let file = pki.dir.path().join("push-client-with-key.pem");
        let both = std::fs::read_to_string(&cert).expect("cert")
            + &std::fs::read_to_string(&key).expect("key");
        std::fs::write(&file, both).expect("write PEM");
        StandIn::serve(pki, file, Role::Apns { public_key: None }, true).await
    }

    /// FCM and its token endpoint: an RSA key made now, in a service account file whose
    /// `token_uri` is the stand-in's.
    pub async fn fcm() -> StandIn {
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let pkcs8 = pair.as_der().expect("PKCS#8");
        let pki = Pki::new();
        let file = pki.dir.path().join("service-account.json");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );
        let token_uri = format!("{url}/token");
        let account = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef",
            "private_key": pem("PRIVATE KEY", pkcs8.as_ref()),
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": token_uri,
        });
        std::fs::write(&file, account.to_string()).expect("write service account");
        let role = Role::Fcm {
            public_key: pair.public_key().as_ref().to_vec(),
            token_uri,
        };
        StandIn::serve_on(listener, url, pki, file, role, false)
    }

    async fn serve(pki: Pki, file: PathBuf, role: Role, client_auth: bool) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );
        StandIn::serve_on(listener, url, pki, file, role, client_auth)
    }

    fn serve_on(
        listener: tokio::net::TcpListener,
        url: String,
        pki: Pki,
        file: PathBuf,
        role: Role,
        client_auth: bool,
    ) -> StandIn {
        let tls = tokio_rustls::TlsAcceptor::from(server_config(&pki, client_auth));
        let state = Arc::new(State {
            role,
            script: Mutex::default(),
            seen: Mutex::default(),
            connections: AtomicUsize::new(0),
            issued: Mutex::default(),
        });
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tls, state) = (tls.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1000)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn {
            url,
            pki,
            file,
            state,
        }
    }

    /// Answers the next sends with `replies`, in order; then 200 again.
    pub async fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().await.extend(replies);
    }

    /// The sends seen so far.
    pub async fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().await.clone()
    }

    /// Waits until `n` sends have been seen and returns them all, each checked for problems.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let seen = self.seen().await;
            if seen.len() >= n {
                for s in &seen {
                    assert!(s.problems.is_empty(), "{} {:?}", s.path, s.problems);
                }
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stand-in saw {} requests, expected {n}: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// TLS connections the gateway opened.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Access tokens the FCM token endpoint handed out.
    pub async fn issued(&self) -> usize {
        self.state.issued.lock().await.len()
    }
}

/// A TLS configuration serving a leaf of the stand-in's CA over HTTP/2, asking the client for
/// a certificate of the same CA when `client_auth`.
fn server_config(pki: &Pki, client_auth: bool) -> Arc<rustls::ServerConfig> {
    let mut config = if client_auth {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = pki.leaf("standin");
        let chain = CertificateDer::pem_file_iter(&cert)
            .expect("PEM")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(&key).expect("key");
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&pki.ca).expect("CA PEM") {
            roots.add(ca.expect("CA")).expect("trust the CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config")
    } else {
        (*pki.server_config("standin")).clone()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn respond(status: u16, body: String, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", "application/json");
    if let Some(seconds) = retry_after {
        response = response.header("retry-after", seconds.to_string());
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// The header and claims of a JWT whose signature `verify` accepts; a problem otherwise.
fn check_jwt(jwt: &str, verify: impl Fn(&[u8], &[u8]) -> bool) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("a JWT has three parts: {jwt}"));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| format!("JWT part is not base64url: {e}"))
    };
    let signature = decode(signature)?;
    if !verify(format!("{header}.{claims}").as_bytes(), &signature) {
        return Err("the JWT's signature does not verify with the test key".into());
    }
    let json = |bytes: Vec<u8>| {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("JWT part is not JSON: {e}"))
    };
    Ok((json(decode(header)?)?, json(decode(claims)?)?))
}

/// Whether a time (Unix seconds) is now, give or take a minute.
fn about(value: &Value, expected: u64) -> bool {
    value.as_u64().is_some_and(|v| v.abs_diff(expected) <= 60)
}

impl State {
    async fn answer(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let headers: HashMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if method != hyper::Method::POST {
            return respond(405, String::new(), None);
        }
        if path == "/token" {
            return self.grant(&body).await;
        }
        let problems = match &self.role {
            Role::Apns { public_key } => check_apns(&path, &headers, &body, public_key.as_deref()),
            Role::Fcm { .. } => self.check_fcm(&path, &headers, &body).await,
        };
        let reply = if problems.is_empty() {
            self.script
                .lock()
                .await
                .pop_front()
                .unwrap_or_else(Reply::ok)
        } else {
            Reply::status(400, &json!({"reason": problems.join("; ")}).to_string())
        };
        self.seen.lock().await.push(Seen {
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            problems,
            at: Instant::now(),
        });
        respond(reply.status, reply.body, reply.retry_after)
    }

    /// FCM's token endpoint: the assertion exchanged for an access token.
    async fn grant(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let Role::Fcm {
            public_key,
            token_uri,
        } = &self.role
        else {
            return respond(404, String::new(), None);
        };
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let mut problems = Vec::new();
        if form.get("grant_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            problems.push(format!("grant_type {:?}", form.get("grant_type")));
        }
        let verify = |message: &[u8], signature: &[u8]| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
                .verify(message, signature)
                .is_ok()
        };
        match check_jwt(form.get("assertion").map_or("", String::as_str), verify) {
            Err(problem) => problems.push(problem),
            Ok((header, claims)) => {
                if header["alg"] != "RS256" {
                    problems.push(format!("assertion header {header}"));
                }
                let now = now();
                if claims["iss"] != CLIENT_EMAIL
                    || claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging"
                    || claims["aud"] != token_uri.as_str()
                    || !about(&claims["iat"], now)
                    || !about(&claims["exp"], now + 3600)
                {
                    problems.push(format!("assertion claims {claims}"));
                }
            }
        }
        if !problems.is_empty() {
            return respond(
                400,
                json!({"error": "invalid_grant", "error_description": problems.join("; ")})
                    .to_string(),
                None,
            );
        }
        let mut issued = self.issued.lock().await;
        let token = format!("ya29.test-{}", issued.len() + 1);
        issued.push(token.clone());
        respond(
            200,
            json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
            None,
        )
    }

    async fn check_fcm(
        &self,
        path: &str,
        headers: &HashMap<String, String>,
        body: &[u8],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if path != format!("/v1/projects/{PROJECT}/messages:send") {
            problems.push(format!("path {path}"));
        }
        let issued = self.issued.lock().await;
        let bearer = headers
            .get("authorization")
            .map(String::as_str)
            .unwrap_or("");
        if !issued
            .iter()
            .any(|token| bearer == format!("Bearer {token}"))
        {
            problems.push(format!(
                "authorization {bearer:?} is no access token handed out"
            ));
        }
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let message = &parsed["message"];
        let (Some(token), Some(text), Some(offline)) = (
            message["token"].as_str(),
            message["data"]["body"].as_str(),
            message["data"]["offline"].as_str(),
        ) else {
            problems.push(format!("body {}", String::from_utf8_lossy(body)));
            return problems;
        };
        let expected = format!(
            r#"{{"message":{{"token":{},"data":{{"body":{},"offline":{}}},"android":{{"priority":"high","ttl":"{TTL}s"}}}}}}"#,
            Value::from(token),
            Value::from(text),
            Value::from(offline),
        );
        if body != expected.as_bytes() {
            problems.push(format!(
                "body {} is not {expected}",
                String::from_utf8_lossy(body)
            ));
        }
        problems
    }
}

/// APNs: the path, the headers of SPEC §12, the JWT (token auth) or its absence (certificate
/// auth), and the body byte for byte.
fn check_apns(
    path: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
    public_key: Option<&[u8]>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let now = now();
    if path.strip_prefix("/3/device/").is_none_or(str::is_empty) {
        problems.push(format!("path {path}"));
    }
    for (name, value) in [
        ("apns-topic", TOPIC),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
    ] {
        if headers.get(name).map(String::as_str) != Some(value) {
            problems.push(format!("{name}: {:?}", headers.get(name)));
        }
    }
    let expiration = headers
        .get("apns-expiration")
        .and_then(|e| e.parse::<u64>().ok());
    if expiration.is_none_or(|e| e.abs_diff(now + TTL) > 60) {
        problems.push(format!("apns-expiration {expiration:?}, not now + {TTL}"));
    }
    let authorization = headers.get("authorization");
    match (public_key, authorization) {
        (None, None) => {}
        (None, Some(a)) => problems.push(format!("certificate auth sent authorization {a}")),
        (Some(_), None) => problems.push("no authorization".into()),
        (Some(key), Some(a)) => {
            let verify = |message: &[u8], signature: &[u8]| {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(message, signature)
                    .is_ok()
            };
            match a.strip_prefix("bearer ").map(|jwt| check_jwt(jwt, verify)) {
                None => problems.push(format!("authorization {a} is not a bearer token")),
                Some(Err(problem)) => problems.push(problem),
                Some(Ok((header, claims))) => {
                    if header["alg"] != "ES256" || header["kid"] != KEY_ID {
                        problems.push(format!("JWT header {header}"));
                    }
                    if claims["iss"] != TEAM_ID
                        || !claims["iat"]
                            .as_u64()
                            .is_some_and(|iat| iat <= now + 60 && now - iat < 3600)
                    {
                        problems.push(format!("JWT claims {claims}"));
                    }
                }
            }
        }
    }
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let aps = &parsed["aps"];
    match (aps["alert"].as_str(), aps["badge"].as_u64()) {
        (Some(alert), Some(badge)) => {
            let expected = format!(
                r#"{{"aps":{{"alert":{},"badge":{badge},"sound":"default"}}}}"#,
                Value::from(alert)
            );
            if body != expected.as_bytes() {
                problems.push(format!(
                    "body {} is not {expected}",
                    String::from_utf8_lossy(body)
                ));
            }
            if body.len() > 4096 {
                problems.push(format!("body of {} bytes", body.len()));
            }
        }
        _ => problems.push(format!("body {}", String::from_utf8_lossy(body))),
    }
    problems
}
