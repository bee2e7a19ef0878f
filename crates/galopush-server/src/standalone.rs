//! `galopush standalone`: one router, one comet, the configured bus and store in one process,
//! linked in-process.

use std::sync::Arc;

use crate::bus::Gate;
use crate::comet::{Comet, CometSettings};
use crate::config::Config;
use crate::link::RouterLink;
use crate::link::local::LocalRouterLink;
use crate::metrics::Metrics;
use crate::start::{HttpListeners, StartError, load_tls, start_router};

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let tls = load_tls(&config)?;
    let parts = start_router(&config, metrics.clone()).await?;
    let link: Arc<dyn RouterLink> = LocalRouterLink::new(parts.router.clone());
    let settings = CometSettings::from_config(&config);
    let comet = Comet::bind(settings, vec![link], metrics, tls.clone()).await?;
    let terminals = comet.local_addrs();
    let (listeners, http, api) = HttpListeners::bind(&config, tls.as_ref()).await?;
    comet.start().await;
    let http_surface = parts.serve_bus(&config, Gate::opened()).await?;
    tracing::info!(%http, %api, %terminals, "galopush standalone ready");
    // A machine-readable line for scripts and tests that start the gateway on port 0.
    println!("galopush ready http={http} api={api} {terminals}");
    http_surface.serve(listeners, shutdown).await
}
