//! The exchange actor: one task owns the [`Engine`] and processes commands and market data in
//! arrival order; a cloneable [`ExchangeHandle`] reaches it over a bounded channel and
//! implements [`TradingApi`].
//!
//! Market data comes from the hub through the intake task (`trading::intake`) into a mailbox
//! that keeps only the newest trade and quote per symbol, so the hub never waits on the
//! exchange: when the exchange lags, the newest price wins.
//!
//! Book updates go out under the symbol's slot lock, which is also what [`TradingApi::book`]
//! takes to copy the snapshot and subscribe, so a reader never misses or repeats a delta.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::api::{
    BookUpdate, Order, OrderError, OrderQuery, OrderRef, OrderRequest, Portfolio, ReplaceRequest,
    Resume, TradeUpdate, TradingApi, UserEvent,
};
use super::book::BookShape;
use super::engine::{Announcement, Engine, EngineSettings};
pub use super::intake::MarketInput;
use super::intake::{Mailbox, ingest, subscribe_market};
use super::resume::{self, ResumePoint};
use super::validate::OrderLimits;
use crate::hub::{Hub, SubscriberQueue};
use crate::store::{StoreError, TradingStore};
use crate::trading::config::TradingSettings;

struct UserChannels {
    events: broadcast::Sender<UserEvent>,
    portfolio: watch::Sender<u64>,
    /// Without a store: the user's latest trade updates, for clients that resume.
    recent: VecDeque<TradeUpdate>,
}

/// Trade updates kept in memory per user for resuming clients when there is no store (with a
/// store, resumes read the stored updates).
const RECENT_UPDATES_WITHOUT_STORE: usize = 256;

/// One symbol's current book and the channel its deltas go out on. The cluster's per-node
/// mirror keeps the same pair, so both answer [`TradingApi::book`] with [`subscribe_book`].
pub struct BookSlot {
    pub snapshot: BookUpdate,
    pub updates: broadcast::Sender<BookUpdate>,
}

impl BookSlot {
    /// A change: the book after it becomes the snapshot, and `delta` goes to subscribers.
    pub fn apply(&mut self, snapshot: BookUpdate, delta: BookUpdate) {
        self.snapshot = snapshot;
        let _ = self.updates.send(delta);
    }

    /// Replaces the book with `snapshot` (a [`Announcement::BookSnapshot`]) and sends it to
    /// subscribers as a snapshot, which their sessions forward as a fresh `snapshot: true`
    /// frame. Returns whether the levels changed; a snapshot equal to the book held is kept
    /// (for its time) but not sent, since every subscriber's book already equals it.
    pub fn reset(&mut self, snapshot: BookUpdate) -> bool {
        let changed = self.snapshot.bids != snapshot.bids || self.snapshot.asks != snapshot.asks;
        self.snapshot = snapshot;
        if changed {
            let _ = self.updates.send(self.snapshot.clone());
        }
        changed
    }
}

/// The book of `symbol` (as a snapshot) and a receiver of the deltas after it, with no gap:
/// both are taken under the slot's lock, which is also held while a delta is sent.
pub fn subscribe_book(
    books: &HashMap<String, Mutex<BookSlot>>,
    symbol: &str,
) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError> {
    let slot = book_slot(books, symbol)?.lock();
    Ok((slot.snapshot.clone(), slot.updates.subscribe()))
}

/// The slot of `symbol` (any case, spaces around) in `books`, or the error for a symbol not
/// traded (a cluster node's mirrors use it too).
pub fn book_slot<'a, T>(
    books: &'a HashMap<String, Mutex<T>>,
    symbol: &str,
) -> Result<&'a Mutex<T>, OrderError> {
    let symbol = symbol.trim().to_ascii_uppercase();
    books
        .get(&symbol)
        .ok_or_else(|| OrderError::invalid(format!("symbol: {symbol:?} is not traded here")))
}

/// State the handle reads without a round trip to the actor.
pub(super) struct Shared {
    users: Mutex<HashMap<String, UserChannels>>,
    books: HashMap<String, Mutex<BookSlot>>,
    user_channel_capacity: usize,
    pub(super) mailbox: Arc<Mailbox>,
    /// Set when the exchange has a store: every step is stored before it is announced.
    pub(super) persistence: std::sync::OnceLock<Arc<super::persist::Persistence>>,
    /// Set on a cluster's exchange node: every announcement also goes to the other nodes.
    pub(super) outlet: std::sync::OnceLock<Arc<dyn AnnouncementOutlet>>,
}

/// Where a cluster's exchange hands its announcements (after they are stored, in order) so
/// that every node can deliver them to its own sessions.
pub trait AnnouncementOutlet: Send + Sync + 'static {
    fn announce(&self, announcements: &[Announcement]);
}

impl Shared {
    fn with_user<T>(&self, user: &str, f: impl FnOnce(&UserChannels) -> T) -> T {
        let mut users = self.users.lock();
        let channels = users
            .entry(user.to_owned())
            .or_insert_with(|| UserChannels::new(self.user_channel_capacity));
        f(channels)
    }

    /// Publishes announcements in order; portfolio bumps once per user per batch.
    pub(super) fn publish(&self, announcements: Vec<Announcement>) {
        if let Some(outlet) = self.outlet.get() {
            outlet.announce(&announcements);
        }
        let mut bumped = BTreeSet::new();
        for announcement in announcements {
            match announcement {
                Announcement::User { user, event } => {
                    let mut users = self.users.lock();
                    // Without a store the exchange keeps each user's latest updates itself,
                    // so a client that was away briefly can still resume (`resume::answer`).
                    if self.persistence.get().is_none() {
                        let channels = users
                            .entry(user)
                            .or_insert_with(|| UserChannels::new(self.user_channel_capacity));
                        let UserEvent::TradeUpdate(update) = &event;
                        if channels.recent.len() >= RECENT_UPDATES_WITHOUT_STORE {
                            channels.recent.pop_front();
                        }
                        channels.recent.push_back((**update).clone());
                        let _ = channels.events.send(event);
                    } else if let Some(channels) = users.get(&user) {
                        // No receiver is fine: nobody is watching this user right now.
                        let _ = channels.events.send(event);
                    }
                }
                Announcement::Portfolio { user } => {
                    bumped.insert(user);
                }
                Announcement::Book { snapshot, delta } => {
                    if let Some(slot) = self.books.get(&snapshot.symbol) {
                        slot.lock().apply(snapshot, delta);
                    }
                }
                Announcement::BookSnapshot { snapshot } => {
                    if let Some(slot) = self.books.get(&snapshot.symbol) {
                        slot.lock().reset(snapshot);
                    }
                }
                // Statuses reach sessions through the hub (or the nodes' listeners), not
                // through the exchange's channels.
                Announcement::Trading { .. } => {}
            }
        }
        if !bumped.is_empty() {
            let users = self.users.lock();
            for user in bumped {
                if let Some(channels) = users.get(&user) {
                    channels.portfolio.send_modify(|count| *count += 1);
                }
            }
        }
    }
}

impl UserChannels {
    fn new(capacity: usize) -> UserChannels {
        UserChannels {
            events: broadcast::channel(capacity).0,
            portfolio: watch::channel(0).0,
            recent: VecDeque::new(),
        }
    }
}

pub(super) enum Command {
    Submit {
        user: String,
        request: OrderRequest,
        /// The command's id in the cluster's command stream: its reply is stored with it.
        record: Option<String>,
        reply: oneshot::Sender<Result<Order, OrderError>>,
    },
    Cancel {
        user: String,
        target: OrderRef,
        record: Option<String>,
        reply: oneshot::Sender<Result<Order, OrderError>>,
    },
    Replace {
        user: String,
        target: OrderRef,
        patch: ReplaceRequest,
        record: Option<String>,
        reply: oneshot::Sender<Result<Order, OrderError>>,
    },
    Portfolio {
        user: String,
        reply: oneshot::Sender<Portfolio>,
    },
    Orders {
        user: String,
        query: OrderQuery,
        reply: oneshot::Sender<Vec<Order>>,
    },
    Resume {
        user: String,
        since: u64,
        reply: oneshot::Sender<ResumePoint>,
    },
    /// The order, or its id when the engine no longer keeps it (`Ok(Err(id))`).
    OrderByClientId {
        user: String,
        client_order_id: String,
        reply: oneshot::Sender<Result<Result<Order, String>, OrderError>>,
    },
    CloseSession {
        reply: oneshot::Sender<()>,
    },
    /// Runs after every command sent and market input pushed before it.
    Sync {
        reply: oneshot::Sender<()>,
    },
    /// Announces every book as a snapshot, in order with the deltas around it.
    AnnounceBooks {
        reply: oneshot::Sender<()>,
    },
}

/// The cloneable way in to the exchange.
#[derive(Clone)]
pub struct ExchangeHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// The exchange's tasks, built but not yet running (so an application can be built outside a
/// runtime and started later).
pub struct ExchangeTasks {
    engine: Engine,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    /// The hub and the queue already registered on its market feed.
    feed: Option<(Arc<Hub>, Arc<SubscriberQueue>)>,
    /// A cluster term's opening: the market's latest quotes, applied before anything else.
    opening: Option<Vec<MarketInput>>,
    shutdown: CancellationToken,
}

fn unavailable() -> OrderError {
    OrderError::new(OrderError::INTERNAL, "the exchange is not running")
}

/// Engine settings from the `[trading]` section and the simulator's opening prices.
pub fn engine_settings(
    trading: &TradingSettings,
    prices: &BTreeMap<String, f64>,
) -> EngineSettings {
    let tick_decimals = trading.tick_size.normalize().scale();
    EngineSettings {
        seed: trading.seed,
        starting_cash: trading.starting_cash,
        commission_per_share: trading.commission_per_share,
        allow_short: trading.allow_short,
        max_open_orders: trading.max_open_orders,
        closed_orders_kept: trading.closed_orders_kept,
        limits: OrderLimits {
            max_order_qty: trading.max_order_qty,
            qty_decimals: trading.qty_decimals,
            tick_size: trading.tick_size,
            max_price: trading.max_price,
        },
        book: BookShape {
            levels: trading.book_levels,
            tick_size: trading.tick_size,
        },
        initial_prices: prices
            .iter()
            .filter_map(|(symbol, price)| {
                let price = Decimal::from_f64(*price)?.round_dp(tick_decimals);
                Some((symbol.to_ascii_uppercase(), price))
            })
            .collect(),
    }
}

/// Starts the exchange and returns its handle: builds the engine from `settings` and the
/// opening `prices`, rebuilds it from `store` when there is one (and from then on stores
/// every step before announcing it), follows `hub`'s market feed from this moment on, and
/// spawns its tasks, which end when `shutdown` fires.
///
/// The tasks run on the current Tokio runtime. An exchange started outside one (an
/// application built before its runtime, as some embedders do) gets a one-thread runtime of
/// its own on a dedicated thread, which ends when `shutdown` fires; either way it follows the
/// market from this moment. Start-up only: with a store it waits for the store's reads.
pub fn start(
    settings: &TradingSettings,
    prices: &BTreeMap<String, f64>,
    hub: Arc<Hub>,
    store: Option<Arc<dyn TradingStore>>,
    shutdown: CancellationToken,
) -> Result<ExchangeHandle, StartError> {
    let mut engine = Engine::new(engine_settings(settings, prices), hub.universe().clone());
    let update_log = super::persist::UpdateLogSettings {
        retention: settings.updates_retention,
        prune_interval: std::time::Duration::from_secs(3600).min(settings.updates_retention),
        max_resume_updates: settings.max_resume_updates,
    };
    let persistence = store
        .map(|store| super::persist::rebuild(&mut engine, store, settings.closed_orders_kept))
        .transpose()?
        .map(|persistence| persistence.with_update_log(update_log));
    let (handle, tasks) = ExchangeHandle::new(
        engine,
        Some(hub),
        settings.command_queue,
        settings.book_channel_capacity,
        settings.user_channel_capacity,
        shutdown.clone(),
    );
    let tasks = match persistence {
        Some(persistence) => tasks.with_persistence(Arc::new(persistence)),
        None => tasks,
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        tasks.spawn();
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        std::thread::Builder::new()
            .name("tickgate-exchange".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tasks.spawn();
                    shutdown.cancelled().await;
                });
            })
            .map_err(StartError::Runtime)?;
    }
    Ok(handle)
}

/// Why the exchange could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not start the exchange's runtime: {0}")]
    Runtime(std::io::Error),
}

impl ExchangeHandle {
    /// Builds the exchange for `engine`. With a hub, the exchange follows its market feed.
    pub fn new(
        engine: Engine,
        hub: Option<Arc<Hub>>,
        command_queue: usize,
        book_channel_capacity: usize,
        user_channel_capacity: usize,
        shutdown: CancellationToken,
    ) -> (ExchangeHandle, ExchangeTasks) {
        let now = Utc::now();
        let books = engine
            .universe()
            .names()
            .iter()
            .map(|symbol| {
                let book = engine.book(symbol).cloned().unwrap_or_default();
                let slot = BookSlot {
                    snapshot: BookUpdate {
                        symbol: symbol.clone(),
                        snapshot: true,
                        bids: book.bids,
                        asks: book.asks,
                        t: now,
                    },
                    updates: broadcast::channel(book_channel_capacity.max(1)).0,
                };
                (symbol.clone(), Mutex::new(slot))
            })
            .collect();
        let shared = Arc::new(Shared {
            users: Mutex::new(HashMap::new()),
            books,
            user_channel_capacity: user_channel_capacity.max(1),
            mailbox: Arc::new(Mailbox::default()),
            persistence: std::sync::OnceLock::new(),
            outlet: std::sync::OnceLock::new(),
        });
        let (sender, receiver) = mpsc::channel(command_queue.max(1));
        // Subscribe now rather than in the task, so no event published between building and
        // the first poll of the task is missed.
        let feed = hub.map(|hub| {
            let queue = subscribe_market(&hub);
            (hub, queue)
        });
        (
            ExchangeHandle {
                commands: sender,
                shared: Arc::clone(&shared),
            },
            ExchangeTasks {
                engine,
                commands: receiver,
                shared,
                feed,
                opening: None,
                shutdown,
            },
        )
    }

    /// Whether the exchange's actor still takes commands (it stops at shutdown, or when a
    /// cluster exchange's lease is lost).
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Feeds market data directly (tests, replays); the hub feed uses the same mailbox.
    pub fn push_market(&self, input: MarketInput) {
        self.shared.mailbox.push(input);
    }

    /// Expires every open `day` order now, as a `market_closed` status would.
    pub async fn close_session(&self) -> Result<(), OrderError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::CloseSession { reply })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }

    /// Resolves once the exchange has processed everything sent or pushed before this call.
    pub async fn sync(&self) -> Result<(), OrderError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Sync { reply })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }

    /// Announces every book's current state (`Announcement::BookSnapshot`), in order with
    /// the deltas before and after it: a cluster node that may hold stale copies asks for it.
    pub async fn announce_books(&self) -> Result<(), OrderError> {
        self.request(|reply| Command::AnnounceBooks { reply }).await
    }

    fn request<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> BoxFuture<'static, Result<T, OrderError>> {
        let commands = self.commands.clone();
        let (reply, answer) = oneshot::channel();
        let command = make(reply);
        Box::pin(async move {
            commands.send(command).await.map_err(|_| unavailable())?;
            answer.await.map_err(|_| unavailable())
        })
    }
}

/// State changes with an optional command id (cluster trading): the reply is stored under the
/// id in the same batch as the change's effects (see `trading::command`).
impl ExchangeHandle {
    pub fn submit_with(
        &self,
        record: Option<String>,
        user: &str,
        request: OrderRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let user = user.to_owned();
        let wanted = request.client_order_id.clone();
        let shared = Arc::clone(&self.shared);
        let future = self.request(|reply| Command::Submit {
            user: user.clone(),
            request,
            record,
            reply,
        });
        Box::pin(async move {
            resume::complete_duplicate(shared.persistence.get(), &user, wanted, future.await?).await
        })
    }

    pub fn cancel_with(
        &self,
        record: Option<String>,
        user: &str,
        target: OrderRef,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let user = user.to_owned();
        let future = self.request(|reply| Command::Cancel {
            user,
            target,
            record,
            reply,
        });
        Box::pin(async move { future.await? })
    }

    pub fn replace_with(
        &self,
        record: Option<String>,
        user: &str,
        target: OrderRef,
        patch: ReplaceRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let user = user.to_owned();
        let wanted = patch.client_order_id.clone();
        let shared = Arc::clone(&self.shared);
        let future = self.request(|reply| Command::Replace {
            user: user.clone(),
            target,
            patch,
            record,
            reply,
        });
        Box::pin(async move {
            resume::complete_duplicate(shared.persistence.get(), &user, wanted, future.await?).await
        })
    }
}

impl TradingApi for ExchangeHandle {
    fn submit(
        &self,
        user: &str,
        request: OrderRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        self.submit_with(None, user, request)
    }

    fn cancel(
        &self,
        user: &str,
        target: OrderRef,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        self.cancel_with(None, user, target)
    }

    fn replace(
        &self,
        user: &str,
        target: OrderRef,
        patch: ReplaceRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        self.replace_with(None, user, target, patch)
    }

    fn portfolio(&self, user: &str) -> BoxFuture<'static, Result<Portfolio, OrderError>> {
        let user = user.to_owned();
        self.request(|reply| Command::Portfolio { user, reply })
    }

    fn orders(
        &self,
        user: &str,
        query: OrderQuery,
    ) -> BoxFuture<'static, Result<Vec<Order>, OrderError>> {
        let user = user.to_owned();
        self.request(|reply| Command::Orders { user, query, reply })
    }

    fn halted(&self) -> bool {
        super::actor::halted(&self.shared).is_some()
    }

    fn user_events(&self, user: &str) -> broadcast::Receiver<UserEvent> {
        self.shared
            .with_user(user, |channels| channels.events.subscribe())
    }

    fn updates_since(
        &self,
        user: &str,
        since: u64,
    ) -> BoxFuture<'static, Result<Resume, OrderError>> {
        let user = user.to_owned();
        let shared = Arc::clone(&self.shared);
        let point = self.request(|reply| Command::Resume {
            user: user.clone(),
            since,
            reply,
        });
        Box::pin(async move {
            let point = point.await?;
            let persistence = shared.persistence.get().cloned();
            let recent = |after: u64, up_to: u64| {
                shared.with_user(&user, |channels| {
                    channels
                        .recent
                        .iter()
                        .filter(|u| u.seq > after && u.seq <= up_to)
                        .cloned()
                        .collect()
                })
            };
            resume::answer(&user, since, point, persistence, recent).await
        })
    }

    fn order_by_client_id(
        &self,
        user: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let user = user.to_owned();
        let client_order_id = client_order_id.to_owned();
        let shared = Arc::clone(&self.shared);
        let future = self.request(|reply| Command::OrderByClientId {
            user: user.clone(),
            client_order_id: client_order_id.clone(),
            reply,
        });
        Box::pin(async move {
            match future.await?? {
                Ok(order) => Ok(order),
                Err(id) => resume::stored_order(shared.persistence.get(), &user, &client_order_id)
                    .await?
                    .ok_or_else(|| resume::forgotten(&id)),
            }
        })
    }

    fn portfolio_changes(&self, user: &str) -> watch::Receiver<u64> {
        self.shared
            .with_user(user, |channels| channels.portfolio.subscribe())
    }

    fn book(
        &self,
        symbol: &str,
    ) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError> {
        subscribe_book(&self.shared.books, symbol)
    }
}

impl ExchangeTasks {
    /// Hands every announcement to `outlet` too (a cluster's exchange node).
    pub fn with_outlet(self, outlet: Arc<dyn AnnouncementOutlet>) -> Self {
        let _ = self.shared.outlet.set(outlet);
        self
    }

    /// Stores every step in `persistence` before announcing it (see [`super::persist`]).
    pub fn with_persistence(self, persistence: Arc<super::persist::Persistence>) -> Self {
        let _ = self.shared.persistence.set(persistence);
        self
    }

    /// Opens a cluster term: before any command or market event, the actor applies `quotes`
    /// (the market's latest, which this exchange did not see arrive), stores what they caused,
    /// and announces every book as a snapshot (see `actor::open_term`).
    pub fn with_term_opening(mut self, quotes: Vec<MarketInput>) -> Self {
        self.opening = Some(quotes);
        self
    }

    /// Spawns the actor and, with a hub, the ingest task. Needs a Tokio runtime.
    pub fn spawn(self) {
        let ExchangeTasks {
            engine,
            commands,
            shared,
            feed,
            opening,
            shutdown,
        } = self;
        let hub = feed.as_ref().map(|(hub, _)| Arc::clone(hub));
        if let Some(persistence) = shared.persistence.get() {
            tokio::spawn(Arc::clone(persistence).run_update_pruner(shutdown.clone()));
        }
        if let Some((hub, queue)) = feed {
            tokio::spawn(ingest(
                hub,
                queue,
                Arc::clone(&shared.mailbox),
                shutdown.clone(),
            ));
        }
        tokio::spawn(super::actor::run_actor(
            engine, commands, shared, hub, opening, shutdown,
        ));
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
