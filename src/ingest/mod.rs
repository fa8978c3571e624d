//! Ingestion: the sources that feed the hub (the embedded simulator by default) and the
//! registry of their health, which `/readyz`, metrics and status events report. Every source
//! publishes through [`source::SourceContext`]; nothing here knows the HTTP layer.

pub mod config;
pub mod finnhub;
pub mod poller;
pub mod replay;
pub mod sim;
pub mod source;
pub mod yahoo;

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use tokio_util::sync::CancellationToken;

use crate::ingest::source::Publisher;
use crate::market::SymbolUniverse;
use crate::metrics::Metrics;

/// Health of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SourceHealth {
    Starting,
    Up,
    Degraded {
        reason: String,
    },
    Down {
        reason: String,
    },
    /// Cluster mode: another node holds this source's lease and runs it; this node takes it
    /// over if that node goes away.
    Standby,
}

impl SourceHealth {
    pub fn is_serving(&self) -> bool {
        matches!(
            self,
            SourceHealth::Up | SourceHealth::Degraded { .. } | SourceHealth::Standby
        )
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

/// Starts every configured source as its own task, each publishing through its own context.
pub fn spawn_sources(
    simulator: &sim::SimulatorSettings,
    sources: &config::SourcesSettings,
    publisher: &Publisher,
    universe: &SymbolUniverse,
    shutdown: &CancellationToken,
) {
    if simulator.enabled {
        let simulator = simulator.clone();
        let symbols = universe.names().to_vec();
        publisher.spawn_source(sim::SOURCE_NAME, shutdown, move |context, stop| {
            let (simulator, symbols) = (simulator.clone(), symbols.clone());
            Box::pin(async move {
                // A node taking the simulator over continues from the last prices and trade
                // id in the shared log, not from its seed (nothing to read on a single node).
                let resume = sim::Resume::from_latest(context.latest_published().await);
                sim::run_resumed(simulator, symbols, resume, context, stop).await;
            })
        });
    }
    poller::spawn_upstream_sources(sources, simulator.enabled, publisher, universe, shutdown);
}
