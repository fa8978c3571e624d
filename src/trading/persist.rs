//! Persistence of the exchange: which engine events are stored, the rows they update, the
//! rebuild of the engine from the store at start-up, and the halt after a failed write.
//!
//! The engine's events are the source of truth: replaying the stored ones in order rebuilds
//! accounts, positions, open orders (with time priority and stop triggers) and recent closed
//! orders. Market-following events (`MarkMoved`, `BookRefreshed`) are not stored; the next
//! trade or quote recreates them. Order, fill, account and position rows are derived from the
//! same step and stored in the same transaction, for queries and audits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::api::{Order, OrderError, UserEvent};
use super::engine::{Announcement, Engine, ExchangeEvent, Outcome};
use crate::store::{
    AccountRecord, CommandRecord, Fence, FillRecord, PositionRecord, StoreError, StoredOrder,
    StoredUpdate, TradingBatch, TradingState, TradingStore,
};

/// The stored form of an [`ExchangeEvent`]. Field names are part of the file format: add
/// variants or optional fields, never rename.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
enum LoggedEvent {
    AccountOpened {
        user: String,
        cash: Decimal,
    },
    OrderAccepted {
        user: String,
        order: Box<Order>,
    },
    StopTriggered {
        order_id: String,
    },
    OrderFilled {
        order_id: String,
        execution_id: String,
        price: Decimal,
        qty: Decimal,
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
    OrderReplaced {
        order_id: String,
        replaced_by: String,
        at: DateTime<Utc>,
    },
}

/// The stored form of an event, or `None` for events the market recreates.
fn logged(event: &ExchangeEvent) -> Option<LoggedEvent> {
    Some(match event.clone() {
        ExchangeEvent::AccountOpened { user, cash } => LoggedEvent::AccountOpened { user, cash },
        ExchangeEvent::OrderAccepted { user, order } => LoggedEvent::OrderAccepted { user, order },
        ExchangeEvent::StopTriggered { order_id } => LoggedEvent::StopTriggered { order_id },
        ExchangeEvent::OrderFilled {
            order_id,
            execution_id,
            price,
            qty,
            book_level,
            at,
        } => LoggedEvent::OrderFilled {
            order_id,
            execution_id,
            price,
            qty,
            book_level,
            at,
        },
        ExchangeEvent::OrderCanceled { order_id, at } => {
            LoggedEvent::OrderCanceled { order_id, at }
        }
        ExchangeEvent::OrderExpired { order_id, at } => LoggedEvent::OrderExpired { order_id, at },
        ExchangeEvent::OrderReplaced {
            order_id,
            replaced_by,
            at,
        } => LoggedEvent::OrderReplaced {
            order_id,
            replaced_by,
            at,
        },
        ExchangeEvent::MarkMoved { .. } | ExchangeEvent::BookRefreshed { .. } => return None,
    })
}

/// The engine event for a stored one. A replayed fill's `book_level` takes its quantity from
/// the freshly generated book, which is harmless: the next quote regenerates the book.
fn restored(event: LoggedEvent) -> ExchangeEvent {
    match event {
        LoggedEvent::AccountOpened { user, cash } => ExchangeEvent::AccountOpened { user, cash },
        LoggedEvent::OrderAccepted { user, order } => ExchangeEvent::OrderAccepted { user, order },
        LoggedEvent::StopTriggered { order_id } => ExchangeEvent::StopTriggered { order_id },
        LoggedEvent::OrderFilled {
            order_id,
            execution_id,
            price,
            qty,
            book_level,
            at,
        } => ExchangeEvent::OrderFilled {
            order_id,
            execution_id,
            price,
            qty,
            book_level,
            at,
        },
        LoggedEvent::OrderCanceled { order_id, at } => {
            ExchangeEvent::OrderCanceled { order_id, at }
        }
        LoggedEvent::OrderExpired { order_id, at } => ExchangeEvent::OrderExpired { order_id, at },
        LoggedEvent::OrderReplaced {
            order_id,
            replaced_by,
            at,
        } => ExchangeEvent::OrderReplaced {
            order_id,
            replaced_by,
            at,
        },
    }
}

/// Everything some engine steps changed, read from their events and announcements and from
/// the engine right after the last of them.
pub fn batch_for_steps(engine: &Engine, outs: &[&Outcome]) -> Result<TradingBatch, StoreError> {
    let mut batch = TradingBatch::default();
    let mut users: BTreeSet<String> = BTreeSet::new();
    for event in outs.iter().flat_map(|out| &out.events) {
        if let Some(logged) = logged(event) {
            let text = serde_json::to_string(&logged).map_err(|e| StoreError::Decode {
                path: "exchange event".into(),
                detail: e.to_string(),
            })?;
            batch.events.push(text);
        }
        if let ExchangeEvent::AccountOpened { user, .. } = event {
            users.insert(user.clone());
        }
    }
    if batch.events.is_empty() {
        return Ok(batch);
    }
    // Every order transition announces exactly one trade update with the full order, so the
    // announcements name every order and account the step touched, and every fill.
    let commission_per_share = engine.settings().commission_per_share;
    let mut orders: BTreeMap<String, StoredOrder> = BTreeMap::new();
    let mut touched_symbols: BTreeSet<(String, String)> = BTreeSet::new();
    for announcement in outs.iter().flat_map(|out| &out.announcements) {
        let Announcement::User {
            user,
            event: UserEvent::TradeUpdate(update),
        } = announcement
        else {
            continue;
        };
        users.insert(user.clone());
        batch.updates.push(StoredUpdate {
            username: user.clone(),
            update: (**update).clone(),
        });
        if let (Some(execution_id), Some(price), Some(qty)) =
            (&update.execution_id, update.price, update.qty)
        {
            batch.fills.push(FillRecord {
                execution_id: execution_id.clone(),
                order_id: update.order.id.clone(),
                username: user.clone(),
                symbol: update.order.symbol.clone(),
                side: update.order.side,
                qty,
                price,
                commission: qty * commission_per_share,
                timestamp: update.timestamp,
            });
            touched_symbols.insert((user.clone(), update.order.symbol.clone()));
        }
        orders.insert(
            update.order.id.clone(),
            StoredOrder {
                username: user.clone(),
                order: update.order.clone(),
            },
        );
    }
    // The engine's current entity is the step's final state of each order.
    for stored in orders.values_mut() {
        if let Ok(order) = engine.order(&stored.order.id) {
            stored.order = order;
        }
    }
    batch.orders = orders.into_values().collect();
    let now = Utc::now();
    for user in &users {
        let Some(account) = engine.account(user) else {
            continue;
        };
        batch.accounts.push(AccountRecord {
            username: user.clone(),
            initial_cash: account.starting_cash,
            cash: account.cash,
            realized_pl: account.realized_pl,
            commissions: account.commissions,
            updated_at: now,
        });
    }
    for (user, symbol) in touched_symbols {
        let position = engine
            .account(&user)
            .and_then(|account| account.positions.get(&symbol))
            .cloned()
            .unwrap_or_default();
        batch.positions.push(PositionRecord {
            username: user,
            symbol,
            qty: position.qty,
            cost_basis: position.cost_basis,
        });
    }
    Ok(batch)
}

/// Rebuilds `engine` by replaying the stored events, then checks the result against the
/// stored account rows and trade updates. Returns how many events were replayed.
///
/// Replaying gives every user's update sequence back (each order transition is numbered by
/// [`Engine::apply`]), so the newest stored update of a user must carry exactly the rebuilt
/// sequence. A user without stored updates (all pruned, or a file written before updates were
/// stored) only needs a sequence of at least zero.
pub fn restore(engine: &mut Engine, state: &TradingState) -> Result<usize, StoreError> {
    for (index, text) in state.events.iter().enumerate() {
        let event: LoggedEvent = serde_json::from_str(text).map_err(|e| StoreError::Decode {
            path: "exchange_events".into(),
            detail: format!("event {}: {e}", index + 1),
        })?;
        engine.apply(&restored(event));
    }
    for record in &state.accounts {
        let rebuilt = engine.account(&record.username).map(|a| a.cash);
        if rebuilt != Some(record.cash) {
            return Err(StoreError::Decode {
                path: "exchange_events".into(),
                detail: format!(
                    "replaying the events gives {} cash {:?}, the accounts table says {}; the store is inconsistent",
                    record.username, rebuilt, record.cash
                ),
            });
        }
    }
    for (user, stored) in &state.update_seqs {
        let rebuilt = engine.update_seq(user);
        if rebuilt != *stored {
            return Err(StoreError::Decode {
                path: "trade_updates".into(),
                detail: format!(
                    "replaying the events gives {user} update sequence {rebuilt}, the newest stored update has {stored}; the store is inconsistent"
                ),
            });
        }
    }
    Ok(state.events.len())
}

/// The exchange's link to its store. After a failed write the exchange halts: it refuses
/// further orders, so memory never runs ahead of what is stored.
pub struct Persistence {
    store: Arc<dyn TradingStore>,
    halted: AtomicBool,
    updates: UpdateLogSettings,
    /// On a cluster's exchange node: the lease it runs under.
    lease: Option<LeaseFence>,
}

/// An exchange running under a lease (cluster trading): every batch it stores carries
/// `fence`, and `stop` fires when the lease is lost or the store refused the fence.
#[derive(Debug, Clone)]
pub struct LeaseFence {
    pub fence: Fence,
    pub stop: tokio_util::sync::CancellationToken,
}

/// How the stored trade updates are kept and replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateLogSettings {
    /// Stored updates older than this are pruned (`trading.updates_retention`).
    pub retention: Duration,
    /// How often the pruner runs (hourly, or as often as the retention if that is shorter).
    pub prune_interval: Duration,
    /// Most updates one resume replays (`trading.max_resume_updates`).
    pub max_resume_updates: usize,
}

impl Default for UpdateLogSettings {
    fn default() -> Self {
        UpdateLogSettings {
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(3600),
            max_resume_updates: 10_000,
        }
    }
}

/// Rows deleted per prune step, so trading commits queued behind a prune wait little.
const UPDATE_PRUNE_CHUNK: usize = 5_000;

/// Runs `prune` (which deletes up to a chunk of rows stored before `before`) until a chunk
/// comes back short, a step fails, or `shutdown` fires.
async fn prune_in_chunks<F>(
    what: &str,
    before: DateTime<Utc>,
    shutdown: &tokio_util::sync::CancellationToken,
    mut prune: F,
) where
    F: FnMut(usize) -> futures::future::BoxFuture<'static, Result<u64, crate::store::StoreError>>,
{
    let mut removed = 0u64;
    loop {
        match prune(UPDATE_PRUNE_CHUNK).await {
            Ok(count) => {
                removed += count;
                if count < UPDATE_PRUNE_CHUNK as u64 || shutdown.is_cancelled() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, what, "pruning failed");
                break;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, what, %before, "pruned old rows");
    }
}

impl Persistence {
    pub fn new(store: Arc<dyn TradingStore>) -> Persistence {
        Persistence {
            store,
            halted: AtomicBool::new(false),
            updates: UpdateLogSettings::default(),
            lease: None,
        }
    }

    /// Stores every batch with the lease's fence (see [`LeaseFence`]).
    pub fn with_lease(mut self, lease: LeaseFence) -> Persistence {
        self.lease = Some(lease);
        self
    }

    /// Whether announcing is still allowed: always without a lease, and under a lease only
    /// while it is held (a fenced or expired exchange publishes nothing).
    pub fn may_announce(&self) -> bool {
        self.lease
            .as_ref()
            .is_none_or(|lease| !lease.stop.is_cancelled())
    }

    pub fn with_update_log(mut self, updates: UpdateLogSettings) -> Persistence {
        self.updates = updates;
        self
    }

    pub fn max_resume_updates(&self) -> usize {
        self.updates.max_resume_updates
    }

    /// Deletes stored trade updates and command replies older than the retention, every prune
    /// interval, until `shutdown`.
    pub async fn run_update_pruner(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Ok(retention) = chrono::Duration::from_std(self.updates.retention) else {
            tracing::info!("trade update retention is unbounded; pruner not started");
            return;
        };
        let mut ticker = tokio::time::interval(self.updates.prune_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(before) = Utc::now().checked_sub_signed(retention) else {
                continue;
            };
            let store = &self.store;
            prune_in_chunks("trade updates", before, &shutdown, |chunk| {
                store.prune_updates(before, chunk)
            })
            .await;
            // Command replies (cluster trading) share the retention: a command is not
            // delivered again long after it ran.
            prune_in_chunks("command replies", before, &shutdown, |chunk| {
                store.prune_commands(before, chunk)
            })
            .await;
        }
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// The store, for reads (resumes, orders the engine no longer keeps).
    pub fn store(&self) -> &Arc<dyn TradingStore> {
        &self.store
    }

    pub fn halted_error() -> OrderError {
        OrderError::new(
            OrderError::INTERNAL,
            "trading is halted: the exchange could not store a change (see /readyz); it resumes by itself once the store accepts writes again",
        )
    }

    /// Tries to end a halt: a probe write, then the engine rebuilt from what is stored (the
    /// steps whose write failed were applied in memory but never acknowledged or announced,
    /// so the stored state is the truth). On success the halt is lifted; on `Err` nothing
    /// changed and the caller retries later.
    pub async fn recover(&self, engine: &mut Engine) -> Result<(), StoreError> {
        self.store.probe().await?;
        let state = self
            .store
            .load(engine.settings().closed_orders_kept)
            .await?;
        let mut fresh = Engine::new(engine.settings().clone(), engine.universe().clone());
        restore(&mut fresh, &state)?;
        *engine = fresh;
        self.halted.store(false, Ordering::Relaxed);
        tracing::info!("the store accepts writes again; exchange rebuilt from it, trading resumed");
        Ok(())
    }

    /// Stores the steps durably and atomically; `Err` (and a halt) if they could not be.
    pub async fn store_steps(
        &self,
        engine: &Engine,
        outs: &[&Outcome],
        commands: Vec<CommandRecord>,
    ) -> Result<(), OrderError> {
        if self.is_halted() {
            return Err(Persistence::halted_error());
        }
        if let Some(lease) = &self.lease
            && lease.stop.is_cancelled()
        {
            return Err(crate::trading::command::exchange_unavailable());
        }
        let result = match batch_for_steps(engine, outs) {
            Ok(mut batch) => {
                batch.commands = commands;
                if batch.is_empty() {
                    return Ok(());
                }
                // Only a batch with something in it carries the fence: one of nothing would
                // be a write on every market tick.
                batch.fence = self.lease.as_ref().map(|lease| lease.fence.clone());
                self.store.commit(batch).await
            }
            Err(error) => Err(error),
        };
        if let (Err(StoreError::Fenced { token, current, .. }), Some(lease)) =
            (&result, &self.lease)
        {
            // A newer exchange writes now: this one stops at once, announces nothing more,
            // and is not halted (there is nothing to recover; the lease is gone).
            tracing::warn!(
                token,
                current,
                "the store refused a batch of a former exchange (fenced); exchange stopped"
            );
            lease.stop.cancel();
            return Err(crate::trading::command::exchange_unavailable());
        }
        result.map_err(|error| {
            tracing::error!(%error, "could not store an exchange step; trading halted");
            self.halted.store(true, Ordering::Relaxed);
            Persistence::halted_error()
        })
    }
}

/// [`rebuild`] without blocking: for an exchange that starts while the node runs (a cluster
/// node taking the exchange's lease).
pub async fn rebuild_async(
    engine: &mut Engine,
    store: Arc<dyn TradingStore>,
    closed_orders_kept: usize,
) -> Result<Persistence, StoreError> {
    let state = store.load(closed_orders_kept).await?;
    let replayed = restore(engine, &state)?;
    tracing::info!(
        events = replayed,
        open_orders = state.open_orders.len(),
        accounts = state.accounts.len(),
        "exchange rebuilt from the store"
    );
    Ok(Persistence::new(store))
}

/// Rebuilds `engine` from `store` (the last `closed_orders_kept` closed orders per user) and
/// returns the link through which the exchange stores every later step. Start-up only: it
/// waits for the store's reads.
pub fn rebuild(
    engine: &mut Engine,
    store: Arc<dyn TradingStore>,
    closed_orders_kept: usize,
) -> Result<Persistence, StoreError> {
    let state = futures::executor::block_on(store.load(closed_orders_kept))?;
    let replayed = restore(engine, &state)?;
    tracing::info!(
        events = replayed,
        open_orders = state.open_orders.len(),
        accounts = state.accounts.len(),
        "exchange rebuilt from the store"
    );
    Ok(Persistence::new(store))
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
