//! The two places a cluster node meets the rest of the gateway: the [`HubSink`] that applies
//! the shared log to the local hub, and the [`LeasedSink`] that sources publish through while
//! this node holds their lease.

use std::sync::Arc;

use bytes::Bytes;

use super::{ClusterNode, LeaseTicket, SequencedSink};
use crate::hub::{EventSink, Feed, Hub, PublishError};
use crate::market::{MarketEvent, SymbolUniverse, validate_event};

/// Applies sequenced events to the local hub: its fan-out, replay window and latest values are
/// the single-node ones, fed from the shared log instead of from local sources.
pub struct HubSink {
    hub: Arc<Hub>,
}

impl HubSink {
    pub fn new(hub: Arc<Hub>) -> HubSink {
        hub.follow_shared_log();
        HubSink { hub }
    }
}

impl SequencedSink for HubSink {
    fn reset(&self, feed: Feed, epoch: u64, next_seq: u64, initial: bool) {
        if !initial {
            tracing::warn!(
                feed = feed.name(),
                epoch,
                next_seq,
                "the shared log cannot continue this node's; clients get a reset"
            );
        }
        // Internal followers (the exchange, the bar writer) are told even on the first
        // synchronisation: they were following the placeholder log of a node not yet joined.
        self.hub.reset_feed(feed, epoch, next_seq, true);
    }

    fn seed_latest(&self, _epoch: u64, latest: Vec<(u64, Bytes)>) {
        self.hub.seed_latest(latest);
    }

    fn apply(&self, feed: Feed, _epoch: u64, seq: u64, json: Bytes) {
        match self.hub.apply_sequenced(seq, &json) {
            Ok(_) => {}
            // Shutdown sealed the hub at the head its streams were told; the rest of the
            // shared log is for the other nodes (and this one after its restart).
            Err(PublishError::ShuttingDown) => {}
            Err(error) => {
                // Only tickgate's publish script writes the log, so this is a bug or a foreign
                // writer; the event is skipped rather than stopping the feed.
                tracing::error!(feed = feed.name(), seq, %error, "could not apply a sequenced event");
            }
        }
    }

    fn cluster_health(&self, up: bool, reason: &str) {
        if up {
            self.hub
                .notify_status("cluster_ok", "connected to the cluster again");
        } else {
            self.hub.notify_status(
                "cluster_down",
                &format!("cluster unavailable ({reason}); the stream resumes when it is back"),
            );
        }
    }
}

/// Where a source publishes on a cluster node: checked here as the hub would (content), then
/// sequenced by the publish script, which also checks time order and, for a source running
/// under a lease, that the lease is still this node's. Never waits on Redis: events are
/// queued in order for the node's publisher.
pub struct LeasedSink {
    node: ClusterNode,
    /// `None` for what publishes from every node without a lease (the publish API).
    ticket: Option<LeaseTicket>,
    universe: SymbolUniverse,
    /// The local hub: once it is sealed (shutdown), this node publishes nothing more.
    local: Arc<dyn EventSink>,
}

impl LeasedSink {
    pub fn new(
        node: ClusterNode,
        ticket: LeaseTicket,
        universe: SymbolUniverse,
        local: Arc<dyn EventSink>,
    ) -> LeasedSink {
        LeasedSink {
            node,
            ticket: Some(ticket),
            universe,
            local,
        }
    }

    /// A sink for publishers that need no lease (they run on every node).
    pub fn unleased(
        node: ClusterNode,
        universe: SymbolUniverse,
        local: Arc<dyn EventSink>,
    ) -> LeasedSink {
        LeasedSink {
            node,
            ticket: None,
            universe,
            local,
        }
    }
}

impl EventSink for LeasedSink {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        validate_event(&event, &self.universe)?;
        if self.local.is_sealed() {
            return Err(PublishError::ShuttingDown);
        }
        if self.ticket.as_ref().is_some_and(LeaseTicket::is_lost) {
            return Err(crate::cluster::ClusterPublishError::Fenced.into());
        }
        self.node.submit(&event, self.ticket.as_ref())?;
        Ok(())
    }

    fn is_sealed(&self) -> bool {
        self.local.is_sealed()
    }
}
