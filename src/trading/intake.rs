//! The exchange's market-data intake: [`MarketInput`] (a hub event in exact decimals), the
//! [`Mailbox`] that keeps only the newest trade and quote per symbol (and every session
//! status, bounded), and the task that follows the hub's market feed into it. The hub never
//! waits on the exchange: when the exchange lags, the newest price wins.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::{Delivery, Feed, Filter, Hub, SubscriberQueue, SymbolFilter};
use crate::market::{EventKind, MarketEvent};

/// A market input for the engine, already in exact decimals.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketInput {
    Trade {
        symbol: String,
        price: Decimal,
        size: Decimal,
    },
    Quote {
        symbol: String,
        bid: Decimal,
        ask: Decimal,
        bid_size: Decimal,
        ask_size: Decimal,
    },
    /// A session status; `market_closed` expires day orders.
    Status { code: String },
}

impl MarketInput {
    /// Converts a hub event; `None` for kinds the exchange ignores or unusable numbers.
    pub fn from_event(event: &MarketEvent) -> Option<MarketInput> {
        // Prices travel as floats on the market feed; the shortest decimal that round-trips is
        // the producer's intended price (126.54, not 126.5399999…).
        let decimal = |value: f64| Decimal::from_f64(value).map(|d| d.round_dp(8).normalize());
        match event {
            MarketEvent::Trade(trade) => Some(MarketInput::Trade {
                symbol: trade.symbol.clone(),
                price: decimal(trade.price)?,
                size: decimal(trade.size)?,
            }),
            MarketEvent::Quote(quote) => Some(MarketInput::Quote {
                symbol: quote.symbol.clone(),
                bid: decimal(quote.bid_price)?,
                ask: decimal(quote.ask_price)?,
                bid_size: decimal(quote.bid_size)?,
                ask_size: decimal(quote.ask_size)?,
            }),
            MarketEvent::Status(status) => Some(MarketInput::Status {
                code: status.code.clone(),
            }),
            _ => None,
        }
    }

    fn slot(&self) -> Option<(&str, u8)> {
        match self {
            MarketInput::Trade { symbol, .. } => Some((symbol, 0)),
            MarketInput::Quote { symbol, .. } => Some((symbol, 1)),
            MarketInput::Status { .. } => None,
        }
    }
}

/// Market inputs waiting for the actor. Trades and quotes conflate per symbol; statuses are
/// kept (bounded) because a close must not be lost.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    pending: Mutex<VecDeque<MarketInput>>,
    pub(super) notify: Notify,
}

/// Statuses kept while the exchange lags; older ones are dropped first.
const MAX_PENDING_STATUSES: usize = 64;

impl Mailbox {
    pub(super) fn push(&self, input: MarketInput) {
        let mut pending = self.pending.lock();
        match input.slot() {
            Some(slot) => pending.retain(|queued| queued.slot() != Some(slot)),
            None => {
                let statuses = pending.iter().filter(|q| q.slot().is_none()).count();
                if statuses >= MAX_PENDING_STATUSES
                    && let Some(index) = pending.iter().position(|q| q.slot().is_none())
                {
                    pending.remove(index);
                }
            }
        }
        pending.push_back(input);
        drop(pending);
        self.notify.notify_one();
    }

    pub(super) fn take(&self) -> VecDeque<MarketInput> {
        std::mem::take(&mut *self.pending.lock())
    }
}

/// Follows the hub's market feed (trades, quotes, statuses of every symbol) into the mailbox.
/// Never blocks the hub: it only parses and conflates. If the hub ever drops this subscriber
/// as slow, it subscribes again.
pub(super) async fn ingest(
    hub: Arc<Hub>,
    mut queue: Arc<SubscriberQueue>,
    mailbox: Arc<Mailbox>,
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
                                    mailbox.push(input);
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
                    Delivery::Close(crate::hub::CloseReason::Reset) => {
                        tracing::info!("the market feed was reset; following the new log");
                        queue = subscribe_market(&hub);
                        continue 'subscription;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use rust_decimal_macros::dec;

    #[test]
    fn the_mailbox_keeps_the_newest_trade_and_quote_per_symbol_and_every_status() {
        let mailbox = Mailbox::default();
        let trade = |price: Decimal| MarketInput::Trade {
            symbol: "AAPL".into(),
            price,
            size: dec!(1),
        };
        mailbox.push(trade(dec!(1)));
        mailbox.push(MarketInput::Status {
            code: "market_closed".into(),
        });
        mailbox.push(trade(dec!(2)));
        mailbox.push(MarketInput::Trade {
            symbol: "MSFT".into(),
            price: dec!(3),
            size: dec!(1),
        });
        let pending: Vec<MarketInput> = mailbox.take().into_iter().collect();
        assert_eq!(pending.len(), 3);
        assert!(matches!(pending[0], MarketInput::Status { .. }));
        assert_eq!(pending[1], trade(dec!(2)));
        assert!(mailbox.take().is_empty());
    }

    #[test]
    fn float_market_prices_become_the_decimals_the_producer_meant() {
        let event = MarketEvent::Trade(crate::market::Trade {
            symbol: "AAPL".into(),
            id: 1,
            venue: String::new(),
            price: 126.54,
            size: 100.0,
            time: Utc::now(),
            conditions: vec![],
        });
        assert_eq!(
            MarketInput::from_event(&event),
            Some(MarketInput::Trade {
                symbol: "AAPL".into(),
                price: dec!(126.54),
                size: dec!(100),
            })
        );
    }
}
