//! Trading commands as they travel between the nodes of a cluster, and the rules for running
//! them exactly once: what a requesting node sends ([`TradingCommand`]), what the exchange
//! answers ([`TradingReply`]), and what the exchange does with a command it is handed
//! ([`disposition`]): answer it from its stored reply, refuse it as too late, or execute it.
//!
//! Transport-free: the cluster module carries these over Redis (a stream with a consumer
//! group for commands, pub/sub for replies); here is only their meaning.
//!
//! Invariants:
//! - A state change (submit, cancel, replace) executed by the exchange has its reply stored
//!   in the same batch as its effects, under the command's id; a command delivered again whose
//!   id has a stored reply gets that reply and is not executed a second time.
//! - A command is executed only before its deadline minus a guard; the requesting node waits
//!   until the deadline before it answers "exchange unavailable", so a command it gave up on
//!   is not executed afterwards (as long as the exchange's store write takes less than the
//!   guard and the nodes' clocks agree within it; docs/deployment.md, "Cluster trading").

use serde::{Deserialize, Serialize};

use super::api::{
    Order, OrderError, OrderQuery, OrderRef, OrderRequest, Portfolio, ReplaceRequest, Resume,
    TradingApi,
};
use super::exchange::ExchangeHandle;
use crate::error::ErrorCode;

/// What a client asked of the exchange, as a requesting node forwards it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TradingRequest {
    Submit {
        request: OrderRequest,
    },
    Cancel {
        target: OrderRef,
    },
    Replace {
        target: OrderRef,
        patch: ReplaceRequest,
    },
    Portfolio,
    Orders {
        query: OrderQuery,
    },
    UpdatesSince {
        since: u64,
    },
    OrderByClientId {
        client_order_id: String,
    },
    /// Announce every book as a snapshot on the events channel (a node that joined late or
    /// whose subscription had a gap asks for it; the user is the node's id, unused).
    AnnounceBooks,
}

impl TradingRequest {
    /// The request's `op` on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            TradingRequest::Submit { .. } => "submit",
            TradingRequest::Cancel { .. } => "cancel",
            TradingRequest::Replace { .. } => "replace",
            TradingRequest::Portfolio => "portfolio",
            TradingRequest::Orders { .. } => "orders",
            TradingRequest::UpdatesSince { .. } => "updates_since",
            TradingRequest::OrderByClientId { .. } => "order_by_client_id",
            TradingRequest::AnnounceBooks => "announce_books",
        }
    }

    /// Whether the request changes state (and so has its reply stored with its effects).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            TradingRequest::Submit { .. }
                | TradingRequest::Cancel { .. }
                | TradingRequest::Replace { .. }
        )
    }
}

/// One command in the cluster's command stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradingCommand {
    /// Unique per command (the requesting node makes it), the key of its stored reply.
    pub id: String,
    pub user: String,
    /// The node waiting for the reply.
    pub node: String,
    /// Unix milliseconds after which the requesting node no longer waits for the reply.
    pub deadline_ms: i64,
    pub request: TradingRequest,
}

/// An [`OrderError`] on the wire: the code by its unique name (numbers have aliases).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Box<Order>>,
}

impl From<&OrderError> for WireError {
    fn from(error: &OrderError) -> WireError {
        WireError {
            code: error.code.name().to_owned(),
            message: error.message.clone(),
            order: error.order.clone(),
        }
    }
}

impl WireError {
    pub fn into_error(self) -> OrderError {
        let code = ErrorCode::from_name(&self.code).unwrap_or(OrderError::INTERNAL);
        OrderError {
            code,
            message: self.message,
            order: self.order,
        }
    }
}

/// The exchange's answer to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum TradingReply {
    Order(Box<Order>),
    Portfolio(Box<Portfolio>),
    Orders(Vec<Order>),
    Resume(Box<Resume>),
    /// The books were announced (the answer to `AnnounceBooks`; they travel as events).
    Announced,
    Error(WireError),
}

impl TradingReply {
    pub fn of_order(result: &Result<Order, OrderError>) -> TradingReply {
        match result {
            Ok(order) => TradingReply::Order(Box::new(order.clone())),
            Err(error) => TradingReply::Error(error.into()),
        }
    }

    pub fn error(error: &OrderError) -> TradingReply {
        TradingReply::Error(error.into())
    }

    /// The reply as stored and sent (JSON).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            // Every field serializes; this only guards against a future change that breaks it.
            let failure = OrderError::new(
                OrderError::INTERNAL,
                format!("reply not encodable: {error}"),
            );
            serde_json::to_string(&TradingReply::error(&failure)).unwrap_or_default()
        })
    }

    pub fn decode(text: &str) -> Result<TradingReply, OrderError> {
        serde_json::from_str(text).map_err(|error| {
            OrderError::new(
                OrderError::INTERNAL,
                format!("the exchange's reply could not be read: {error}"),
            )
        })
    }

    pub fn into_order(self) -> Result<Order, OrderError> {
        match self {
            TradingReply::Order(order) => Ok(*order),
            other => Err(other.mismatch("an order")),
        }
    }

    pub fn into_portfolio(self) -> Result<Portfolio, OrderError> {
        match self {
            TradingReply::Portfolio(portfolio) => Ok(*portfolio),
            other => Err(other.mismatch("a portfolio")),
        }
    }

    pub fn into_orders(self) -> Result<Vec<Order>, OrderError> {
        match self {
            TradingReply::Orders(orders) => Ok(orders),
            other => Err(other.mismatch("orders")),
        }
    }

    pub fn into_resume(self) -> Result<Resume, OrderError> {
        match self {
            TradingReply::Resume(resume) => Ok(*resume),
            other => Err(other.mismatch("a resume")),
        }
    }

    pub fn into_announced(self) -> Result<(), OrderError> {
        match self {
            TradingReply::Announced => Ok(()),
            other => Err(other.mismatch("an announcement")),
        }
    }

    fn mismatch(self, wanted: &str) -> OrderError {
        match self {
            TradingReply::Error(error) => error.into_error(),
            _ => OrderError::new(
                OrderError::INTERNAL,
                format!("the exchange answered something else than {wanted}"),
            ),
        }
    }
}

/// 50310002: no exchange answered in time.
pub fn exchange_unavailable() -> OrderError {
    OrderError::new(
        OrderError::EXCHANGE_UNAVAILABLE,
        "exchange unavailable, retry: no exchange answered in time (it is failing over to another node); an order retried with the same client_order_id never executes twice",
    )
}

/// What the exchange does with a command it was handed.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Run it (and, for a state change, store its reply with its effects).
    Execute,
    /// It already ran: send this stored reply again, execute nothing.
    Answer(TradingReply),
    /// Too late: its requester has given up or is about to. Nothing is executed.
    Expired,
}

/// The decision for `command` at `now_ms`, given the reply stored under its id (if any).
/// `guard_ms` is how long before the deadline the exchange stops starting commands.
pub fn disposition(
    command: &TradingCommand,
    stored_reply: Option<&str>,
    now_ms: i64,
    guard_ms: i64,
) -> Disposition {
    if let Some(text) = stored_reply {
        return match TradingReply::decode(text) {
            Ok(reply) => Disposition::Answer(reply),
            Err(error) => Disposition::Answer(TradingReply::error(&error)),
        };
    }
    if now_ms > command.deadline_ms.saturating_sub(guard_ms) {
        return Disposition::Expired;
    }
    Disposition::Execute
}

/// Runs `command` on the local exchange: a state change with its reply stored under the
/// command's id, a read as it is.
pub async fn execute(exchange: &ExchangeHandle, command: TradingCommand) -> TradingReply {
    let TradingCommand {
        id, user, request, ..
    } = command;
    match request {
        TradingRequest::Submit { request } => {
            TradingReply::of_order(&exchange.submit_with(Some(id), &user, request).await)
        }
        TradingRequest::Cancel { target } => {
            TradingReply::of_order(&exchange.cancel_with(Some(id), &user, target).await)
        }
        TradingRequest::Replace { target, patch } => {
            TradingReply::of_order(&exchange.replace_with(Some(id), &user, target, patch).await)
        }
        TradingRequest::Portfolio => match exchange.portfolio(&user).await {
            Ok(portfolio) => TradingReply::Portfolio(Box::new(portfolio)),
            Err(error) => TradingReply::error(&error),
        },
        TradingRequest::Orders { query } => match exchange.orders(&user, query).await {
            Ok(orders) => TradingReply::Orders(orders),
            Err(error) => TradingReply::error(&error),
        },
        TradingRequest::UpdatesSince { since } => {
            match exchange.updates_since(&user, since).await {
                Ok(resume) => TradingReply::Resume(Box::new(resume)),
                Err(error) => TradingReply::error(&error),
            }
        }
        TradingRequest::OrderByClientId { client_order_id } => {
            match exchange.order_by_client_id(&user, &client_order_id).await {
                Ok(order) => TradingReply::Order(Box::new(order)),
                Err(error) => TradingReply::error(&error),
            }
        }
        TradingRequest::AnnounceBooks => match exchange.announce_books().await {
            Ok(()) => TradingReply::Announced,
            Err(error) => TradingReply::error(&error),
        },
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
