//! The boundary between the simulated exchange and the transports (WebSocket, HTTP): wire
//! shapes of orders, trade updates, portfolios and book messages (docs/websocket.md, "Actions" and "Server messages"), and the
//! [`TradingApi`] trait the exchange implements.
//!
//! Money, prices and quantities are `rust_decimal::Decimal`, serialized as strings.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::error::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderType {
    Market,
    Limit,
    Stop,
    StopLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    Day,
    Gtc,
    Ioc,
    Fok,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Accepted,
    New,
    PartiallyFilled,
    Filled,
    Canceled,
    Expired,
    Rejected,
    Replaced,
    PendingCancel,
    PendingReplace,
}

impl OrderStatus {
    /// Open orders can still fill, be canceled or be replaced.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            OrderStatus::Accepted
                | OrderStatus::New
                | OrderStatus::PartiallyFilled
                | OrderStatus::PendingCancel
                | OrderStatus::PendingReplace
        )
    }
}

/// An order as the client sent it: every field optional and unparsed, so validation can say
/// exactly which field is wrong and why. Decimal fields accept JSON strings or numbers; the
/// transport turns numbers into their decimal text before building this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    pub symbol: Option<String>,
    pub qty: Option<String>,
    pub side: Option<String>,
    #[serde(rename = "type")]
    pub order_type: Option<String>,
    pub time_in_force: Option<String>,
    pub limit_price: Option<String>,
    pub stop_price: Option<String>,
    pub client_order_id: Option<String>,
}

/// Fields a replace may change (docs/websocket.md, "Actions": `replace`), unparsed like [`OrderRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceRequest {
    pub qty: Option<String>,
    pub time_in_force: Option<String>,
    pub limit_price: Option<String>,
    pub stop_price: Option<String>,
    pub client_order_id: Option<String>,
}

/// Which order a cancel or replace targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "value", rename_all = "snake_case")]
pub enum OrderRef {
    Id(String),
    ClientOrderId(String),
}

/// The full order entity, sent in acks, trade updates and `GET /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub qty: Decimal,
    pub filled_qty: Decimal,
    pub filled_avg_price: Option<Decimal>,
    pub limit_price: Option<Decimal>,
    pub stop_price: Option<Decimal>,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: DateTime<Utc>,
    pub filled_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<String>,
    pub replaces: Option<String>,
    pub commission: Decimal,
}

/// What happened to an order (`trade_update.event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeEvent {
    Accepted,
    New,
    Fill,
    PartialFill,
    Canceled,
    Expired,
    Replaced,
    Rejected,
    PendingCancel,
    PendingReplace,
}

/// `{"T":"trade_update",...}`: exactly one per order transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeUpdate {
    /// The user's update sequence: 1 for the first update of the account, then rising by
    /// exactly one per update. Stored with the update before it is sent, so a client can
    /// resume after the last `seq` it saw (`docs/websocket.md`, "Resuming trade updates").
    pub seq: u64,
    pub event: TradeEvent,
    /// Set on fills.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qty: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position_qty: Option<Decimal>,
    pub timestamp: DateTime<Utc>,
    pub order: Order,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionSide {
    Long,
    Short,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: String,
    /// Signed: negative for a short position.
    pub qty: Decimal,
    pub side: PositionSide,
    pub avg_entry_price: Decimal,
    pub current_price: Decimal,
    pub market_value: Decimal,
    pub cost_basis: Decimal,
    pub unrealized_pl: Decimal,
    pub unrealized_plpc: Decimal,
}

/// `{"T":"portfolio",...}` and `GET /v1/account` (without positions there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Portfolio {
    pub cash: Decimal,
    pub equity: Decimal,
    pub long_market_value: Decimal,
    pub short_market_value: Decimal,
    pub buying_power: Decimal,
    pub realized_pl: Decimal,
    pub t: DateTime<Utc>,
    pub positions: Vec<Position>,
}

/// One side's levels: `[price, size]` pairs, best first. A size of zero in a delta removes
/// the level.
pub type BookLevels = Vec<(Decimal, Decimal)>;

/// A book snapshot or delta for one symbol. `seq` is assigned per connection by the
/// transport, so it is not part of this type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BookUpdate {
    pub symbol: String,
    pub snapshot: bool,
    pub bids: BookLevels,
    pub asks: BookLevels,
    pub t: DateTime<Utc>,
}

/// Events for one user's sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    TradeUpdate(Box<TradeUpdate>),
}

/// A refused request, with its order-level code (docs/websocket.md "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OrderError {
    /// One of the associated constants below.
    pub code: ErrorCode,
    pub message: String,
    /// With 42210002: the order that already has the `client_order_id`, as it stands now, so
    /// a client that lost the acknowledgement of its first attempt learns the outcome.
    pub order: Option<Box<Order>>,
}

impl OrderError {
    /// 40010001 invalid order.
    pub const INVALID: ErrorCode = ErrorCode::InvalidOrder;
    /// 40310000 insufficient buying power or quantity.
    pub const INSUFFICIENT: ErrorCode = ErrorCode::Insufficient;
    /// 40410000 order not found.
    pub const NOT_FOUND: ErrorCode = ErrorCode::NotFound;
    /// 42210000 order not cancelable.
    pub const NOT_CANCELABLE: ErrorCode = ErrorCode::NotCancelable;
    /// 42210002 "client_order_id must be unique"; the error carries the existing order.
    pub const DUPLICATE_CLIENT_ORDER_ID: ErrorCode = ErrorCode::DuplicateClientOrderId;
    /// 500 internal (the exchange is not running, the store failed).
    pub const INTERNAL: ErrorCode = ErrorCode::StreamInternal;
    /// 50310002 no exchange answered in time (cluster trading, during a failover): retry.
    pub const EXCHANGE_UNAVAILABLE: ErrorCode = ErrorCode::ExchangeUnavailable;

    pub fn new(code: ErrorCode, message: impl Into<String>) -> OrderError {
        OrderError {
            code,
            message: message.into(),
            order: None,
        }
    }

    /// 42210002 for a `client_order_id` the user already gave `existing_id`; `order` is that
    /// order when the caller has it at hand (see [`OrderError::order`]).
    pub fn duplicate_client_order_id(
        client_order_id: &str,
        existing_id: &str,
        order: Option<Order>,
    ) -> OrderError {
        OrderError {
            code: OrderError::DUPLICATE_CLIENT_ORDER_ID,
            message: format!(
                "client_order_id must be unique: {client_order_id:?} already names order {existing_id}"
            ),
            order: order.map(Box::new),
        }
    }

    pub fn invalid(message: impl Into<String>) -> OrderError {
        OrderError::new(OrderError::INVALID, message)
    }
}

/// What a client that resumes trade updates after `since` gets (see
/// [`TradingApi::updates_since`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Resume {
    /// Every update after `since`, in order (empty when the client is up to date). The last
    /// one (or `since`, when empty) is the user's current sequence `seq`.
    Replay { seq: u64, updates: Vec<TradeUpdate> },
    /// The updates after `since` cannot be given: the client must rebuild from this state,
    /// which is exactly the state after update `seq`.
    Reset(Box<AccountSnapshot>),
}

/// Why a resume had to reset instead of replaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// Updates after `since` are no longer kept (`trading.updates_retention`), or there are
    /// more of them than one resume replays (`trading.max_resume_updates`).
    TooOld,
    /// `since` is beyond the user's sequence (another server's numbers, or a client bug).
    Ahead,
}

/// A user's whole trading state at one point of their update sequence: what a client needs
/// to start over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub reason: ResetReason,
    /// The `since` the client asked for.
    pub since: u64,
    /// The sequence this state corresponds to: the next update has `seq + 1`.
    pub seq: u64,
    /// Open orders, newest first.
    pub orders: Vec<Order>,
    /// Cash, equity, buying power and positions.
    pub account: Portfolio,
}

/// Which orders `orders()` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderQuery {
    Open,
    Closed,
    All,
}

/// What the WebSocket and HTTP layers need from the exchange. Implemented by the simulated
/// exchange's handle; object-safe so transports hold an `Arc<dyn TradingApi>`.
///
/// Ordering guarantee: a `submit`/`cancel`/`replace` future resolves before the trade updates
/// it caused can be observed as *processed* by a caller that awaits the future before reading
/// its `user_events` receiver again, so a session can send `order_ack` before the `new`
/// trade update by handling one action at a time.
pub trait TradingApi: Send + Sync + 'static {
    /// Whether trading is halted (a store failure; it resumes by itself once the store takes
    /// writes again). `/readyz` is not ready meanwhile.
    fn halted(&self) -> bool {
        false
    }

    fn submit(
        &self,
        user: &str,
        request: OrderRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>>;
    fn cancel(&self, user: &str, target: OrderRef)
    -> BoxFuture<'static, Result<Order, OrderError>>;
    fn replace(
        &self,
        user: &str,
        target: OrderRef,
        patch: ReplaceRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>>;
    /// Full mark-to-market at the latest prices.
    fn portfolio(&self, user: &str) -> BoxFuture<'static, Result<Portfolio, OrderError>>;
    fn orders(
        &self,
        user: &str,
        query: OrderQuery,
    ) -> BoxFuture<'static, Result<Vec<Order>, OrderError>>;
    /// Trade updates for this user's orders, in transition order.
    fn user_events(&self, user: &str) -> broadcast::Receiver<UserEvent>;
    /// Everything after update `since` of this user, or a reset with the current state.
    /// Subscribe with [`TradingApi::user_events`] *before* calling this: every update is then
    /// either in the answer or in the receiver (or both; drop those with `seq` at or below the
    /// answer's `seq`), never in neither.
    fn updates_since(
        &self,
        user: &str,
        since: u64,
    ) -> BoxFuture<'static, Result<Resume, OrderError>>;
    /// The user's order with this `client_order_id` as it stands now (from the store when the
    /// exchange no longer keeps it in memory); 40410000 when there is none.
    fn order_by_client_id(
        &self,
        user: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Order, OrderError>>;
    /// A counter bumped whenever this user's portfolio value may have changed (fills, cash,
    /// or a price move of a held symbol). Sessions throttle on it.
    fn portfolio_changes(&self, user: &str) -> watch::Receiver<u64>;
    /// The current book (as a snapshot) and a receiver of the deltas that follow it, with no
    /// gap between the two. `Err` with 40010001 for an unknown symbol.
    fn book(
        &self,
        symbol: &str,
    ) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError>;
}
