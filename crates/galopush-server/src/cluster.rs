//! `galopush router` and `galopush comet`: the two halves of a cluster, as separate processes
//! linked over gRPC (ARCHITECTURE.md). Routers share a store (Redis) and a bus (NSQ); every
//! comet joins every router.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::bus::Gate;
use crate::comet::{Comet, CometSettings};
use crate::config::Config;
use crate::http::{self, ApiToken, HttpLimits};
use crate::link::RouterLink;
use crate::link::grpc::comet_side::GrpcRouterLink;
use crate::link::grpc::router_side::LinkService;
use crate::link::grpc::{HEARTBEAT, SILENCE};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::start::{HttpListeners, StartError, listen, start_router};

/// How long a starting router waits for comets to rejoin before it applies bus messages, so a
/// restarted router knows where terminals are before it routes to them.
const WARM_UP: Duration = Duration::from_secs(5);
/// After the first comet joins, how long the others get to report their sessions.
const SETTLE_IN: Duration = Duration::from_millis(500);

/// Runs a router until `shutdown` resolves.
pub async fn run_router(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let parts = start_router(&config, metrics).await?;
    let router = parts.router.clone();
    let (rpc, rpc_bound) = listen(config.router.rpc_addr, "router.rpc_addr").await?;
    let (listeners, http_bound, api_bound) = HttpListeners::bind(&config).await?;
    let service = LinkService::new(router.clone()).into_server();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(HEARTBEAT))
            .http2_keepalive_timeout(Some(SILENCE))
            .tcp_nodelay(true)
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(rpc))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "router RPC server failed");
        }
    });
    let (open, gate) = Gate::closed();
    tokio::spawn(async move {
        warm_up(&router).await;
        let _ = open.send(true);
    });
    let http_surface = parts.serve_bus(&config, gate).await?;
    tracing::info!(http = %http_bound, api = %api_bound, rpc = %rpc_bound, "galopush router ready");
    println!("galopush ready http={http_bound} api={api_bound} rpc={rpc_bound}");
    http_surface.serve(listeners, shutdown).await
}

/// Waits until the comets have rejoined (or [`WARM_UP`] has passed).
async fn warm_up(router: &Router) {
    tracing::info!("waiting for comets to join before applying bus messages");
    let deadline = tokio::time::Instant::now() + WARM_UP;
    while router.comets().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE_IN).await;
    tracing::info!(comets = router.comets().len(), "applying bus messages");
}

/// Runs a comet until `shutdown` resolves.
pub async fn run_comet(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let links: Vec<Arc<dyn RouterLink>> = config
        .comet
        .router_rpc
        .iter()
        .map(|addr| Arc::new(GrpcRouterLink::new(addr)) as Arc<dyn RouterLink>)
        .collect();
    if links.is_empty() {
        return Err(StartError::Unsupported(
            "comet.router_rpc is empty: a comet needs at least one router".into(),
        ));
    }
    let comet = Comet::bind(CometSettings::from_config(&config), links, metrics.clone()).await?;
    let (tcp, ws) = comet.local_addrs();
    let (http_listener, http_bound) = listen(config.comet.http_addr, "comet.http_addr").await?;
    comet.start().await;
    tracing::info!(tcp = %tcp, ws = %ws, http = %http_bound, "galopush comet ready");
    println!("galopush ready tcp={tcp} ws={ws} http={http_bound}");
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let routes = http::comet_routes(metrics.clone(), ApiToken::new(&config.api.token));
    http::serve(
        http_listener,
        routes,
        HttpLimits::from_config(&config.limits),
        metrics,
        stop,
    )
    .await;
    Ok(())
}
