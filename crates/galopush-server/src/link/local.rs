//! The in-process link of `galopush standalone`: the comet calls the router directly and the
//! router hands commands straight to the comet.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

use super::{CometInfo, CometLink, ImUp, LinkError, Registration, RouterLink, SessionInfo, Settle};
use crate::router::{CometIdx, Router};

/// A comet's link to a router in the same process.
pub struct LocalRouterLink {
    router: Arc<Router>,
    comet: OnceLock<CometIdx>,
}

impl LocalRouterLink {
    pub fn new(router: Arc<Router>) -> Arc<LocalRouterLink> {
        Arc::new(LocalRouterLink {
            router,
            comet: OnceLock::new(),
        })
    }

    fn comet(&self) -> Result<CometIdx, LinkError> {
        self.comet
            .get()
            .copied()
            .ok_or_else(|| LinkError::Unavailable("comet has not joined the router".into()))
    }
}

#[async_trait]
impl RouterLink for LocalRouterLink {
    async fn join(&self, info: CometInfo, comet: Arc<dyn CometLink>) -> Result<(), LinkError> {
        // One comet in the process, joined once.
        let idx = self
            .router
            .join(info, comet, 0)
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        self.comet
            .set(idx)
            .map_err(|_| LinkError::Unavailable("comet joined twice".into()))
    }

    fn is_joined(&self) -> bool {
        self.comet.get().is_some()
    }

    /// The in-process join is done before the comet takes terminals: nothing to wait for.
    async fn wait_joined(&self, _within: Duration) -> bool {
        self.is_joined()
    }

    async fn register(&self, session: SessionInfo) -> Result<Registration, LinkError> {
        self.router.register(self.comet()?, session).await
    }

    async fn opened(&self, session: SessionInfo) -> Result<(), LinkError> {
        self.router.opened(self.comet()?, &session);
        Ok(())
    }

    fn closed(&self, session: SessionInfo) {
        if let Ok(comet) = self.comet() {
            self.router.closed(comet, &session);
        }
    }

    fn settled(&self, settle: Settle) {
        if let Ok(comet) = self.comet() {
            self.router.settled(comet, settle);
        }
    }

    async fn im_up(&self, im: ImUp) -> Result<bool, LinkError> {
        Ok(self.router.im_up(self.comet()?, im).await)
    }
}
