//! Ingestion: the sources that feed the hub (the embedded simulator by default) and the
//! registry of their health, which `/readyz`, metrics and status events report.

pub mod config;
pub mod finnhub;
pub mod poller;
pub mod replay;
pub mod sim;
pub mod yahoo;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::Metrics;

/// Health of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SourceHealth {
    Starting,
    Up,
    Degraded { reason: String },
    Down { reason: String },
}

impl SourceHealth {
    pub fn is_serving(&self) -> bool {
        matches!(self, SourceHealth::Up | SourceHealth::Degraded { .. })
    }
}

/// Health of every configured source, by name.
#[derive(Debug, Clone, Default)]
pub struct SourceRegistry {
    sources: Arc<Mutex<BTreeMap<String, SourceHealth>>>,
    metrics: Arc<Metrics>,
}

impl SourceRegistry {
    pub fn new(metrics: Arc<Metrics>) -> SourceRegistry {
        SourceRegistry {
            sources: Arc::default(),
            metrics,
        }
    }

    /// Records a source's state and mirrors it into `tickgate_source_up`.
    pub fn report(&self, name: &str, health: SourceHealth) {
        let up = if health.is_serving() { 1.0 } else { 0.0 };
        self.metrics.set_gauge(
            "tickgate_source_up",
            "1 when a source is delivering data (up or degraded), 0 otherwise.",
            &format!("source=\"{}\"", crate::metrics::escape_label(name)),
            up,
        );
        self.sources.lock().insert(name.to_owned(), health);
    }

    pub fn snapshot(&self) -> BTreeMap<String, SourceHealth> {
        self.sources.lock().clone()
    }

    /// Ready when there is at least one source and none is down or still starting.
    pub fn all_serving(&self) -> bool {
        let sources = self.sources.lock();
        sources.values().all(SourceHealth::is_serving)
    }
}

/// Starts every configured source as its own task.
pub fn spawn_sources(state: &crate::server::AppState) {
    let settings = &state.settings;
    if settings.simulator.enabled {
        let sink: Arc<dyn crate::hub::EventSink> = state.hub.clone();
        tokio::spawn(sim::run(
            settings.simulator.clone(),
            state.universe().names().to_vec(),
            sink,
            state.sources.clone(),
            Arc::clone(&state.metrics),
            state.shutdown.clone(),
        ));
    }
    poller::spawn_upstream_sources(state);
}
