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

/// Starts every configured source as its own task.
pub fn spawn_sources(state: &crate::server::AppState) {
    let settings = &state.settings;
    if settings.simulator.enabled {
        let simulator = settings.simulator.clone();
        let symbols = state.universe().names().to_vec();
        let registry = state.sources.clone();
        let metrics = Arc::clone(&state.metrics);
        let hub = Arc::clone(&state.hub);
        spawn_source(state, sim::SOURCE_NAME, move |sink, stop| {
            // In a cluster a node taking the simulator over continues from the last prices
            // and trade id in the shared log (its hub follows it), not from its seed.
            let resume = sim::Resume::from_latest(&hub.latest(None));
            Box::pin(sim::run_resumed(
                simulator.clone(),
                symbols.clone(),
                resume,
                sink,
                registry.clone(),
                Arc::clone(&metrics),
                stop,
            ))
        });
    }
    poller::spawn_upstream_sources(state);
}

/// What runs one source: given where to publish and when to stop, the source's future.
pub type SourceFactory = Box<
    dyn FnMut(
            Arc<dyn crate::hub::EventSink>,
            tokio_util::sync::CancellationToken,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// Starts the source `name`: on a single node once, publishing into the hub; in a cluster
/// whenever this node holds the source's lease, publishing through the shared log under it,
/// and stopped when the lease is lost (another node then runs it).
pub fn spawn_source<F>(state: &crate::server::AppState, name: &str, factory: F)
where
    F: FnMut(
            Arc<dyn crate::hub::EventSink>,
            tokio_util::sync::CancellationToken,
        ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + 'static,
{
    let mut factory: SourceFactory = Box::new(factory);
    let Some(node) = state.cluster.clone() else {
        let sink: Arc<dyn crate::hub::EventSink> = state.hub.clone();
        tokio::spawn(factory(sink, state.shutdown.clone()));
        return;
    };
    let registry = state.sources.clone();
    let universe = state.universe().clone();
    let name = name.to_owned();
    registry.report(&name, SourceHealth::Standby);
    tokio::spawn(crate::cluster::run_leased(
        node.clone(),
        name.clone(),
        state.shutdown.clone(),
        move |ticket| {
            let sink: Arc<dyn crate::hub::EventSink> = Arc::new(crate::cluster::LeasedSink::new(
                node.clone(),
                ticket.clone(),
                universe.clone(),
            ));
            let run = factory(sink, ticket.lost().clone());
            let registry = registry.clone();
            let name = name.clone();
            async move {
                run.await;
                registry.report(&name, SourceHealth::Standby);
            }
        },
    ));
}
