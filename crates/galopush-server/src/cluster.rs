//! `galopush router` and `galopush comet`: the two halves of a cluster, as separate processes
//! linked over gRPC (ARCHITECTURE.md). Routers share a store (Redis) and a bus (NSQ); every
//! comet joins every router, presenting `cluster.secret`, over mutual TLS with `cluster.ca`
//! (SPEC §11).

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::bus::Gate;
use crate::comet::{Comet, CometSettings};
use crate::config::{ClusterConfig, Config};
use crate::http::{self, ApiToken, HttpLimits};
use crate::link::RouterLink;
use crate::link::grpc::comet_side::{GrpcRouterLink, LinkSecurity};
use crate::link::grpc::router_side::LinkService;
use crate::link::grpc::{self};
use crate::link::grpc::{HEARTBEAT, SILENCE};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::start::{HttpListeners, StartError, listen, load_tls, start_router};
use crate::tls::{self, TlsError};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

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
    let cluster = &config.cluster;
    if !config.router.rpc_addr.ip().is_loopback() && cluster.secret.is_empty() {
        return Err(StartError::Config(format!(
            "router.rpc_addr {} is not a loopback address and cluster.secret is empty: set \
             cluster.secret (comets present it to join)",
            config.router.rpc_addr
        )));
    }
    let tls = load_tls(&config)?;
    let metrics = Arc::new(Metrics::new());
    let parts = start_router(&config, metrics).await?;
    let router = parts.router.clone();
    let (rpc, rpc_bound) = listen(config.router.rpc_addr, "router.rpc_addr").await?;
    let (listeners, http_bound, api_bound) = HttpListeners::bind(&config, tls.as_ref()).await?;
    let service = LinkService::new(
        router.clone(),
        &cluster.secret,
        grpc::message_limit(&config.limits),
    )
    .into_server();
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HEARTBEAT))
        .http2_keepalive_timeout(Some(SILENCE))
        .tcp_nodelay(true);
    if let Some(pems) = link_pems(cluster)? {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&pems.cert, &pems.key))
            .client_ca_root(Certificate::from_pem(&pems.ca));
        server = server
            .tls_config(tls)
            .map_err(|e| StartError::Config(format!("cluster TLS: {e}")))?;
    }
    tokio::spawn(async move {
        let served = server
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

/// The PEM files of the link's mutual TLS, read and checked (`cluster.ca`, `cluster.cert`,
/// `cluster.key`); `None` without them.
struct LinkPems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn link_pems(cluster: &ClusterConfig) -> Result<Option<LinkPems>, StartError> {
    if !cluster.mutual_tls() {
        return Ok(None);
    }
    // Checked here, so that a bad file stops the start with its name.
    tls::load_certificates(&cluster.ca)?;
    tls::load_pair(&cluster.cert, &cluster.key)?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })
    };
    Ok(Some(LinkPems {
        ca: read(&cluster.ca)?,
        cert: read(&cluster.cert)?,
        key: read(&cluster.key)?,
    }))
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

/// Runs a comet until `shutdown` resolves, or until a router refuses it for good (a wrong
/// `cluster.secret`, a `comet.id` another comet holds).
pub async fn run_comet(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let tls = load_tls(&config)?;
    let security = LinkSecurity {
        secret: config.cluster.secret.clone(),
        tls: link_pems(&config.cluster)?.map(|pems| {
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pems.ca))
                .identity(Identity::from_pem(&pems.cert, &pems.key))
        }),
        incarnation: fastrand::u64(1..),
        message_limit: grpc::message_limit(&config.limits),
    };
    let (fatal, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let links: Vec<Arc<dyn RouterLink>> = config
        .comet
        .router_rpc
        .iter()
        .map(|addr| {
            Arc::new(GrpcRouterLink::new(addr, security.clone(), fatal.clone()))
                as Arc<dyn RouterLink>
        })
        .collect();
    if links.is_empty() {
        return Err(StartError::Unsupported(
            "comet.router_rpc is empty: a comet needs at least one router".into(),
        ));
    }
    let settings = CometSettings::from_config(&config);
    let comet = Comet::bind(settings, links, metrics.clone(), tls).await?;
    let terminals = comet.local_addrs();
    let (http_listener, http_bound) = listen(config.comet.http_addr, "comet.http_addr").await?;
    comet.start().await;
    tracing::info!(%terminals, http = %http_bound, "galopush comet ready");
    println!("galopush ready {terminals} http={http_bound}");
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.cancel();
    });
    let routes = http::comet_routes(metrics.clone(), ApiToken::new(&config.api.token));
    let limits = HttpLimits::from_config(&config.limits);
    let served = http::serve(http_listener, routes, limits, metrics, stop.clone(), None);
    tokio::select! {
        () = served => Ok(()),
        Some(reason) = refused.recv() => {
            stop.cancel();
            Err(StartError::Link(reason))
        }
    }
}
