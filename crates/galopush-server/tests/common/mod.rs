//! What the router-level tests share: a bus that takes every outbound message, a logged-in
//! record, and a router in business mode over a test's store with the test's comet joined.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use galopush_server::bus::{PublishError, Publisher};
use galopush_server::config::{AuthMode, TopicsConfig};
use galopush_server::link::{CometInfo, CometLink};
use galopush_server::metrics::Metrics;
use galopush_server::router::{CometIdx, Router, RouterSettings};
use galopush_server::store::{LoginRecord, Store};

/// A bus whose outbound side takes everything at once.
pub struct NoBus;

#[async_trait]
impl Publisher for NoBus {
    async fn publish(&self, _topic: &str, _json: Bytes) -> Result<(), PublishError> {
        Ok(())
    }
}

/// A login record with `code` and `device_token`, logged in.
pub fn logged_in(code: &str, device_token: &str) -> LoginRecord {
    LoginRecord {
        code: code.into(),
        device_token: device_token.into(),
        login: true,
    }
}

/// A router in business mode over `store`, with `comet` joined as its only comet.
pub fn router_with(store: Arc<dyn Store>, comet: Arc<dyn CometLink>) -> (Arc<Router>, CometIdx) {
    let settings = RouterSettings {
        auth_mode: AuthMode::Business,
        topics: TopicsConfig::default(),
    };
    let router = Router::new(settings, store, Arc::new(NoBus), Arc::new(Metrics::new()));
    let info = CometInfo {
        id: "c".into(),
        tcp: "127.0.0.1:1".into(),
        ws: "127.0.0.1:2".into(),
        tls: None,
        wss: None,
    };
    let idx = router.join(info, comet, 1).expect("the only comet");
    (router, idx)
}
