//! What the server commands start the same way: the store, the bus, the router with its HTTP
//! surface, and listeners whose errors name their setting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::bus::embedded::{EmbeddedInbox, EmbeddedOutbox, InboxSettings, Webhook, WebhookError};
use crate::bus::nsq::{self, NsqConnection, NsqIntake, NsqPublisher};
use crate::bus::{Gate, Intake, Publisher};
use crate::comet::BindError;
use crate::config::{BusKind, Config, StoreKind};
use crate::http::api::ApiState;
use crate::http::public::PublicState;
use crate::http::stats::Stats;
use crate::http::{self, ApiToken, HttpLimits};
use crate::metrics::Metrics;
use crate::phones::{PhoneError, Phones};
use crate::router::reports::Reports;
use crate::router::{Router, RouterSettings};
use crate::store::embedded::EmbeddedStore;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{OfflineLimits, Store, StoreError};
use crate::tls::{ReloadingCert, TlsError};

/// Why a server command did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Nsq(#[from] galopush_nsq::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Phones(#[from] PhoneError),
    /// Settings this command cannot run with.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A router refused the comet for good.
    #[error("{0}")]
    Link(String),
}

/// The certificate of `[tls]`, watched for changes, when it is set; a pair that cannot be
/// used stops the start.
pub fn load_tls(config: &Config) -> Result<Option<Arc<ReloadingCert>>, StartError> {
    if !config.tls.enabled() {
        return Ok(None);
    }
    let cert = ReloadingCert::load(&config.tls.cert, &config.tls.key)?;
    cert.watch();
    Ok(Some(cert))
}

/// The offline limits of the configuration.
pub fn offline_limits(config: &Config) -> OfflineLimits {
    OfflineLimits {
        max_callbacks: config.delivery.max_offline_callbacks,
        max_ims: config.delivery.max_offline_im,
    }
}

/// Opens the configured store. If a Redis store does not answer, this fails within a few
/// seconds.
pub async fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, StartError> {
    let limits = offline_limits(config);
    Ok(match config.store.kind {
        StoreKind::Embedded => Arc::new(EmbeddedStore::open(
            &config.store.path,
            limits,
            config.store.cache_bytes,
            metrics.store_commit_seconds.clone(),
        )?),
        StoreKind::Memory => Arc::new(MemoryStore::new(limits)),
        StoreKind::Redis => Arc::new(
            RedisStore::open(&config.store.redis_url, &config.store.redis_prefix, limits).await?,
        ),
    })
}

/// Binds a listener; `key` is the setting the address came from.
pub async fn listen(
    addr: SocketAddr,
    key: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Listen { addr, key, source };
    let listener = crate::listener::bind(addr).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

/// A router with its store and the publishing side of its bus.
pub struct RouterParts {
    pub router: Arc<Router>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// The NSQ producer and how its connections are made, with the NSQ bus.
    producer: Option<(galopush_nsq::Producer, NsqConnection)>,
}

/// Opens the store and the bus's publishing side and makes the router.
pub async fn start_router(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<RouterParts, StartError> {
    let store = open_store(config, &metrics).await?;
    // With the NSQ bus, outbound messages and `/pub` go to nsqd; the store keeps the rest.
    let producer = match config.bus.kind {
        BusKind::Nsq => {
            let connection = NsqConnection::from_config(&config.bus)?;
            Some((nsq::producer(&config.bus, &connection)?, connection))
        }
        BusKind::Embedded => None,
    };
    let publisher: Arc<dyn Publisher> = match &producer {
        Some((producer, _)) => Arc::new(NsqPublisher::new(
            producer.clone(),
            config.bus.base64,
            config.limits.outbox_pending,
        )),
        None => {
            let ca = &config.bus.webhook_ca;
            let ca = (!ca.as_os_str().is_empty()).then_some(ca.as_path());
            let webhook = Webhook::new(&config.bus.webhook_url, ca)?;
            EmbeddedOutbox::start(
                store.clone(),
                &webhook,
                metrics.clone(),
                config.limits.outbox_pending,
            )
            .await?
        }
    };
    let reports = Reports::new(
        &config.topics.delivery_report,
        publisher.clone(),
        metrics.clone(),
    );
    let phones = Phones::start(config, store.clone(), reports, metrics.clone())?;
    let router = Router::with_phones(
        RouterSettings::from_config(config),
        store.clone(),
        publisher,
        metrics.clone(),
        phones,
    );
    Ok(RouterParts {
        router,
        metrics,
        store,
        producer,
    })
}

impl RouterParts {
    /// Starts taking inbound bus messages (applied once `gate` opens) and the router's upkeep;
    /// returns the HTTP listeners' routes of SPEC §8.
    pub async fn serve_bus(self, config: &Config, gate: Gate) -> Result<RouterHttp, StartError> {
        // What is in flight at shutdown gets this long to settle (acked, or stored offline).
        let wait = config.delivery.ack_timeout.0 + Duration::from_secs(1);
        let (intake, drain): (Arc<dyn Intake>, BusDrain) = match self.producer {
            Some((producer, connection)) => {
                let consumers =
                    nsq::consume(self.router.clone(), &config.bus, &connection, gate, wait)?;
                let intake = Arc::new(NsqIntake::new(producer, self.router.clone()));
                (intake, BusDrain::Nsq(consumers))
            }
            None => {
                let settings = InboxSettings {
                    durable: config.bus.durable,
                    max_in_flight: config.bus.max_in_flight,
                    inbox_pending: config.limits.inbox_pending,
                };
                let inbox =
                    EmbeddedInbox::start(self.store, self.router.clone(), settings, gate).await?;
                (inbox.clone(), BusDrain::Embedded(inbox, wait))
            }
        };
        let upkeep = self.router.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                upkeep.housekeeping();
            }
        });
        let public = http::public::routes(
            PublicState {
                router: self.router.clone(),
                metrics: self.metrics.clone(),
            },
            config.web.demo,
        );
        let stats = Stats::start(self.router.clone(), self.metrics.clone(), config);
        let api = http::api::routes(
            ApiState {
                router: self.router,
                intake,
                metrics: self.metrics.clone(),
                max_pub: config.limits.max_body as usize,
                max_mpub: config.limits.max_mpub,
                stats,
                base64: config.bus.kind == BusKind::Nsq && config.bus.base64,
            },
            ApiToken::new(&config.api.token),
        );
        Ok(RouterHttp {
            public,
            api,
            limits: HttpLimits::from_config(&config.limits),
            metrics: self.metrics,
            drain,
        })
    }
}

/// The public and the business API listeners, bound, with what they serve over HTTPS.
pub struct HttpListeners {
    pub public: TcpListener,
    pub api: TcpListener,
    public_tls: Option<TlsAcceptor>,
    api_tls: Option<TlsAcceptor>,
}

/// ALPN of the HTTPS listeners: HTTP/1.1 only, as served.
const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];

impl HttpListeners {
    /// Binds `router.http_addr` and `api.addr`; returns them with their bound addresses.
    pub async fn bind(
        config: &Config,
        tls: Option<&Arc<ReloadingCert>>,
    ) -> Result<(HttpListeners, SocketAddr, SocketAddr), StartError> {
        let (public, public_bound) = listen(config.router.http_addr, "router.http_addr").await?;
        let (api, api_bound) = listen(config.api.addr, "api.addr").await?;
        let acceptor = |on: bool| tls.filter(|_| on).map(|cert| cert.acceptor(HTTP_ALPN));
        Ok((
            HttpListeners {
                public,
                api,
                public_tls: acceptor(config.router.http_tls),
                api_tls: acceptor(config.api.tls),
            },
            public_bound,
            api_bound,
        ))
    }
}

/// The router's HTTP surface (SPEC §8) with the bus behind it.
pub struct RouterHttp {
    public: axum::Router,
    api: axum::Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    drain: BusDrain,
}

impl RouterHttp {
    /// Serves both listeners until `shutdown` resolves, then drains the bus.
    pub async fn serve(
        self,
        listeners: HttpListeners,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopping.cancel();
        });
        tokio::join!(
            http::serve(
                listeners.public,
                self.public,
                self.limits,
                self.metrics.clone(),
                stop.clone(),
                listeners.public_tls,
            ),
            http::serve(
                listeners.api,
                self.api,
                self.limits,
                self.metrics,
                stop,
                listeners.api_tls,
            ),
        );
        self.drain.run().await;
        Ok(())
    }
}

/// What the bus does at shutdown, once the HTTP server has stopped taking requests: messages in
/// flight get up to `delivery.ack_timeout` + 1 s to settle (acked, or stored offline) and are
/// retired — deleted from the embedded inbox, FINished on nsqd after a CLS — so a clean restart
/// applies nothing already delivered.
enum BusDrain {
    Embedded(Arc<EmbeddedInbox>, Duration),
    Nsq(nsq::NsqDrain),
}

impl BusDrain {
    async fn run(self) {
        match self {
            BusDrain::Embedded(inbox, wait) => inbox.drain(wait).await,
            BusDrain::Nsq(consumers) => consumers.run().await,
        }
    }
}
