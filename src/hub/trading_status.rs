//! Trading statuses for the WebSocket sessions that trade: `trading_halted`,
//! `trading_resumed`, `trading_unavailable` and `trading_available` (all `S` = `*`) reach
//! every session with a trading subscription (trade updates, portfolio or order books), also
//! one that follows no market data, and each session once, whatever else it follows.

use std::collections::HashSet;
use std::sync::Arc;

use super::Hub;
use super::entry::Entry;
use super::queue::SubscriberQueue;
use crate::market::{MarketEvent, SymbolId};

/// The status codes that say whether trading works.
const TRADING_STATUS_CODES: [&str; 4] = [
    "trading_halted",
    "trading_resumed",
    "trading_unavailable",
    "trading_available",
];

/// Whether a `*` status with this code concerns trading.
pub(super) fn is_trading_status(code: &str) -> bool {
    TRADING_STATUS_CODES.contains(&code)
}

/// Whether a published event is a trading status (`S` = `*`, so no symbol id).
pub(super) fn is_trading_event(event: &MarketEvent, symbol: Option<SymbolId>) -> bool {
    match event {
        MarketEvent::Status(status) if symbol.is_none() => is_trading_status(&status.code),
        _ => false,
    }
}

impl Hub {
    /// A session gained a trading subscription: from now on its queue gets every trading
    /// status (once, even if it also follows market data). Registering twice is harmless.
    pub fn listen_trading(&self, queue: &Arc<SubscriberQueue>) {
        let mut listeners = self.trading_listeners.lock();
        if !listeners.iter().any(|known| Arc::ptr_eq(known, queue)) {
            listeners.push(Arc::clone(queue));
        }
    }

    /// The session dropped its last trading subscription, or ended.
    pub fn unlisten_trading(&self, queue: &Arc<SubscriberQueue>) {
        self.trading_listeners
            .lock()
            .retain(|known| !Arc::ptr_eq(known, queue));
    }

    /// Pushes a trading status notice to every listening queue not in `told` (those already
    /// got the status on a feed), and forgets queues whose session has ended.
    pub(super) fn tell_trading_listeners(
        &self,
        notice: &Arc<Entry>,
        told: &mut HashSet<*const SubscriberQueue>,
    ) {
        self.trading_listeners.lock().retain(|queue| {
            if queue.is_gone() {
                return false;
            }
            if told.insert(Arc::as_ptr(queue)) {
                queue.push_event(notice, &self.metrics);
            }
            true
        });
    }
}
