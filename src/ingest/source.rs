//! The one seam between sources and the hub: every source (the simulator, the pollers, file
//! replay, `POST /v1/publish`) publishes through a [`SourceContext`] made by the [`Publisher`].
//!
//! Invariants this module keeps:
//! - Nothing in `ingest/` reaches the hub, the registry or metrics except through here, so
//!   swapping what stands behind [`Publisher`] (today the local hub; with a cluster, a
//!   Redis-backed publisher) changes no source.
//! - Validation is the hub's: a context forwards each event once and counts the hub's verdict
//!   (`tickgate_ingest_accepted_total`, `tickgate_ingest_rejected_total` by reason).
//! - Publishing never waits: it takes short, non-async locks only.

use std::sync::Arc;

use chrono::Utc;

use crate::hub::{EventSink, PublishError};
use crate::ingest::{SourceHealth, SourceRegistry};
use crate::market::{MarketEvent, Status};
use crate::metrics::{Metrics, escape_label};

/// Makes the [`SourceContext`] of each source. Holds the one sink all of them publish into.
#[derive(Clone)]
pub struct Publisher {
    sink: Arc<dyn EventSink>,
    registry: SourceRegistry,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn new(sink: Arc<dyn EventSink>, registry: SourceRegistry, metrics: Arc<Metrics>) -> Self {
        Publisher {
            sink,
            registry,
            metrics,
        }
    }

    /// The context of the source called `name`.
    pub fn context(&self, name: &str) -> SourceContext {
        SourceContext::new(
            name,
            Arc::clone(&self.sink),
            self.registry.clone(),
            Arc::clone(&self.metrics),
        )
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
        match self.sink.publish(event) {
            Ok(_) => {
                self.metrics.add_counter(
                    "tickgate_ingest_accepted_total",
                    "Items a source published into the hub.",
                    &self.labels,
                    1.0,
                );
                Ok(())
            }
            Err(error) => {
                let reason = match &error {
                    PublishError::Invalid(invalid) => invalid.reason_label(),
                    PublishError::Encode(_) => "encode",
                };
                self.reject(reason);
                tracing::debug!(source = %self.name, %error, "event refused by the hub");
                Err(error)
            }
        }
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
