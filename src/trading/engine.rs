//! The matching engine: a synchronous state machine over accounts, orders, marks and the
//! synthetic books of every symbol. No tasks, no channels, no clock of its own: the exchange
//! actor feeds it commands and market data with the current time and publishes what it returns.
//!
//! Every state change is an [`ExchangeEvent`] that goes through [`Engine::commit`], which
//! records the event in the [`Outcome`] and applies it with [`Engine::apply`]. Decision code
//! (validation, matching) only reads state and commits events. A storage layer can therefore
//! persist `Outcome::events` before the caller announces `Outcome::announcements`, and
//! rebuild the engine by applying stored events in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::account::Account;
use super::api::{
    BookUpdate, Order, OrderError, OrderQuery, OrderRef, OrderRequest, OrderStatus, OrderType,
    Portfolio, ReplaceRequest, Side, TimeInForce, TradeEvent, TradeUpdate, UserEvent,
};
use super::book::{BookShape, SyntheticBook};
use super::validate::{NewOrder, OrderLimits, validate_order, validate_replace};
use crate::market::SymbolUniverse;

/// Everything the engine needs from configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub seed: u64,
    pub starting_cash: Decimal,
    pub commission_per_share: Decimal,
    pub allow_short: bool,
    pub max_open_orders: usize,
    /// Finished orders kept per account for `orders()`; older ones are forgotten.
    pub closed_orders_kept: usize,
    pub limits: OrderLimits,
    pub book: BookShape,
    /// Reference prices before any market data arrives; symbols not listed start at 100.
    pub initial_prices: BTreeMap<String, Decimal>,
}

/// One state change. Applying the same events in the same order rebuilds the same state.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeEvent {
    AccountOpened {
        user: String,
        cash: Decimal,
    },
    /// A new order, already validated and affordable; it is open from now on.
    OrderAccepted {
        user: String,
        order: Box<Order>,
    },
    /// A stop's trigger price traded; from now on it behaves as a market or limit order.
    StopTriggered {
        order_id: String,
    },
    OrderFilled {
        order_id: String,
        execution_id: String,
        price: Decimal,
        qty: Decimal,
        /// The displayed level this fill took liquidity from, if any.
        book_level: Option<Decimal>,
        at: DateTime<Utc>,
    },
    OrderCanceled {
        order_id: String,
        at: DateTime<Utc>,
    },
    OrderExpired {
        order_id: String,
        at: DateTime<Utc>,
    },
    /// The old order is closed as `replaced`; the replacement follows as `OrderAccepted`.
    OrderReplaced {
        order_id: String,
        replaced_by: String,
        at: DateTime<Utc>,
    },
    /// The mark price of a symbol moved (a trade, or the quote midpoint before any trade).
    MarkMoved {
        symbol: String,
        price: Decimal,
        from_trade: bool,
    },
    BookRefreshed {
        symbol: String,
        book: SyntheticBook,
        at: DateTime<Utc>,
    },
}

/// What subscribers should hear about, in order. Serializable: a cluster's exchange sends
/// them to every node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
pub enum Announcement {
    User {
        user: String,
        event: UserEvent,
    },
    /// The user's portfolio value or buying power may have changed.
    Portfolio {
        user: String,
    },
    Book {
        /// The book after the change, as a snapshot (for late joiners).
        snapshot: BookUpdate,
        delta: BookUpdate,
    },
    /// The whole book as the exchange holds it, replacing any copy (a cluster's exchange
    /// announces every book when it takes over and when a node asks, see
    /// [`Engine::book_snapshots`]); the deltas after it apply to it.
    BookSnapshot {
        snapshot: BookUpdate,
    },
    /// Trading halted by a failed store write (`halted`) or resumed after it, with the
    /// message clients get. Only a cluster's exchange sends it (to its outlet, see
    /// `recovery`), so that every node tells its own sessions; a single node tells its hub.
    Trading {
        halted: bool,
        message: String,
    },
}

/// The events a command committed and the announcements they produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<ExchangeEvent>,
    pub announcements: Vec<Announcement>,
}

#[derive(Debug, Clone)]
struct OrderState {
    user: String,
    order: Order,
    seq: u64,
    triggered: bool,
    /// Σ price × qty of the fills, for an exact average.
    filled_notional: Decimal,
}

impl OrderState {
    fn remaining(&self) -> Decimal {
        self.order.qty - self.order.filled_qty
    }

    fn terms(&self) -> NewOrder {
        NewOrder {
            symbol: self.order.symbol.clone(),
            side: self.order.side,
            order_type: self.order.order_type,
            time_in_force: self.order.time_in_force,
            qty: self.order.qty,
            limit_price: self.order.limit_price,
            stop_price: self.order.stop_price,
            client_order_id: Some(self.order.client_order_id.clone()),
        }
    }

    /// A stop that has not triggered waits; everything else with a limit can rest and match.
    fn is_waiting_stop(&self) -> bool {
        matches!(
            self.order.order_type,
            OrderType::Stop | OrderType::StopLimit
        ) && !self.triggered
    }
}

#[derive(Debug, Clone)]
struct SymbolMarket {
    mark: Decimal,
    traded: bool,
    book: SyntheticBook,
    /// Open orders of every user on this symbol, by submission sequence.
    open: BTreeMap<u64, String>,
}

/// Largest trade or quote size taken from market data (bounds arithmetic like the price cap).
const MAX_MARKET_SIZE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// Decimal places of an order's average fill price.
const AVG_PRICE_DECIMALS: u32 = 6;

/// The simulated exchange's state and rules.
pub struct Engine {
    settings: EngineSettings,
    universe: SymbolUniverse,
    rng: StdRng,
    accounts: BTreeMap<String, Account>,
    orders: HashMap<String, OrderState>,
    markets: BTreeMap<String, SymbolMarket>,
    /// Users with a non-zero position, by symbol: whose portfolio a price move changes.
    holders: HashMap<String, BTreeSet<String>>,
    next_seq: u64,
    /// Each user's last trade update sequence. Derived by [`Engine::apply`] like everything
    /// else, so replaying the stored events gives every update its original number back.
    update_seqs: HashMap<String, u64>,
    /// Every `client_order_id` each user has given an order, with that order's id. Kept for
    /// orders the engine has forgotten too, so a retry of a long-finished order is still
    /// recognised (its body is then read from the store).
    client_order_ids: HashMap<String, HashMap<String, String>>,
}

/// The next update sequence of `user` (a free function so it borrows only the map).
fn next_update_seq(update_seqs: &mut HashMap<String, u64>, user: &str) -> u64 {
    let seq = update_seqs.entry(user.to_owned()).or_insert(0);
    *seq += 1;
    *seq
}

fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Accepted => "accepted",
        OrderStatus::New => "new",
        OrderStatus::PartiallyFilled => "partially filled",
        OrderStatus::Filled => "filled",
        OrderStatus::Canceled => "canceled",
        OrderStatus::Expired => "expired",
        OrderStatus::Rejected => "rejected",
        OrderStatus::Replaced => "replaced",
        OrderStatus::PendingCancel => "pending cancel",
        OrderStatus::PendingReplace => "pending replace",
    }
}

impl Engine {
    pub fn new(settings: EngineSettings, universe: SymbolUniverse) -> Engine {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let tick = settings.book.tick_size;
        let mut markets = BTreeMap::new();
        for symbol in universe.names() {
            let reference = settings
                .initial_prices
                .get(symbol)
                .copied()
                .filter(|price| *price > tick)
                .unwrap_or(Decimal::ONE_HUNDRED);
            let book = SyntheticBook::generate(
                reference - tick,
                reference + tick,
                (Decimal::ZERO, Decimal::ZERO),
                &settings.book,
                &mut rng,
            );
            markets.insert(
                symbol.clone(),
                SymbolMarket {
                    mark: reference,
                    traded: false,
                    book,
                    open: BTreeMap::new(),
                },
            );
        }
        Engine {
            settings,
            universe,
            rng,
            accounts: BTreeMap::new(),
            orders: HashMap::new(),
            markets,
            holders: HashMap::new(),
            next_seq: 1,
            update_seqs: HashMap::new(),
            client_order_ids: HashMap::new(),
        }
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn universe(&self) -> &SymbolUniverse {
        &self.universe
    }

    /// The single door for state changes: records the event, applies it, collects what to
    /// announce. A store would persist `event` here (or from `out.events`) before anything in
    /// `out.announcements` is published.
    pub fn commit(&mut self, event: ExchangeEvent, out: &mut Outcome) {
        let announcements = self.apply(&event);
        out.events.push(event);
        out.announcements.extend(announcements);
    }

    /// Applies one event to the state and returns what it announces.
    pub fn apply(&mut self, event: &ExchangeEvent) -> Vec<Announcement> {
        let mut announce = Vec::new();
        match event {
            ExchangeEvent::AccountOpened { user, cash } => {
                self.accounts
                    .entry(user.clone())
                    .or_insert_with(|| Account::new(*cash));
            }
            ExchangeEvent::OrderAccepted { user, order } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let id = order.id.clone();
                if let Some(market) = self.markets.get_mut(&order.symbol) {
                    market.open.insert(seq, id.clone());
                }
                let account = self
                    .accounts
                    .entry(user.clone())
                    .or_insert_with(|| Account::new(self.settings.starting_cash));
                account.order_ids.push(id.clone());
                account.open_orders.insert(seq, id.clone());
                self.client_order_ids
                    .entry(user.clone())
                    .or_default()
                    .insert(order.client_order_id.clone(), id.clone());
                self.orders.insert(
                    id,
                    OrderState {
                        user: user.clone(),
                        order: (**order).clone(),
                        seq,
                        triggered: false,
                        filled_notional: Decimal::ZERO,
                    },
                );
                let update_seq = next_update_seq(&mut self.update_seqs, user);
                announce.push(trade_update(user, update_seq, TradeEvent::New, order));
                announce.push(Announcement::Portfolio { user: user.clone() });
            }
            ExchangeEvent::StopTriggered { order_id } => {
                if let Some(state) = self.orders.get_mut(order_id) {
                    state.triggered = true;
                }
            }
            ExchangeEvent::OrderFilled {
                order_id,
                execution_id,
                price,
                qty,
                book_level,
                at,
            } => {
                let Some(state) = self.orders.get_mut(order_id) else {
                    return announce;
                };
                // Never beyond the order's quantity, whatever the caller computed.
                let qty = (*qty).min(state.remaining());
                if qty <= Decimal::ZERO {
                    return announce;
                }
                let commission = qty * self.settings.commission_per_share;
                state.filled_notional += qty * price;
                let order = &mut state.order;
                order.filled_qty += qty;
                order.filled_avg_price =
                    Some((state.filled_notional / order.filled_qty).round_dp(AVG_PRICE_DECIMALS));
                order.commission += commission;
                order.updated_at = *at;
                let done = order.filled_qty >= order.qty;
                if done {
                    order.status = OrderStatus::Filled;
                    order.filled_at = Some(*at);
                } else {
                    order.status = OrderStatus::PartiallyFilled;
                }
                let order = order.clone();
                let user = state.user.clone();
                let seq = state.seq;
                let account = self
                    .accounts
                    .entry(user.clone())
                    .or_insert_with(|| Account::new(self.settings.starting_cash));
                let position_qty =
                    account.apply_fill(&order.symbol, order.side, qty, *price, commission);
                let holders = self.holders.entry(order.symbol.clone()).or_default();
                if position_qty.is_zero() {
                    holders.remove(&user);
                } else {
                    holders.insert(user.clone());
                }
                if let Some(level) = book_level
                    && let Some(market) = self.markets.get_mut(&order.symbol)
                    && let Some(left) = market.book.take(order.side, *level, qty)
                {
                    let (bids, asks) = match order.side {
                        Side::Buy => (Vec::new(), vec![(*level, left)]),
                        Side::Sell => (vec![(*level, left)], Vec::new()),
                    };
                    announce.push(book_announcement(
                        &order.symbol,
                        &market.book,
                        bids,
                        asks,
                        *at,
                    ));
                }
                let event = if done {
                    TradeEvent::Fill
                } else {
                    TradeEvent::PartialFill
                };
                announce.push(Announcement::User {
                    user: user.clone(),
                    event: UserEvent::TradeUpdate(Box::new(TradeUpdate {
                        seq: next_update_seq(&mut self.update_seqs, &user),
                        event,
                        execution_id: Some(execution_id.clone()),
                        price: Some(*price),
                        qty: Some(qty),
                        position_qty: Some(position_qty),
                        timestamp: *at,
                        order,
                    })),
                });
                announce.push(Announcement::Portfolio { user: user.clone() });
                if done {
                    self.close_order(order_id, seq);
                }
            }
            ExchangeEvent::OrderCanceled { order_id, at } => {
                self.finish(order_id, OrderStatus::Canceled, *at, None, &mut announce);
            }
            ExchangeEvent::OrderExpired { order_id, at } => {
                self.finish(order_id, OrderStatus::Expired, *at, None, &mut announce);
            }
            ExchangeEvent::OrderReplaced {
                order_id,
                replaced_by,
                at,
            } => {
                self.finish(
                    order_id,
                    OrderStatus::Replaced,
                    *at,
                    Some(replaced_by.clone()),
                    &mut announce,
                );
            }
            ExchangeEvent::MarkMoved {
                symbol,
                price,
                from_trade,
            } => {
                if let Some(market) = self.markets.get_mut(symbol) {
                    let moved = market.mark != *price;
                    market.mark = *price;
                    market.traded |= *from_trade;
                    if moved && let Some(holders) = self.holders.get(symbol) {
                        for user in holders {
                            announce.push(Announcement::Portfolio { user: user.clone() });
                        }
                    }
                }
            }
            ExchangeEvent::BookRefreshed { symbol, book, at } => {
                if let Some(market) = self.markets.get_mut(symbol) {
                    let (bids, asks) = market.book.diff(book);
                    market.book = book.clone();
                    if !bids.is_empty() || !asks.is_empty() {
                        announce.push(book_announcement(symbol, &market.book, bids, asks, *at));
                    }
                }
            }
        }
        announce
    }

    /// Moves an open order to a final status (not `filled`, which fills handle).
    fn finish(
        &mut self,
        order_id: &str,
        status: OrderStatus,
        at: DateTime<Utc>,
        replaced_by: Option<String>,
        announce: &mut Vec<Announcement>,
    ) {
        let Some(state) = self.orders.get_mut(order_id) else {
            return;
        };
        if !state.order.status.is_open() {
            return;
        }
        let order = &mut state.order;
        order.status = status;
        order.updated_at = at;
        let event = match status {
            OrderStatus::Expired => {
                order.expired_at = Some(at);
                TradeEvent::Expired
            }
            OrderStatus::Replaced => {
                order.replaced_by = replaced_by;
                TradeEvent::Replaced
            }
            _ => {
                order.canceled_at = Some(at);
                TradeEvent::Canceled
            }
        };
        let user = state.user.clone();
        let seq = state.seq;
        let update_seq = next_update_seq(&mut self.update_seqs, &user);
        announce.push(trade_update(&user, update_seq, event, &state.order));
        announce.push(Announcement::Portfolio { user });
        self.close_order(order_id, seq);
    }

    /// Removes a finished order from the open indexes and forgets the oldest finished orders
    /// beyond the per-account history limit.
    fn close_order(&mut self, order_id: &str, seq: u64) {
        let Some(state) = self.orders.get(order_id) else {
            return;
        };
        let user = state.user.clone();
        if let Some(market) = self.markets.get_mut(&state.order.symbol) {
            market.open.remove(&seq);
        }
        let Some(account) = self.accounts.get_mut(&user) else {
            return;
        };
        account.open_orders.remove(&seq);
        let kept = self.settings.closed_orders_kept;
        while account
            .order_ids
            .len()
            .saturating_sub(account.open_orders.len())
            > kept
        {
            let orders = &self.orders;
            // The order closing now is kept, so the command that closed it can return it.
            let Some(index) = account.order_ids.iter().position(|id| {
                id != order_id && orders.get(id).is_none_or(|s| !s.order.status.is_open())
            }) else {
                break;
            };
            let id = account.order_ids.remove(index);
            self.orders.remove(&id);
        }
    }

    // ----- commands -------------------------------------------------------------------------

    /// Opens the account with the starting cash if this is the user's first action.
    pub fn ensure_account(&mut self, user: &str, out: &mut Outcome) {
        if !self.accounts.contains_key(user) {
            let cash = self.settings.starting_cash;
            self.commit(
                ExchangeEvent::AccountOpened {
                    user: user.to_owned(),
                    cash,
                },
                out,
            );
        }
    }

    /// Validates, checks and accepts a new order, then matches it. Returns the order as
    /// accepted (status `new`); fills follow as trade updates.
    pub fn submit(
        &mut self,
        user: &str,
        request: &OrderRequest,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> Result<Order, OrderError> {
        let terms = validate_order(request, &self.universe, &self.settings.limits)?;
        // Before the limits: a retry of an order that went through must learn so, not be told
        // that the order it already placed used up its buying power.
        let client_order_id = self.client_order_id_for(user, terms.client_order_id.as_deref())?;
        self.check_open_order_limit(user)?;
        self.check_affordable(user, &terms, None)?;
        self.ensure_account(user, out);
        let order = new_order(&terms, client_order_id, None, now);
        let id = order.id.clone();
        self.commit(
            ExchangeEvent::OrderAccepted {
                user: user.to_owned(),
                order: Box::new(order.clone()),
            },
            out,
        );
        self.execute(&id, now, out);
        Ok(order)
    }

    /// Cancels an open order.
    pub fn cancel(
        &mut self,
        user: &str,
        target: &OrderRef,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> Result<Order, OrderError> {
        let id = self.find_order(user, target)?;
        self.check_open(&id, "canceled")?;
        self.commit(
            ExchangeEvent::OrderCanceled {
                order_id: id.clone(),
                at: now,
            },
            out,
        );
        self.order(&id)
    }

    /// Replaces an open order with a new one on the changed terms.
    pub fn replace(
        &mut self,
        user: &str,
        target: &OrderRef,
        patch: &ReplaceRequest,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) -> Result<Order, OrderError> {
        let old_id = self.find_order(user, target)?;
        self.check_open(&old_id, "replaced")?;
        let (old_terms, remaining) = match self.orders.get(&old_id) {
            Some(state) => (state.terms(), state.remaining()),
            None => return Err(not_found(target)),
        };
        let terms = validate_replace(patch, &old_terms, remaining, &self.settings.limits)?;
        let client_order_id = self.client_order_id_for(user, terms.client_order_id.as_deref())?;
        self.check_affordable(user, &terms, Some(&old_id))?;
        let order = new_order(&terms, client_order_id, Some(old_id.clone()), now);
        let id = order.id.clone();
        self.commit(
            ExchangeEvent::OrderReplaced {
                order_id: old_id,
                replaced_by: id.clone(),
                at: now,
            },
            out,
        );
        self.commit(
            ExchangeEvent::OrderAccepted {
                user: user.to_owned(),
                order: Box::new(order.clone()),
            },
            out,
        );
        self.execute(&id, now, out);
        Ok(order)
    }

    /// The close of the session: every open `day` order expires.
    pub fn close_session(&mut self, now: DateTime<Utc>, out: &mut Outcome) {
        let mut day_orders: Vec<(u64, String)> = self
            .orders
            .values()
            .filter(|s| s.order.status.is_open() && s.order.time_in_force == TimeInForce::Day)
            .map(|s| (s.seq, s.order.id.clone()))
            .collect();
        day_orders.sort();
        for (_, order_id) in day_orders {
            self.commit(ExchangeEvent::OrderExpired { order_id, at: now }, out);
        }
    }

    /// A new top of book: the book is regenerated around it and resting orders that it
    /// crosses fill. Before the first trade the midpoint is the mark.
    pub fn on_quote(
        &mut self,
        symbol: &str,
        bid: Decimal,
        ask: Decimal,
        sizes: (Decimal, Decimal),
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) {
        let Some(market) = self.markets.get(symbol) else {
            return;
        };
        if !self.plausible_price(bid) || !self.plausible_price(ask) || bid > ask {
            return;
        }
        let sizes = (sizes.0.min(MAX_MARKET_SIZE), sizes.1.min(MAX_MARKET_SIZE));
        if !market.traded {
            let mid = ((bid + ask) / Decimal::TWO).normalize();
            self.commit(
                ExchangeEvent::MarkMoved {
                    symbol: symbol.to_owned(),
                    price: mid,
                    from_trade: false,
                },
                out,
            );
        }
        let book = SyntheticBook::generate(bid, ask, sizes, &self.settings.book, &mut self.rng);
        self.commit(
            ExchangeEvent::BookRefreshed {
                symbol: symbol.to_owned(),
                book,
                at: now,
            },
            out,
        );
        self.match_resting(symbol, None, now, out);
    }

    /// A trade print: it sets the mark, triggers stops and fills resting limits it trades
    /// through. A print outside the displayed spread re-centres a stale book on it.
    pub fn on_trade(
        &mut self,
        symbol: &str,
        price: Decimal,
        size: Decimal,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) {
        let Some(market) = self.markets.get(symbol) else {
            return;
        };
        if !self.plausible_price(price) {
            return;
        }
        let size = size.min(MAX_MARKET_SIZE);
        let stale = match (market.book.best_bid(), market.book.best_ask()) {
            (Some(bid), Some(ask)) => price < bid || price > ask,
            _ => true,
        };
        self.commit(
            ExchangeEvent::MarkMoved {
                symbol: symbol.to_owned(),
                price,
                from_trade: true,
            },
            out,
        );
        if stale {
            let tick = self.settings.book.tick_size;
            let book = SyntheticBook::generate(
                (price - tick).max(tick),
                price + tick,
                (Decimal::ZERO, Decimal::ZERO),
                &self.settings.book,
                &mut self.rng,
            );
            self.commit(
                ExchangeEvent::BookRefreshed {
                    symbol: symbol.to_owned(),
                    book,
                    at: now,
                },
                out,
            );
        }
        self.match_resting(symbol, Some((price, size.max(Decimal::ZERO))), now, out);
    }

    /// Market prices the engine accepts: positive and within the configured price range, so
    /// that no product of a price and a quantity can overflow the decimal type.
    fn plausible_price(&self, price: Decimal) -> bool {
        price > Decimal::ZERO && price <= self.settings.limits.max_price
    }

    // ----- matching -------------------------------------------------------------------------

    /// Matches an order that just became active (accepted, or a stop that triggered).
    fn execute(&mut self, order_id: &str, now: DateTime<Utc>, out: &mut Outcome) {
        let Some(state) = self.orders.get(order_id) else {
            return;
        };
        if state.is_waiting_stop() {
            return;
        }
        let order = &state.order;
        let (side, tif, remaining, symbol) = (
            order.side,
            order.time_in_force,
            state.remaining(),
            order.symbol.clone(),
        );
        let limit = match order.order_type {
            OrderType::Limit | OrderType::StopLimit => order.limit_price,
            OrderType::Market | OrderType::Stop => None,
        };
        let is_market = limit.is_none();
        let triggered_stop = state.triggered;
        let user = state.user.clone();
        let Some(market) = self.markets.get(&symbol) else {
            return;
        };
        let walk = market.book.plan_walk(side, remaining, limit);
        let walk_qty: Decimal = walk.iter().map(|fill| fill.1).sum();
        let unaffordable = is_market
            && triggered_stop
            && side == Side::Buy
            && self.opening_cost_of_walk(&user, &symbol, &walk, Some(order_id))
                > self.buying_power(&user, Some(order_id));
        if unaffordable || (tif == TimeInForce::Fok && walk_qty < remaining) {
            self.commit(
                ExchangeEvent::OrderCanceled {
                    order_id: order_id.to_owned(),
                    at: now,
                },
                out,
            );
            return;
        }
        for (price, qty) in walk {
            self.commit(
                ExchangeEvent::OrderFilled {
                    order_id: order_id.to_owned(),
                    execution_id: Uuid::now_v7().to_string(),
                    price,
                    qty,
                    book_level: Some(price),
                    at: now,
                },
                out,
            );
        }
        let still_open = self
            .orders
            .get(order_id)
            .is_some_and(|s| s.order.status.is_open());
        // Market orders never rest and ioc takes only what is there now.
        if still_open && (is_market || tif == TimeInForce::Ioc) {
            self.commit(
                ExchangeEvent::OrderCanceled {
                    order_id: order_id.to_owned(),
                    at: now,
                },
                out,
            );
        }
    }

    /// After a market update: trigger stops on a trade, then fill resting limits that the
    /// book now crosses (at their limit price, taking the crossing levels) and those a trade
    /// printed through (at their limit price, up to the trade's size, in time priority).
    fn match_resting(
        &mut self,
        symbol: &str,
        trade: Option<(Decimal, Decimal)>,
        now: DateTime<Utc>,
        out: &mut Outcome,
    ) {
        let Some(market) = self.markets.get(symbol) else {
            return;
        };
        let open: Vec<String> = market.open.values().cloned().collect();
        if let Some((price, _)) = trade {
            for order_id in &open {
                let Some(state) = self.orders.get(order_id) else {
                    continue;
                };
                if !state.is_waiting_stop() || !state.order.status.is_open() {
                    continue;
                }
                let Some(stop) = state.order.stop_price else {
                    continue;
                };
                let hit = match state.order.side {
                    Side::Buy => price >= stop,
                    Side::Sell => price <= stop,
                };
                if hit {
                    self.commit(
                        ExchangeEvent::StopTriggered {
                            order_id: order_id.clone(),
                        },
                        out,
                    );
                    self.execute(order_id, now, out);
                }
            }
        }
        let mut trade_left = trade.map_or(Decimal::ZERO, |t| t.1);
        for order_id in &open {
            let Some(state) = self.orders.get(order_id) else {
                continue;
            };
            if !state.order.status.is_open() || state.is_waiting_stop() {
                continue;
            }
            let Some(limit) = state.order.limit_price else {
                continue;
            };
            let side = state.order.side;
            let remaining = state.remaining();
            let Some(market) = self.markets.get(symbol) else {
                return;
            };
            let crossing = market.book.plan_walk(side, remaining, Some(limit));
            let mut filled = Decimal::ZERO;
            for (level, qty) in crossing {
                filled += qty;
                self.commit(
                    ExchangeEvent::OrderFilled {
                        order_id: order_id.clone(),
                        execution_id: Uuid::now_v7().to_string(),
                        price: limit,
                        qty,
                        book_level: Some(level),
                        at: now,
                    },
                    out,
                );
            }
            let remaining = remaining - filled;
            if let Some((price, _)) = trade {
                let through = match side {
                    Side::Buy => price < limit,
                    Side::Sell => price > limit,
                };
                let qty = remaining.min(trade_left);
                if through && qty > Decimal::ZERO {
                    trade_left -= qty;
                    self.commit(
                        ExchangeEvent::OrderFilled {
                            order_id: order_id.clone(),
                            execution_id: Uuid::now_v7().to_string(),
                            price: limit,
                            qty,
                            book_level: None,
                            at: now,
                        },
                        out,
                    );
                }
            }
        }
    }

    // ----- checks ---------------------------------------------------------------------------

    fn check_open_order_limit(&self, user: &str) -> Result<(), OrderError> {
        let open = self
            .accounts
            .get(user)
            .map_or(0, |account| account.open_orders.len());
        if open >= self.settings.max_open_orders {
            return Err(OrderError::invalid(format!(
                "too many open orders: the limit is {}; cancel some first",
                self.settings.max_open_orders
            )));
        }
        Ok(())
    }

    /// The given client order id if no order of the user ever had it, or a fresh one. A
    /// duplicate is refused with 42210002 carrying the existing order when the engine still
    /// keeps it (the exchange fills it in from the store otherwise).
    fn client_order_id_for(&self, user: &str, wanted: Option<&str>) -> Result<String, OrderError> {
        let Some(wanted) = wanted else {
            return Ok(Uuid::now_v7().to_string());
        };
        match self.order_id_by_client_id(user, wanted) {
            Some(id) => Err(OrderError::duplicate_client_order_id(
                wanted,
                id,
                self.order(id).ok(),
            )),
            None => Ok(wanted.to_owned()),
        }
    }

    fn find_order(&self, user: &str, target: &OrderRef) -> Result<String, OrderError> {
        match target {
            OrderRef::Id(id) => match self.orders.get(id) {
                Some(state) if state.user == user => Ok(id.clone()),
                _ => Err(not_found(target)),
            },
            OrderRef::ClientOrderId(cid) => {
                let account = self.accounts.get(user).ok_or_else(|| not_found(target))?;
                let matching = |id: &&String| {
                    self.orders
                        .get(*id)
                        .is_some_and(|s| &s.order.client_order_id == cid)
                };
                // An open order wins; otherwise the most recent finished one.
                account
                    .open_orders
                    .values()
                    .find(matching)
                    .or_else(|| account.order_ids.iter().rev().find(matching))
                    .cloned()
                    .ok_or_else(|| not_found(target))
            }
        }
    }

    fn check_open(&self, id: &str, verb: &str) -> Result<(), OrderError> {
        match self.orders.get(id) {
            Some(state) if state.order.status.is_open() => Ok(()),
            Some(state) => Err(OrderError::new(
                OrderError::NOT_CANCELABLE,
                format!(
                    "order {id} is already {} and cannot be {verb}",
                    status_name(state.order.status)
                ),
            )),
            None => Err(OrderError::new(
                OrderError::NOT_FOUND,
                format!("order {id} not found"),
            )),
        }
    }

    fn mark(&self, symbol: &str) -> Decimal {
        self.markets
            .get(symbol)
            .map_or(Decimal::ZERO, |market| market.mark)
    }

    /// Shares of `qty` that would open or extend a position rather than close one, given the
    /// position and the user's other open orders on the same side (which close first).
    fn opening_qty(
        &self,
        user: &str,
        symbol: &str,
        side: Side,
        qty: Decimal,
        excluding: Option<&str>,
    ) -> Decimal {
        let Some(account) = self.accounts.get(user) else {
            return qty;
        };
        let position = account.position_qty(symbol);
        let closable = match side {
            Side::Buy => (-position).max(Decimal::ZERO),
            Side::Sell => position.max(Decimal::ZERO),
        };
        let claimed: Decimal = account
            .open_orders
            .values()
            .filter(|id| Some(id.as_str()) != excluding)
            .filter_map(|id| self.orders.get(id))
            .filter(|s| s.order.symbol == symbol && s.order.side == side)
            .map(OrderState::remaining)
            .sum();
        let closable_left = (closable - claimed).max(Decimal::ZERO);
        (qty - closable_left).max(Decimal::ZERO)
    }

    /// What the opening part of a planned walk costs (buys only; sells open shorts, which
    /// are charged at the mark).
    fn opening_cost_of_walk(
        &self,
        user: &str,
        symbol: &str,
        walk: &[(Decimal, Decimal)],
        excluding: Option<&str>,
    ) -> Decimal {
        let qty: Decimal = walk.iter().map(|fill| fill.1).sum();
        let opening = self.opening_qty(user, symbol, Side::Buy, qty, excluding);
        // The most expensive levels are the ones left after closing, so price the opening part
        // from the top of the walk downwards.
        let mut left = opening;
        let mut cost = Decimal::ZERO;
        for &(price, size) in walk.iter().rev() {
            let take = left.min(size);
            cost += take * price;
            left -= take;
        }
        cost
    }

    /// Refuses an order the account cannot afford (or, with shorting off, cannot deliver).
    fn check_affordable(
        &self,
        user: &str,
        terms: &NewOrder,
        excluding: Option<&str>,
    ) -> Result<(), OrderError> {
        let symbol = terms.symbol.as_str();
        let opening = self.opening_qty(user, symbol, terms.side, terms.qty, excluding);
        if terms.side == Side::Sell && opening > Decimal::ZERO && !self.settings.allow_short {
            let available = terms.qty - opening;
            return Err(OrderError::new(
                OrderError::INSUFFICIENT,
                format!(
                    "insufficient qty: {available} {symbol} available to sell (held shares minus \
                     open sell orders), order is for {}; short selling is disabled",
                    terms.qty
                ),
            ));
        }
        let mark = self.mark(symbol);
        let price = match (terms.side, terms.order_type) {
            (Side::Sell, _) => mark,
            (Side::Buy, OrderType::Limit | OrderType::StopLimit) => {
                terms.limit_price.unwrap_or(mark)
            }
            (Side::Buy, OrderType::Stop) => terms.stop_price.unwrap_or(mark),
            (Side::Buy, OrderType::Market) => Decimal::ZERO,
        };
        let mut need = opening * price + terms.qty * self.settings.commission_per_share;
        if terms.side == Side::Buy && terms.order_type == OrderType::Market {
            let walk = self
                .markets
                .get(symbol)
                .map(|m| m.book.plan_walk(Side::Buy, terms.qty, None))
                .unwrap_or_default();
            need += self.opening_cost_of_walk(user, symbol, &walk, excluding);
        }
        let buying_power = self.buying_power(user, excluding);
        if need > buying_power {
            return Err(OrderError::new(
                OrderError::INSUFFICIENT,
                format!(
                    "insufficient buying power: the order needs {}, buying power is {}",
                    need.round_dp(2),
                    buying_power.round_dp(2)
                ),
            ));
        }
        Ok(())
    }

    /// Cash, minus twice the short market value (the short sale's proceeds plus an equal
    /// amount held as collateral), minus what open orders reserve. `excluding` leaves one
    /// order out (the one being replaced).
    fn buying_power(&self, user: &str, excluding: Option<&str>) -> Decimal {
        let Some(account) = self.accounts.get(user) else {
            return self.settings.starting_cash;
        };
        let short_value: Decimal = account
            .positions
            .iter()
            .filter(|(_, p)| p.qty < Decimal::ZERO)
            .map(|(symbol, p)| -p.qty * self.mark(symbol))
            .sum();
        account.cash - Decimal::TWO * short_value - self.reserved(account, excluding)
    }

    /// What open orders hold back: for each order, in time priority, the shares that would
    /// open or extend a position (buys at their limit or stop price, short sales at the mark)
    /// plus the commission on all its shares. Shares that close a position reserve nothing.
    fn reserved(&self, account: &Account, excluding: Option<&str>) -> Decimal {
        let mut closable: BTreeMap<(&str, bool), Decimal> = BTreeMap::new();
        let mut total = Decimal::ZERO;
        for id in account.open_orders.values() {
            if Some(id.as_str()) == excluding {
                continue;
            }
            let Some(state) = self.orders.get(id) else {
                continue;
            };
            let order = &state.order;
            let is_buy = order.side == Side::Buy;
            let budget = closable
                .entry((order.symbol.as_str(), is_buy))
                .or_insert_with(|| {
                    let position = account.position_qty(&order.symbol);
                    if is_buy {
                        (-position).max(Decimal::ZERO)
                    } else {
                        position.max(Decimal::ZERO)
                    }
                });
            let remaining = state.remaining();
            let closing = remaining.min(*budget);
            *budget -= closing;
            let opening = remaining - closing;
            let price = if is_buy {
                order
                    .limit_price
                    .or(order.stop_price)
                    .unwrap_or_else(|| self.mark(&order.symbol))
            } else {
                self.mark(&order.symbol)
            };
            total += opening * price + remaining * self.settings.commission_per_share;
        }
        total
    }

    // ----- queries --------------------------------------------------------------------------

    pub fn order(&self, id: &str) -> Result<Order, OrderError> {
        self.orders
            .get(id)
            .map(|s| s.order.clone())
            .ok_or_else(|| OrderError::new(OrderError::NOT_FOUND, format!("order {id} not found")))
    }

    /// A user's orders, newest first.
    pub fn orders(&self, user: &str, query: OrderQuery) -> Vec<Order> {
        let Some(account) = self.accounts.get(user) else {
            return Vec::new();
        };
        account
            .order_ids
            .iter()
            .rev()
            .filter_map(|id| self.orders.get(id))
            .filter(|s| match query {
                OrderQuery::Open => s.order.status.is_open(),
                OrderQuery::Closed => !s.order.status.is_open(),
                OrderQuery::All => true,
            })
            .map(|s| s.order.clone())
            .collect()
    }

    /// Full mark-to-market; a user who never traded sees the starting cash.
    pub fn portfolio(&self, user: &str, now: DateTime<Utc>) -> Portfolio {
        let fresh;
        let account = match self.accounts.get(user) {
            Some(account) => account,
            None => {
                fresh = Account::new(self.settings.starting_cash);
                &fresh
            }
        };
        let positions: Vec<_> = account
            .positions
            .iter()
            .map(|(symbol, p)| p.to_position(symbol, self.mark(symbol)))
            .collect();
        let long_market_value: Decimal = positions
            .iter()
            .map(|p| p.market_value)
            .filter(|v| *v > Decimal::ZERO)
            .sum();
        let short_market_value: Decimal = positions
            .iter()
            .map(|p| p.market_value)
            .filter(|v| *v < Decimal::ZERO)
            .sum();
        Portfolio {
            cash: account.cash,
            equity: account.cash + long_market_value + short_market_value,
            long_market_value,
            short_market_value,
            buying_power: self.buying_power(user, None),
            realized_pl: account.realized_pl,
            t: now,
            positions,
        }
    }

    /// The current book of a symbol.
    pub fn book(&self, symbol: &str) -> Option<&SyntheticBook> {
        self.markets.get(symbol).map(|m| &m.book)
    }

    /// A [`Announcement::BookSnapshot`] of every symbol's book (in the universe's order), as
    /// of `at`: what a copy of the books kept from this engine's deltas must be replaced with.
    pub fn book_snapshots(&self, at: DateTime<Utc>) -> Vec<Announcement> {
        self.universe
            .names()
            .iter()
            .map(|symbol| {
                let book = self.book(symbol).cloned().unwrap_or_default();
                Announcement::BookSnapshot {
                    snapshot: BookUpdate {
                        symbol: symbol.clone(),
                        snapshot: true,
                        bids: book.bids,
                        asks: book.asks,
                        t: at,
                    },
                }
            })
            .collect()
    }

    pub fn account(&self, user: &str) -> Option<&Account> {
        self.accounts.get(user)
    }

    pub fn mark_price(&self, symbol: &str) -> Option<Decimal> {
        self.markets.get(symbol).map(|m| m.mark)
    }

    /// The user's last trade update sequence (0 before the first update).
    pub fn update_seq(&self, user: &str) -> u64 {
        self.update_seqs.get(user).copied().unwrap_or(0)
    }

    /// The id of the user's order with this `client_order_id`, even if the engine no longer
    /// keeps the order itself.
    pub fn order_id_by_client_id(&self, user: &str, client_order_id: &str) -> Option<&str> {
        self.client_order_ids
            .get(user)
            .and_then(|ids| ids.get(client_order_id))
            .map(String::as_str)
    }

    /// Every order the engine still holds, for invariant checks in tests.
    pub fn all_orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.values().map(|s| &s.order)
    }
}

fn not_found(target: &OrderRef) -> OrderError {
    let what = match target {
        OrderRef::Id(id) => format!("order {id}"),
        OrderRef::ClientOrderId(cid) => format!("order with client_order_id {cid:?}"),
    };
    OrderError::new(OrderError::NOT_FOUND, format!("{what} not found"))
}

fn new_order(
    terms: &NewOrder,
    client_order_id: String,
    replaces: Option<String>,
    now: DateTime<Utc>,
) -> Order {
    Order {
        id: Uuid::now_v7().to_string(),
        client_order_id,
        symbol: terms.symbol.clone(),
        side: terms.side,
        order_type: terms.order_type,
        time_in_force: terms.time_in_force,
        qty: terms.qty,
        filled_qty: Decimal::ZERO,
        filled_avg_price: None,
        limit_price: terms.limit_price,
        stop_price: terms.stop_price,
        status: OrderStatus::New,
        created_at: now,
        updated_at: now,
        submitted_at: now,
        filled_at: None,
        canceled_at: None,
        expired_at: None,
        replaced_by: None,
        replaces,
        commission: Decimal::ZERO,
    }
}

fn trade_update(user: &str, seq: u64, event: TradeEvent, order: &Order) -> Announcement {
    Announcement::User {
        user: user.to_owned(),
        event: UserEvent::TradeUpdate(Box::new(TradeUpdate {
            seq,
            event,
            execution_id: None,
            price: None,
            qty: None,
            position_qty: None,
            timestamp: order.updated_at,
            order: order.clone(),
        })),
    }
}

fn book_announcement(
    symbol: &str,
    book: &SyntheticBook,
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
    at: DateTime<Utc>,
) -> Announcement {
    Announcement::Book {
        snapshot: BookUpdate {
            symbol: symbol.to_owned(),
            snapshot: true,
            bids: book.bids.clone(),
            asks: book.asks.clone(),
            t: at,
        },
        delta: BookUpdate {
            symbol: symbol.to_owned(),
            snapshot: false,
            bids,
            asks,
            t: at,
        },
    }
}
