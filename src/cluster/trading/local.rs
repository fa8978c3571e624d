//! The exchange's own node skips Redis: while this node holds the exchange's lease, its
//! sessions' commands go to the exchange's actor in-process instead of through the command
//! stream, the reply pub/sub and the listener (five Redis crossings and two JSON round trips
//! fewer per command; announcements still go out through the relay for every node, this one
//! included).
//!
//! Why exactly-once still holds (issue 16):
//! - The command keeps its id, and the actor stores its reply under that id in the same
//!   batch (one PostgreSQL transaction, with the fence) as its effects, as for a command from
//!   the stream: the same engine step, the same `seq`s, the same announcements.
//! - It never enters the stream, so nothing can deliver it a second time: no other exchange
//!   can take it over, and a requester that lost its node (its socket was on the exchange's
//!   node, which died) resumes with `client_order_id` on another node, which finds the order
//!   if its batch committed and nothing if it did not, as on a single node.
//! - A batch refused by the fence (the lease was taken over) committed nothing: the command
//!   is answered 50310002 at once, and the retry runs on the new exchange.
//! - When the outcome is unknown (the actor stopped with the command in hand, or no answer
//!   within the command timeout: a commit may still be in flight), the call waits until the
//!   command's deadline, as a requester of the stream waits for its reply, then answers from
//!   the stored reply if there is one, or 50310002. By then any successor has claimed the
//!   fence (within a lease's life and one renewal, well inside the timeout), so no batch of
//!   this exchange can still commit; 50310002 means "not executed", as it does for commands
//!   sent through the stream.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::super::lease::LeaseTicket;
use crate::store::TradingStore;
use crate::trading::ExchangeHandle;
use crate::trading::api::OrderError;
use crate::trading::command::{self, TradingCommand, TradingReply};

/// The exchange this node runs now, if any: set by the term once its exchange is running,
/// cleared when the term ends. Shared by the term and the node's [`super::RemoteExchange`].
#[derive(Default)]
pub(super) struct LocalSlot {
    current: Mutex<Option<LocalExchange>>,
}

/// One term's exchange, as the node's sessions reach it.
#[derive(Clone)]
pub(super) struct LocalExchange {
    pub(super) handle: ExchangeHandle,
    pub(super) ticket: LeaseTicket,
}

impl LocalSlot {
    /// The running exchange of this node, unless its lease is lost.
    pub(super) fn current(&self) -> Option<LocalExchange> {
        let current = self.current.lock();
        current
            .as_ref()
            .filter(|local| !local.ticket.is_lost())
            .cloned()
    }

    /// The term's exchange runs from now on.
    pub(super) fn install(&self, exchange: LocalExchange) {
        *self.current.lock() = Some(exchange);
    }

    /// The term holding `token` ended: its exchange takes nothing more (a later term's is
    /// left alone).
    pub(super) fn remove(&self, token: u64) {
        let mut current = self.current.lock();
        if current
            .as_ref()
            .is_some_and(|local| local.ticket.token() == token)
        {
            *current = None;
        }
    }
}

/// Runs `command` on this node's exchange. `timeout` is the requester's wait, the same as for
/// a command through the stream; `store` answers when the outcome is unknown (module docs).
pub(super) async fn call(
    local: LocalExchange,
    command: TradingCommand,
    timeout: Duration,
    store: &Arc<dyn TradingStore>,
) -> Result<TradingReply, OrderError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let id = command.id.clone();
    let is_change = command.request.is_change();
    let answered =
        tokio::time::timeout_at(deadline, command::execute(&local.handle, command)).await;
    match answered {
        // The actor stopped (its lease was lost, or the node shuts down) with the command
        // possibly in hand: unknown outcome.
        Ok(TradingReply::Error(error))
            if error.code == OrderError::INTERNAL.name() && !local.handle.is_running() => {}
        Ok(reply) => return Ok(reply),
        Err(_elapsed) => {}
    }
    if !is_change {
        return Err(command::exchange_unavailable());
    }
    tokio::time::sleep_until(deadline).await;
    match store.command_reply(&id).await {
        Ok(Some(stored)) => TradingReply::decode(&stored),
        _ => Err(command::exchange_unavailable()),
    }
}
