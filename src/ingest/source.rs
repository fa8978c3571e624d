//! The one seam between sources and the hub: every source (the simulator, the pollers, file
//! replay, `POST /v1/publish`) publishes through a [`SourceContext`] made by the [`Publisher`].
//!
//! Invariants this module keeps:
//! - Nothing in `ingest/` reaches the hub, the registry or metrics except through here, so
//!   swapping what stands behind [`Publisher`] (the local hub, or on a cluster node the shared
//!   log in Redis under the source's lease) changes no source.
//! - On a cluster node a source runs only while this node holds its lease
//!   ([`Publisher::spawn_source`]); its context then publishes through the publish script with
//!   the lease's fencing value, and the source is stopped when the lease is lost.
//! - Validation is the hub's: a context forwards each event once and counts the hub's verdict
//!   (`tickgate_ingest_accepted_total`, `tickgate_ingest_rejected_total` by reason).
//! - Publishing never waits: it takes short, non-async locks only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterNode, LeasedSink};
use crate::hub::{EventSink, PublishError};
use crate::ingest::{SourceHealth, SourceRegistry};
use crate::market::{MarketEvent, Status, SymbolUniverse};
use crate::metrics::{Metrics, escape_label};

/// Makes the [`SourceContext`] of each source. Holds the one sink all of them publish into.
#[derive(Clone)]
pub struct Publisher {
    sink: Arc<dyn EventSink>,
    registry: SourceRegistry,
    metrics: Arc<Metrics>,
    /// Cluster mode: the node whose leases decide where each source runs.
    cluster: Option<(ClusterNode, SymbolUniverse)>,
}

/// What runs one source: given its context and when to stop, the source's future.
pub type SourceRun = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Publisher {
    pub fn new(sink: Arc<dyn EventSink>, registry: SourceRegistry, metrics: Arc<Metrics>) -> Self {
        Publisher {
            sink,
            registry,
            metrics,
            cluster: None,
        }
    }

    /// Cluster mode: sources run under leases of `node` and publish through the shared log
    /// (checked against `universe` first, as the hub would).
    pub fn with_cluster(mut self, node: ClusterNode, universe: SymbolUniverse) -> Publisher {
        self.cluster = Some((node, universe));
        self
    }

    /// Starts the source `name`: on a single node once, publishing into the hub; on a cluster
    /// node whenever it holds the source's lease, publishing under it, stopped when the lease
    /// is lost (another node runs it then; this one reports it on `standby`).
    pub fn spawn_source<F>(&self, name: &str, shutdown: &CancellationToken, mut run: F)
    where
        F: FnMut(SourceContext, CancellationToken) -> SourceRun + Send + 'static,
    {
        let Some((node, universe)) = self.cluster.clone() else {
            tokio::spawn(run(self.context(name), shutdown.clone()));
            return;
        };
        let (registry, metrics) = (self.registry.clone(), Arc::clone(&self.metrics));
        let local = Arc::clone(&self.sink);
        let name = name.to_owned();
        registry.report(&name, SourceHealth::Standby);
        tokio::spawn(crate::cluster::run_leased(
            node.clone(),
            name.clone(),
            shutdown.clone(),
            move |ticket| {
                let sink = LeasedSink::new(
                    node.clone(),
                    ticket.clone(),
                    universe.clone(),
                    Arc::clone(&local),
                );
                let mut context = SourceContext::new(
                    &name,
                    Arc::new(sink),
                    registry.clone(),
                    Arc::clone(&metrics),
                );
                context.cluster = Some(node.clone());
                let running = run(context, ticket.lost().clone());
                let (registry, name) = (registry.clone(), name.clone());
                async move {
                    running.await;
                    registry.report(&name, SourceHealth::Standby);
                }
            },
        ));
    }

    /// The context of the source called `name`. On a cluster node it publishes through the
    /// shared log without a lease: for what runs on every node (the publish API); sources
    /// that must run once use [`Publisher::spawn_source`].
    pub fn context(&self, name: &str) -> SourceContext {
        let Some((node, universe)) = &self.cluster else {
            return SourceContext::new(
                name,
                Arc::clone(&self.sink),
                self.registry.clone(),
                Arc::clone(&self.metrics),
            );
        };
        let sink = LeasedSink::unleased(node.clone(), universe.clone(), Arc::clone(&self.sink));
        let mut context = SourceContext::new(
            name,
            Arc::new(sink),
            self.registry.clone(),
            Arc::clone(&self.metrics),
        );
        context.cluster = Some(node.clone());
        context.universe = Some(universe.clone());
        context
    }

    /// Health of every source, as `/readyz` reports it.
    pub fn registry(&self) -> &SourceRegistry {
        &self.registry
    }
}

/// One source's handles to the outside: where its events go, where its health is reported,
/// and its metrics. Cheap to clone; the clones share the owed recovery announcement.
#[derive(Clone)]
pub struct SourceContext {
    pub name: String,
    /// Private, so a source can reach the hub only through [`SourceContext::publish`].
    sink: Arc<dyn EventSink>,
    registry: SourceRegistry,
    pub metrics: Arc<Metrics>,
    /// `source="<name>"`, rendered once rather than per published event.
    labels: Arc<str>,
    /// Symbols told `upstream_down` and not yet told `upstream_ok`. Shared by the clones a
    /// poller loop and its round hold, so recovery is announced before the first new price.
    owed_recovery: Arc<parking_lot::Mutex<Option<Vec<String>>>>,
    /// Cluster mode: where [`SourceContext::latest_published`] reads the shared log.
    cluster: Option<ClusterNode>,
    /// Cluster mode, unleased contexts: what [`SourceContext::publish_confirmed`] checks
    /// events against before sending them.
    universe: Option<SymbolUniverse>,
}

impl SourceContext {
    pub fn new(
        name: impl Into<String>,
        sink: Arc<dyn EventSink>,
        registry: SourceRegistry,
        metrics: Arc<Metrics>,
    ) -> SourceContext {
        let name = name.into();
        SourceContext {
            labels: format!("source=\"{}\"", escape_label(&name)).into(),
            name,
            sink,
            registry,
            metrics,
            owed_recovery: Arc::default(),
            cluster: None,
            universe: None,
        }
    }

    /// Publishes one event and, on a cluster node, waits for the shared log's answer (the
    /// publish API reports each item's fate). The same as [`SourceContext::publish`] on a
    /// single node, where the answer is immediate.
    pub async fn publish_confirmed(&self, event: MarketEvent) -> Result<(), PublishError> {
        let (Some(node), Some(universe)) = (&self.cluster, &self.universe) else {
            return self.publish(event);
        };
        let outcome = match crate::market::validate_event(&event, universe) {
            // A sealed hub (shutdown) takes nothing more, from here or from the shared log.
            Ok(()) if self.sink.is_sealed() => Err(PublishError::ShuttingDown),
            Ok(()) => node
                .publish(&event, None)
                .await
                .map(|_| ())
                .map_err(Into::into),
            Err(invalid) => Err(PublishError::from(invalid)),
        };
        self.count(&outcome);
        outcome
    }

    /// Counts an item as accepted or refused, with the refusal's reason.
    fn count(&self, outcome: &Result<(), PublishError>) {
        match outcome {
            Ok(()) => self.metrics.add_counter(
                "tickgate_ingest_accepted_total",
                "Items a source published into the hub.",
                &self.labels,
                1.0,
            ),
            Err(error) => {
                self.reject(error.reason_label());
                tracing::debug!(source = %self.name, %error, "event refused");
            }
        }
    }

    /// The latest trade, quote and bar per symbol as last published by anyone, read back from
    /// the shared log (cluster mode: what a source taking over continues from). Empty on a
    /// single node, where a source starts from its own configuration as always.
    pub async fn latest_published(&self) -> Vec<MarketEvent> {
        let Some(node) = &self.cluster else {
            return Vec::new();
        };
        match node.latest_values().await {
            Ok(values) => values
                .iter()
                .filter_map(|(_, json)| serde_json::from_slice(json).ok())
                .collect(),
            Err(error) => {
                tracing::warn!(source = %self.name, %error, "could not read the latest values back");
                Vec::new()
            }
        }
    }

    /// `source="<name>"`, the label set of this source's metrics.
    pub fn labels(&self) -> &str {
        &self.labels
    }

    /// Counts one dropped item of this source.
    pub fn reject(&self, reason: &str) {
        self.metrics.ingest_rejected(&self.name, reason);
    }

    /// Publishes one event; a refusal is counted with the hub's reason and never retried.
    pub fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        if !matches!(event, MarketEvent::Status(_)) {
            self.announce_recovery();
        }
        let outcome = self.sink.publish(event);
        self.count(&outcome);
        outcome
    }

    pub fn report(&self, health: SourceHealth) {
        self.registry.report(&self.name, health);
    }

    /// Tells users of `symbols` that the source is down; [`announce_recovery`] later says it
    /// is back.
    ///
    /// [`announce_recovery`]: SourceContext::announce_recovery
    pub fn announce_down(&self, symbols: &[String], reason: &str) {
        self.announce(symbols, "upstream_down", reason);
        *self.owed_recovery.lock() = Some(symbols.to_vec());
    }

    /// Sends `upstream_ok` to the symbols told `upstream_down`, once.
    pub fn announce_recovery(&self) {
        let owed = self.owed_recovery.lock().take();
        if let Some(symbols) = owed {
            self.announce(&symbols, "upstream_ok", "recovered");
        }
    }

    /// Tells users of each symbol that this source went down or recovered.
    fn announce(&self, symbols: &[String], code: &str, reason: &str) {
        let message = if reason.is_empty() {
            self.name.clone()
        } else {
            format!("{}: {reason}", self.name)
        };
        for symbol in symbols {
            let status = MarketEvent::Status(Status {
                symbol: symbol.clone(),
                code: code.to_owned(),
                message: message.clone(),
                time: Utc::now(),
            });
            // A refusal is already counted by `publish`; there is nothing else to do with it.
            let _ = self.publish(status);
        }
    }
}
