//! `galopush standalone`: one router, one comet, the embedded bus and a store in one process,
//! linked in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::bus::Intake;
use crate::bus::embedded::{EmbeddedInbox, EmbeddedOutbox};
use crate::comet::{BindError, Comet, CometSettings};
use crate::config::{BusKind, Config, StoreKind};
use crate::http::{self, HttpState};
use crate::link::RouterLink;
use crate::link::local::LocalRouterLink;
use crate::metrics::Metrics;
use crate::router::{Router, RouterSettings};
use crate::store::embedded::EmbeddedStore;
use crate::store::memory::MemoryStore;
use crate::store::{OfflineLimits, Store, StoreError};

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot listen on {addr} (router.http_addr): {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Unsupported(String),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// The offline limits of the configuration.
pub fn offline_limits(config: &Config) -> OfflineLimits {
    OfflineLimits {
        max_callbacks: config.delivery.max_offline_callbacks,
        max_ims: config.delivery.max_offline_im,
    }
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let limits = offline_limits(config);
    Ok(match config.store.kind {
        StoreKind::Embedded => Arc::new(EmbeddedStore::open(&config.store.path, limits)?),
        StoreKind::Memory => Arc::new(MemoryStore::new(limits)),
        StoreKind::Redis => {
            return Err(StartError::Unsupported(
                "store.kind = \"redis\" is not available in this build yet".into(),
            ));
        }
    })
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if config.bus.kind != BusKind::Embedded {
        return Err(StartError::Unsupported(
            "bus.kind = \"nsq\" is not available in this build yet".into(),
        ));
    }
    let metrics = Arc::new(Metrics::new());
    let store = open_store(&config)?;
    let outbox =
        EmbeddedOutbox::start(store.clone(), &config.bus.webhook_url, metrics.clone()).await?;
    let router = Router::new(
        RouterSettings::from_config(&config),
        store.clone(),
        outbox,
        metrics.clone(),
    );
    let link: Arc<dyn RouterLink> = LocalRouterLink::new(router.clone());
    let comet = Comet::bind(
        CometSettings::from_config(&config),
        vec![link],
        metrics.clone(),
    )
    .await?;
    let (tcp, ws) = comet.local_addrs();
    let http_addr = config.router.http_addr;
    let listener = TcpListener::bind(http_addr)
        .await
        .map_err(|source| StartError::Http {
            addr: http_addr,
            source,
        })?;
    let http_bound = listener.local_addr().map_err(|source| StartError::Http {
        addr: http_addr,
        source,
    })?;
    comet.start().await;
    let intake: Arc<dyn Intake> = EmbeddedInbox::start(
        store,
        router.clone(),
        config.bus.durable,
        config.bus.max_in_flight,
    )
    .await?;
    let upkeep = router.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            upkeep.housekeeping();
        }
    });
    let app = http::routes(HttpState {
        router,
        intake,
        metrics,
    });
    tracing::info!(http = %http_bound, tcp = %tcp, ws = %ws, "galopush standalone ready");
    // A machine-readable line for scripts and tests that start the gateway on port 0.
    println!("galopush ready http={http_bound} tcp={tcp} ws={ws}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(StartError::Serve)
}
