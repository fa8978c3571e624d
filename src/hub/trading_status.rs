//! Trading statuses for the WebSocket sessions that trade: `trading_halted`,
//! `trading_resumed`, `trading_unavailable` and `trading_available` (all `S` = `*`) reach
//! every session with a trading subscription (trade updates, portfolio or order books), also
//! one that follows no market data, and each session once, whatever else it follows.
//!
//! The hub remembers a halt and an outage while they last: a session that starts trading
//! meanwhile is told at once (`trading_halted`, `trading_unavailable`), then of their end like
//! every other session. The statuses and the registrations share one lock, so a session is
//! told of each change exactly once, either when it registers or when the change goes out.

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

/// The sessions that trade, and what they must be told when they start.
#[derive(Default)]
pub(super) struct TradingListeners {
    queues: Vec<Arc<SubscriberQueue>>,
    /// The `trading_halted` notice while trading is halted.
    halted: Option<Arc<Entry>>,
    /// The `trading_unavailable` notice while no exchange answers (a cluster node).
    unavailable: Option<Arc<Entry>>,
}

impl TradingListeners {
    /// Keeps a status in force for later sessions, or ends the one it ends.
    fn record(&mut self, code: &str, notice: &Arc<Entry>) {
        match code {
            "trading_halted" => self.halted = Some(Arc::clone(notice)),
            "trading_resumed" => self.halted = None,
            "trading_unavailable" => self.unavailable = Some(Arc::clone(notice)),
            "trading_available" => self.unavailable = None,
            _ => {}
        }
    }
}

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
    /// A session gained a trading subscription: it is told at once of a halt or an outage
    /// in force, and from now on its queue gets every trading status (once, even if it also
    /// follows market data). Registering twice is harmless.
    pub fn listen_trading(&self, queue: &Arc<SubscriberQueue>) {
        let mut listeners = self.trading_listeners.lock();
        if listeners
            .queues
            .iter()
            .any(|known| Arc::ptr_eq(known, queue))
        {
            return;
        }
        for notice in [&listeners.halted, &listeners.unavailable]
            .into_iter()
            .flatten()
        {
            queue.push_event(notice, &self.metrics);
        }
        listeners.queues.push(Arc::clone(queue));
    }

    /// The session dropped its last trading subscription, or ended.
    pub fn unlisten_trading(&self, queue: &Arc<SubscriberQueue>) {
        self.trading_listeners
            .lock()
            .queues
            .retain(|known| !Arc::ptr_eq(known, queue));
    }

    /// Pushes the trading status notice `code` to every listening queue not in `told` (those
    /// already got the status on a feed), remembers it for sessions that start trading later
    /// while it is in force, and forgets queues whose session has ended.
    pub(super) fn tell_trading_listeners(
        &self,
        code: &str,
        notice: &Arc<Entry>,
        told: &mut HashSet<*const SubscriberQueue>,
    ) {
        let mut listeners = self.trading_listeners.lock();
        listeners.record(code, notice);
        listeners.queues.retain(|queue| {
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
