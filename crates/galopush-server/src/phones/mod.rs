//! Phones that are asleep (SPEC §12): a PUSH (and an IM, with `apns.im` / `fcm.im`) for an iOS
//! or Android terminal that is not live also goes to the phone's push service — Apple's APNs
//! ([`apns`]) or Google's FCM ([`fcm`]) — when the terminal's login record has a deviceToken.
//! This is in addition to the offline rule of §6: the stored copy is kept and delivered over the
//! connection when the terminal comes back.
//!
//! Each service has its own queue, bounded by `apns.queue` / `fcm.queue`, which the router
//! fills without ever waiting: when it is full (a service that is down or slow) the
//! notification is counted `dropped` and the router goes on. A task drains each queue, with at
//! most [`IN_FLIGHT`] notifications in progress at once (waiting to be tried again included),
//! each a stream of the service's one HTTP/2 connection. A notification in progress reads the
//! terminal's login record for its token (the router plans with which terminal types are
//! logged in, not with the records) and its stored messages for the badge: the coalesced push
//! counter for a push, the stored IMs for an IM (the offline write was called before, so it is
//! counted). Then, by the service's answer, counted in
//! `galopush_provider_total{provider,outcome}`:
//! - accepted: `sent`, and reported `apns` / `fcm` when delivery reports are on (at least
//!   once: the report is tried again until the bus has it);
//! - the token is dead: `dead_token`, and the token is removed from the login record if the
//!   record still holds it (the next `userOnlineState` brings a new one);
//! - 429, 5xx or no answer: `retried`, and tried again after a back-off that honours
//!   `Retry-After`, for up to `retry_for`; then `failed`;
//! - anything else: `failed`, logged.
//!
//! A terminal whose login record has no deviceToken is counted `no_token` and nothing is sent.

pub mod apns;
pub mod fcm;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use galopush_nsq::Backoff;
use galopush_protocol::TermType;
use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
use crate::link::DeliveryKind;
use crate::metrics::Metrics;
use crate::router::reports::{Report, ReportOutcome, Reports};
use crate::store::Store;

/// Notifications of one service in progress at once, those waiting to be tried again included.
const IN_FLIGHT: usize = 1000;
/// The back-off between tries of one notification, before `Retry-After`.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// One request (or token exchange) without an answer after this long is tried again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A phone's push service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Apns,
    Fcm,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Apns, Provider::Fcm];

    /// The metric label, and the prefix of its settings.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
        }
    }

    fn report(self) -> ReportOutcome {
        match self {
            Provider::Apns => ReportOutcome::Apns,
            Provider::Fcm => ReportOutcome::Fcm,
        }
    }
}

/// What became of a notification, or of one try of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// The service accepted it.
    Sent,
    /// The service declared the token dead; it was removed from the login record.
    DeadToken,
    /// A try failed (429, 5xx, no answer) and it is tried again.
    Retried,
    /// Refused by the service, or still failing after `retry_for`.
    Failed,
    /// The provider's queue was full.
    Dropped,
    /// The login record had no deviceToken (none given, or removed as dead): nothing sent.
    NoToken,
}

impl ProviderOutcome {
    pub const ALL: [ProviderOutcome; 6] = [
        ProviderOutcome::Sent,
        ProviderOutcome::DeadToken,
        ProviderOutcome::Retried,
        ProviderOutcome::Failed,
        ProviderOutcome::Dropped,
        ProviderOutcome::NoToken,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProviderOutcome::Sent => "sent",
            ProviderOutcome::DeadToken => "dead_token",
            ProviderOutcome::Retried => "retried",
            ProviderOutcome::Failed => "failed",
            ProviderOutcome::Dropped => "dropped",
            ProviderOutcome::NoToken => "no_token",
        }
    }
}

/// A message for the push service of a terminal that is not live.
pub struct Notice {
    pub uid: Arc<str>,
    pub term: TermType,
    pub kind: DeliveryKind,
    pub body: Bytes,
    /// The down-message's `id`, for its delivery report.
    pub id: Option<Arc<str>>,
}

/// What a service answered one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    /// The token is dead: the phone's app is gone or the token was never valid.
    DeadToken,
    /// Try again, not before the service's `Retry-After` when it gave one.
    Later(Option<Duration>),
    /// Refused for good; why.
    Refused(String),
}

/// Why a push service cannot be set up; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PhoneError {
    pub key: &'static str,
    pub message: String,
}

impl PhoneError {
    fn new(key: &'static str, message: impl std::fmt::Display) -> PhoneError {
        PhoneError {
            key,
            message: message.to_string(),
        }
    }
}

/// One service's client.
enum Service {
    Apns(apns::Apns),
    Fcm(fcm::Fcm),
}

impl Service {
    async fn send(&self, token: &str, notice: &Notice, count: u32) -> Answer {
        match self {
            Service::Apns(apns) => apns.send(token, notice, count).await,
            Service::Fcm(fcm) => fcm.send(token, notice, count).await,
        }
    }
}

/// The router's side of one service: its queue.
struct Lane {
    provider: Provider,
    queue: mpsc::Sender<Notice>,
    im: bool,
    dropped: Counter,
}

/// The push services in use; none when neither `[apns]` nor `[fcm]` is configured.
#[derive(Default)]
pub struct Phones {
    apns: Option<Lane>,
    fcm: Option<Lane>,
}

impl Phones {
    /// Sets up the configured services (reading their keys and CAs: an error stops the start)
    /// and starts the task draining each one's queue.
    pub fn start(
        config: &Config,
        store: Arc<dyn Store>,
        reports: Reports,
        metrics: Arc<Metrics>,
    ) -> Result<Phones, PhoneError> {
        let mut phones = Phones::default();
        let sender = |provider, retry_for: crate::config::Duration| Sender {
            provider,
            store: store.clone(),
            reports: reports.clone(),
            metrics: metrics.clone(),
            retry_for: retry_for.get(),
        };
        if config.apns.enabled() {
            let service = Service::Apns(apns::Apns::new(&config.apns)?);
            let sender = sender(Provider::Apns, config.apns.retry_for);
            phones.apns = Some(Lane::start(
                service,
                sender,
                config.apns.queue,
                config.apns.im,
            ));
            tracing::info!(endpoint = %apns::endpoint(&config.apns), "APNs on");
        }
        if config.fcm.enabled() {
            let service = Service::Fcm(fcm::Fcm::new(&config.fcm)?);
            let sender = sender(Provider::Fcm, config.fcm.retry_for);
            phones.fcm = Some(Lane::start(
                service,
                sender,
                config.fcm.queue,
                config.fcm.im,
            ));
            tracing::info!(endpoint = %config.fcm.endpoint, "FCM on");
        }
        Ok(phones)
    }

    /// A message of `kind` for a terminal that is not live, stored offline: queued for its
    /// phone's push service when there is one for its type and kind. Never waits.
    pub fn notify(
        &self,
        uid: &Arc<str>,
        term: TermType,
        kind: DeliveryKind,
        body: &Bytes,
        id: Option<&Arc<str>>,
    ) {
        let lane = match term {
            TermType::Ios => &self.apns,
            TermType::Android => &self.fcm,
            _ => return,
        };
        let Some(lane) = lane else {
            return;
        };
        match kind {
            DeliveryKind::Push { .. } => {}
            DeliveryKind::Im if lane.im => {}
            _ => return,
        }
        let notice = Notice {
            uid: uid.clone(),
            term,
            kind,
            body: body.clone(),
            id: id.cloned(),
        };
        if lane.queue.try_send(notice).is_err() {
            lane.dropped.inc();
            tracing::debug!(provider = lane.provider.label(), %uid, "push service queue full; notification dropped");
        }
    }
}

impl Lane {
    fn start(service: Service, sender: Sender, queue: usize, im: bool) -> Lane {
        let provider = sender.provider;
        let dropped = sender
            .metrics
            .provider(provider, ProviderOutcome::Dropped)
            .clone();
        let (tx, rx) = mpsc::channel(queue);
        tokio::spawn(drain(Arc::new(service), Arc::new(sender), rx));
        Lane {
            provider,
            queue: tx,
            im,
            dropped,
        }
    }
}

/// Takes notifications from a service's queue and sends each from a task of its own, at most
/// [`IN_FLIGHT`] at once.
async fn drain(service: Arc<Service>, sender: Arc<Sender>, mut queue: mpsc::Receiver<Notice>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(notice) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (service, sender) = (service.clone(), sender.clone());
        tokio::spawn(async move {
            sender.deliver(&service, notice).await;
            drop(permit);
        });
    }
}

/// What sending a notification needs besides the service.
struct Sender {
    provider: Provider,
    store: Arc<dyn Store>,
    reports: Reports,
    metrics: Arc<Metrics>,
    retry_for: Duration,
}

impl Sender {
    fn count(&self, outcome: ProviderOutcome) {
        self.metrics.provider(self.provider, outcome).inc();
    }

    /// Sends one notification until the service took it, refused it, or `retry_for` passed.
    async fn deliver(&self, service: &Service, notice: Notice) {
        let provider = self.provider.label();
        let uid = &*notice.uid;
        let token = match self.store.login(uid, notice.term).await {
            Ok(Some(record)) if !record.device_token.is_empty() => record.device_token,
            Ok(_) => {
                self.count(ProviderOutcome::NoToken);
                return;
            }
            Err(e) => {
                self.count(ProviderOutcome::Failed);
                tracing::warn!(provider, %uid, error = %e, "cannot read the login record for the device token");
                return;
            }
        };
        let count = self.offline_count(&notice).await;
        let started = tokio::time::Instant::now();
        let mut retries = RETRY.retries();
        loop {
            match service.send(&token, &notice, count).await {
                Answer::Accepted => {
                    self.count(ProviderOutcome::Sent);
                    self.report_accepted(&notice).await;
                    return;
                }
                Answer::DeadToken => {
                    self.count(ProviderOutcome::DeadToken);
                    tracing::info!(provider, %uid, "device token is dead; removed from the login record");
                    if let Err(e) = self
                        .store
                        .forget_device_token(uid, notice.term, &token)
                        .await
                    {
                        self.metrics.store_errors.inc();
                        tracing::warn!(provider, %uid, error = %e, "cannot remove a dead device token");
                    }
                    return;
                }
                Answer::Later(after) => {
                    let wait = retries.next_delay().max(after.unwrap_or_default());
                    if started.elapsed() + wait > self.retry_for {
                        self.count(ProviderOutcome::Failed);
                        tracing::warn!(provider, %uid, "push service still failing after retry_for; notification given up");
                        return;
                    }
                    self.count(ProviderOutcome::Retried);
                    tokio::time::sleep(wait).await;
                }
                Answer::Refused(why) => {
                    self.count(ProviderOutcome::Failed);
                    tracing::warn!(provider, %uid, reason = %why, "push service refused a notification");
                    return;
                }
            }
        }
    }

    /// Reports that the service took `notice`, at least once: tried again with back-off until
    /// the bus has the report (it refuses only while its outbox is full or failing). A report
    /// waiting here keeps its place among the service's notifications in progress.
    async fn report_accepted(&self, notice: &Notice) {
        let mut retries = RETRY.retries();
        loop {
            let report = Report {
                id: notice.id.as_deref(),
                uid: &notice.uid,
                termtype: notice.term.bit(),
                kind: notice.kind,
                outcome: self.provider.report(),
            };
            match self.reports.write(report).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(provider = self.provider.label(), uid = %notice.uid, error = %e, "delivery report not taken by the bus; trying again");
                    tokio::time::sleep(retries.next_delay()).await;
                }
            }
        }
    }

    /// The badge: the coalesced push counter for a push, the stored IMs for an IM; at least 1.
    async fn offline_count(&self, notice: &Notice) -> u32 {
        let stored = match self.store.offline(&notice.uid, notice.term).await {
            Ok(stored) => stored,
            Err(_) => return 1,
        };
        let count = match notice.kind {
            DeliveryKind::Im => u32::try_from(stored.ims.len()).unwrap_or(u32::MAX),
            _ => stored.push.map_or(0, |p| p.count),
        };
        count.max(1)
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `Retry-After` given in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Whether an answer is worth trying again: the service is overloaded or failing.
fn transient(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// An HTTP client for a service: HTTP/2 over TLS, trusting the CAs of the PEM file `ca` when
/// given (setting `ca_key`) instead of the system's roots.
fn client_builder(
    ca: &std::path::Path,
    ca_key: &'static str,
) -> Result<reqwest::ClientBuilder, PhoneError> {
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true);
    if !ca.as_os_str().is_empty() {
        let pem = std::fs::read(ca)
            .map_err(|e| PhoneError::new(ca_key, format!("{}: {e}", ca.display())))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| PhoneError::new(ca_key, format!("{}: {e}", ca.display())))?;
        if certificates.is_empty() {
            return Err(PhoneError::new(
                ca_key,
                format!("{} holds no certificate", ca.display()),
            ));
        }
        builder = builder.tls_certs_only(certificates);
    }
    Ok(builder)
}
