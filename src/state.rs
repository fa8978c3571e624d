//! `AppState`: the handles request handlers share. It sits below `routes` and `transport`
//! and above the domain (`hub`, `ingest`, `trading`, `store`, `auth`), none of which imports
//! it; `startup` builds it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::AuthService;
use crate::auth::api_keys::ApiKeys;
use crate::cluster::ClusterNode;
use crate::hub::Hub;
use crate::ingest::SourceRegistry;
use crate::ingest::source::Publisher;
use crate::market::SymbolUniverse;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Store;
use crate::trading::api::TradingApi;

/// Everything request handlers share. Cloned into each worker; all fields are cheap handles.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    /// Health of every source, for `/readyz`.
    pub sources: SourceRegistry,
    /// Where every source publishes, `POST /v1/publish` included (see `ingest::source`).
    pub publisher: Publisher,
    pub shutdown: CancellationToken,
    /// The simulated exchange.
    pub trading: Arc<dyn TradingApi>,
    /// Durable storage; `None` when `store.enabled` is false.
    pub store: Option<Store>,
    pub auth: Arc<AuthService>,
    /// This node's link to the cluster; `None` on a single node (`cluster.redis_url` empty).
    pub cluster: Option<ClusterNode>,
    /// API key pairs (Alpaca's key id and secret; docs/alpaca.md).
    pub api_keys: Arc<ApiKeys>,
    /// What every WebSocket session shares (services and limits), built once and shared.
    pub ws_sessions: Arc<crate::transport::ws::session::SessionShared>,
}

impl AppState {
    pub fn universe(&self) -> &SymbolUniverse {
        self.hub.universe()
    }
}
