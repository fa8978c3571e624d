//! The exchange's intake of market data: a subscriber of the hub's market feed (trades, quotes
//! and statuses of every symbol) that parses each event into the exchange's mailbox, never
//! blocking the hub, and subscribes again if the hub ever drops it as slow.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{MarketInput, Shared};
use crate::hub::{Delivery, Feed, Filter, Hub, SubscriberQueue, SymbolFilter};
use crate::market::{EventKind, MarketEvent};

/// Follows the hub's market feed (trades, quotes, statuses of every symbol) into the mailbox.
/// Never blocks the hub: it only parses and conflates. If the hub ever drops this subscriber
/// as slow, it subscribes again.
pub(super) async fn ingest(
    hub: Arc<Hub>,
    mut queue: Arc<SubscriberQueue>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut buffer = VecDeque::new();
    'subscription: loop {
        loop {
            queue.drain_into(&mut buffer);
            for delivery in buffer.drain(..) {
                match delivery {
                    Delivery::Event(entry) => {
                        match serde_json::from_slice::<MarketEvent>(&entry.json) {
                            Ok(event) => {
                                if let Some(input) = MarketInput::from_event(&event) {
                                    shared.mailbox.push(input);
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "exchange could not read a market event");
                            }
                        }
                    }
                    Delivery::Heartbeat => {}
                    Delivery::Close(crate::hub::CloseReason::Shutdown) => {
                        queue.mark_gone();
                        return;
                    }
                    Delivery::Close(crate::hub::CloseReason::SlowClient) => {
                        tracing::warn!("exchange fell behind the market feed; resubscribing");
                        queue = subscribe_market(&hub);
                        continue 'subscription;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    queue.mark_gone();
                    return;
                }
                _ = queue.notified() => {}
            }
        }
    }
}

/// Registers a queue for trades, quotes and statuses of every symbol.
pub(super) fn subscribe_market(hub: &Hub) -> Arc<SubscriberQueue> {
    let filter = Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Trade.bit() | EventKind::Quote.bit() | EventKind::Status.bit(),
    };
    let queue = hub.new_queue();
    hub.subscribe(Feed::Market, filter, None, false, &queue);
    queue
}
