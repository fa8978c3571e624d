//! Durable state behind a small interface: orders, fills, accounts and positions
//! ([`TradingStore`]), one-minute bar history ([`HistoryStore`]) and where the public feeds'
//! sequences stand ([`FeedStateStore`]). SQLite ([`sqlite`]) is the embedded default;
//! PostgreSQL ([`postgres`], `store.backend = "postgres"`) is the database a cluster's nodes
//! share. The traits have whole-batch commits and no connection handles or SQL types in
//! their signatures, so both backends implement them alike.
//!
//! Invariants:
//! - A [`TradingBatch`] is queued when [`TradingStore::commit`] is called, so batches commit in
//!   call order, and the returned future resolves only once the batch is durable (fsynced).
//!   The exchange acknowledges and announces a transition only after that.
//! - No database call blocks the async executor's threads: SQLite writes go to one dedicated
//!   writer thread and its reads to `spawn_blocking`; PostgreSQL's connections run on a small
//!   runtime of the store's own, writes through one writer task.
//! - A feed's cursor epoch changes only when its history really starts afresh (see
//!   [`FeedStart`] and `docs/storage.md`).
//! - Every trade update is stored in the same transaction as the order transition that caused
//!   it, under its per-user `seq` ([`StoredUpdate`]); a `client_order_id` is unique per user
//!   among the stored orders (a unique index backs the exchange's own check).
//! - A batch with a [`Fence`] commits only if its token is not older than the newest token
//!   recorded for that fence, checked and recorded in the batch's own transaction; the replies
//!   of the commands a batch executed ([`CommandRecord`]) are stored in that transaction too.

pub mod history;
pub mod migrations;
pub mod postgres;
mod settings;
pub mod sqlite;

pub use settings::{StoreBackend, StoreSettings};

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::hub::{Feed, Hub};
use crate::market::Bar;
use crate::trading::api::{Order, Side, TradeUpdate};

/// Why the store could not do what was asked. Every variant names the database file, and the
/// start-up ones say what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the data directory {path}: {detail}; check store.data_dir and its permissions"
    )]
    DataDir { path: String, detail: String },
    #[error(
        "database file {path} is missing and store.create_if_missing is false; restore it from a backup (see docs/storage.md) or set store.create_if_missing = true to start empty"
    )]
    Missing { path: String },
    #[error(
        "database file {path} is missing but its write-ahead log {wal} exists, so the file was probably deleted by hand; restore it from a backup (see docs/storage.md) or remove the -wal and -shm files to start empty"
    )]
    MissingWithWal { path: String, wal: String },
    #[error(
        "another tickgate process is using the store in {path} (it holds {lock}); stop it, or give this instance its own store.data_dir"
    )]
    InUse { path: String, lock: String },
    #[error("cannot open database {path}: {detail}")]
    Open { path: String, detail: String },
    #[error(
        "database {path} is corrupt or not a tickgate database ({detail}); restore it from a backup (see docs/storage.md) or move it away to start with an empty store"
    )]
    Corrupt { path: String, detail: String },
    #[error(
        "database {path} has schema version {found}, newer than this tickgate supports ({supported}); run the tickgate version that wrote it, or restore a backup made by this version"
    )]
    NewerSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("migration {version} ({name}) failed on {path}: {detail}")]
    Migration {
        path: String,
        version: u32,
        name: String,
        detail: String,
    },
    #[error("disk full while writing {path}; the write was not stored. Free space on the volume")]
    DiskFull { path: String },
    #[error("database error on {path}: {detail}")]
    Database { path: String, detail: String },
    #[error("stored data in {path} could not be read back: {detail}")]
    Decode { path: String, detail: String },
    #[error(
        "fenced: the batch carries token {token} for {name:?} but the store has already seen token {current}; a newer holder of that lease writes now, so nothing of the batch was stored"
    )]
    Fenced {
        name: String,
        token: u64,
        current: u64,
    },
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// Whether a write's error says the database itself is in trouble (a full disk,
    /// corruption), not just that this write was refused: the writers mark the store degraded
    /// for it even when the rest of the group commits.
    pub fn troubles_the_database(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. } | StoreError::Corrupt { .. }
        )
    }
}

/// A user from configuration, with the password already hashed (never the password itself).
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Cash state of one account. `initial_cash` is kept so the books can be audited against fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub username: String,
    pub initial_cash: Decimal,
    pub cash: Decimal,
    pub realized_pl: Decimal,
    pub commissions: Decimal,
    pub updated_at: DateTime<Utc>,
}

/// One position; a zero quantity removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionRecord {
    pub username: String,
    pub symbol: String,
    /// Signed: negative for a short position.
    pub qty: Decimal,
    /// Signed: what the open shares cost (negative: what a short sale brought in).
    pub cost_basis: Decimal,
}

/// One execution. Fills are append-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillRecord {
    pub execution_id: String,
    pub order_id: String,
    pub username: String,
    pub symbol: String,
    pub side: Side,
    pub qty: Decimal,
    pub price: Decimal,
    pub commission: Decimal,
    pub timestamp: DateTime<Utc>,
}

impl FillRecord {
    /// What the fill did to cash: a buy pays, a sell receives, commission always costs.
    pub fn cash_delta(&self) -> Decimal {
        let notional = self.qty * self.price;
        match self.side {
            Side::Buy => -notional - self.commission,
            Side::Sell => notional - self.commission,
        }
    }

    /// What the fill did to the position quantity.
    pub fn qty_delta(&self) -> Decimal {
        match self.side {
            Side::Buy => self.qty,
            Side::Sell => -self.qty,
        }
    }
}

/// An order with the account it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOrder {
    pub username: String,
    pub order: Order,
}

/// One trade update as sent to the user's sessions, kept for resuming clients.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUpdate {
    pub username: String,
    /// Carries its `seq`, unique per user.
    pub update: TradeUpdate,
}

/// A fencing token carried by a batch: the batch commits only if no batch with a larger token
/// for the same `name` (a lease) has committed before it. The token is recorded in the same
/// transaction, so a former lease holder that resumes after a newer holder wrote is refused
/// ([`StoreError::Fenced`]) and stores nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub token: u64,
}

/// The reply to one command (by its id, as the command stream names it), stored with the batch
/// that executed it: a command delivered again is answered from here instead of running twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub id: String,
    /// The reply as the exchange encoded it (opaque to the store).
    pub reply: String,
}

/// Everything one exchange step changed, stored atomically: events appended to the log,
/// order rows upserted with their full entity, fills and trade updates appended, accounts
/// and positions overwritten.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TradingBatch {
    /// The exchange's events, encoded by the exchange (opaque to the store), in order.
    pub events: Vec<String>,
    pub orders: Vec<StoredOrder>,
    pub fills: Vec<FillRecord>,
    pub accounts: Vec<AccountRecord>,
    pub positions: Vec<PositionRecord>,
    /// The trade updates the step sends, in order.
    pub updates: Vec<StoredUpdate>,
    /// When set, the whole batch is refused with [`StoreError::Fenced`] unless its token is at
    /// least the largest one recorded for the fence's name (which it then becomes).
    pub fence: Option<Fence>,
    /// Replies of the commands the batch executed. An id already stored fails the batch: a
    /// command is never recorded as executed twice.
    pub commands: Vec<CommandRecord>,
}

impl TradingBatch {
    pub fn is_empty(&self) -> bool {
        !self.has_rows() && self.fence.is_none()
    }

    /// Whether the batch writes anything besides its fence.
    pub fn has_rows(&self) -> bool {
        !(self.events.is_empty()
            && self.orders.is_empty()
            && self.fills.is_empty()
            && self.accounts.is_empty()
            && self.positions.is_empty()
            && self.updates.is_empty()
            && self.commands.is_empty())
    }
}

/// What the exchange needs to resume after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TradingState {
    /// Every stored exchange event, in commit order: replaying them rebuilds the exchange.
    pub events: Vec<String>,
    /// Active users (those in the configuration at the last sync).
    pub users: Vec<String>,
    pub accounts: Vec<AccountRecord>,
    pub positions: Vec<PositionRecord>,
    /// Orders that can still fill, oldest first: the exchange re-enters them in this order.
    pub open_orders: Vec<StoredOrder>,
    /// The most recent closed orders of each account (for `GET /v1/orders`), oldest first.
    pub closed_orders: Vec<StoredOrder>,
    /// The highest stored trade update `seq` of each user who has stored updates.
    pub update_seqs: BTreeMap<String, u64>,
}

/// Durable orders and accounts.
pub trait TradingStore: Send + Sync + 'static {
    /// Queues `batch` immediately (batches commit in call order, even if the returned futures
    /// are awaited later or concurrently) and resolves once it is durable. On `Err` nothing of
    /// the batch is stored, and the caller must not acknowledge or announce it.
    fn commit(&self, batch: TradingBatch) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Upserts the configured users; users no longer configured are marked inactive, never
    /// deleted, so their orders and fills stay on record.
    fn sync_users(&self, users: Vec<UserRecord>) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Accounts, positions and orders to rebuild the exchange from.
    fn load(
        &self,
        closed_orders_per_user: usize,
    ) -> BoxFuture<'static, Result<TradingState, StoreError>>;
    /// Every fill of one account, in execution order.
    fn fills(&self, username: &str) -> BoxFuture<'static, Result<Vec<FillRecord>, StoreError>>;
    /// A small durable write that stores nothing of the exchange's: whether the store takes
    /// writes again after a failure (a full disk freed, a remount), before trading resumes.
    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>>;
    /// The user's stored trade updates with `after < seq <= up_to`, in `seq` order. Updates
    /// older than the retention may be gone: the caller checks the first `seq`.
    fn updates_between(
        &self,
        username: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<TradeUpdate>, StoreError>>;
    /// The user's stored order with this `client_order_id`, if any.
    fn order_by_client_id(
        &self,
        username: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Option<Order>, StoreError>>;
    /// Deletes up to `max_rows` trade updates stored before `before`; returns how many went.
    fn prune_updates(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// The largest token recorded for the fence `name`, if a fenced batch ever committed.
    fn fence_token(&self, name: &str) -> BoxFuture<'static, Result<Option<u64>, StoreError>>;
    /// The stored reply of the command `id`, if a batch that executed it committed (and it has
    /// not been pruned yet).
    fn command_reply(&self, id: &str) -> BoxFuture<'static, Result<Option<String>, StoreError>>;
    /// Deletes up to `max_rows` command replies stored before `before`; returns how many went.
    fn prune_commands(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>>;
}

/// A range of one symbol's one-minute bars: `start <= t < end`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarQuery {
    pub symbol: String,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// Durable market history.
pub trait HistoryStore: Send + Sync + 'static {
    /// Upserts bars (a bar for the same symbol and minute replaces the earlier one).
    fn write_bars(&self, bars: Vec<Bar>) -> BoxFuture<'static, Result<(), StoreError>>;
    fn bars(&self, query: BarQuery) -> BoxFuture<'static, Result<Vec<Bar>, StoreError>>;
    /// The close of the newest stored bar of each of `symbols` that has one: where the market
    /// was when the previous run stopped (the simulator continues from there).
    fn last_closes(
        &self,
        symbols: Vec<String>,
    ) -> BoxFuture<'static, Result<BTreeMap<String, f64>, StoreError>>;
    /// Deletes up to `max_rows` bars that started before `before`; returns how many went.
    fn prune_bars(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>>;
}

/// What was recorded about the feeds by the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFeeds {
    pub epoch: u64,
    /// True when the previous run recorded its high-water marks at a clean shutdown.
    pub clean_shutdown: bool,
    /// Last sequence issued per feed (by [`Feed::name`]), as of the clean shutdown.
    pub high_water: BTreeMap<String, u64>,
}

/// Where the public feeds' sequences stand across restarts.
pub trait FeedStateStore: Send + Sync + 'static {
    fn recorded_feeds(&self) -> BoxFuture<'static, Result<Option<RecordedFeeds>, StoreError>>;
    /// Records that a run with `epoch` started: until [`FeedStateStore::record_clean_shutdown`]
    /// the high-water marks are unknown.
    fn record_run_started(&self, epoch: u64) -> BoxFuture<'static, Result<(), StoreError>>;
    fn record_clean_shutdown(
        &self,
        high_water: BTreeMap<String, u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// How this run's feeds start, decided from what the previous run recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStart {
    pub epoch: u64,
    /// Per feed, the sequence to continue after (0 when the feed starts afresh).
    pub continue_after: BTreeMap<String, u64>,
    /// Why: "first start", "clean restart" or "restart after a crash".
    pub reason: &'static str,
}

impl FeedStart {
    /// Decides the epoch and starting sequences.
    ///
    /// After a clean shutdown the high-water marks are exact (they were read after the HTTP
    /// server stopped, so no client saw a later event): the epoch is kept and sequences
    /// continue above them, so a client that saw everything resumes without a reset and any
    /// other client gets an explicit "cursor too old" reset. After a crash the last sequence
    /// handed to clients is unknown; reusing numbers could give two different events the
    /// same cursor, so history starts afresh under a new epoch (an explicit reset for every
    /// resuming client).
    pub fn decide(previous: Option<&RecordedFeeds>, now_epoch: u64) -> FeedStart {
        match previous {
            None => FeedStart {
                epoch: now_epoch,
                continue_after: BTreeMap::new(),
                reason: "first start",
            },
            Some(recorded) if recorded.clean_shutdown => FeedStart {
                epoch: recorded.epoch,
                continue_after: recorded.high_water.clone(),
                reason: "clean restart",
            },
            Some(recorded) => FeedStart {
                epoch: now_epoch.max(recorded.epoch.saturating_add(1)),
                continue_after: BTreeMap::new(),
                reason: "restart after a crash",
            },
        }
    }

    /// Moves the hub's sequences past the recorded high-water marks (before any publish).
    pub fn apply(&self, hub: &Hub) {
        for feed in Feed::ALL {
            if let Some(&seq) = self.continue_after.get(feed.name()) {
                hub.continue_after(feed, seq);
            }
        }
    }
}

/// Health of the store, shared by its writer and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    degraded: Arc<Mutex<Option<String>>>,
}

/// What `/readyz` shows for the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreStatus {
    Disabled,
    Ok,
    Degraded { reason: String },
}

impl StoreHealth {
    pub fn set_degraded(&self, reason: String) {
        let mut degraded = self.degraded.lock();
        if degraded.as_deref() != Some(reason.as_str()) {
            tracing::error!(%reason, "store degraded");
        }
        *degraded = Some(reason);
    }

    pub fn set_ok(&self) {
        let mut degraded = self.degraded.lock();
        if degraded.take().is_some() {
            tracing::info!("store healthy again");
        }
    }

    pub fn status(&self) -> StoreStatus {
        match self.degraded.lock().clone() {
            None => StoreStatus::Ok,
            Some(reason) => StoreStatus::Degraded { reason },
        }
    }
}

/// One API key pair as stored: the keyed hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub username: String,
    /// Lower-case hex of the keyed hash (see `auth::api_keys`).
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
}

/// The `store_settings` row of the API key server key's fingerprint.
pub const HASH_KEY_SETTING: &str = "api_key_hash_key";

/// Durable API key pairs issued through the API.
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a new pair; resolves once it is durable.
    fn insert_api_key(&self, record: ApiKeyRecord) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Marks a pair revoked; `Ok(false)` when no active pair has that id.
    fn revoke_api_key(
        &self,
        key_id: &str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Every pair that is not revoked.
    fn active_api_keys(&self) -> BoxFuture<'static, Result<Vec<ApiKeyRecord>, StoreError>>;
    /// Stores `fingerprint` as the server key's fingerprint unless one is stored already,
    /// and returns the one stored (the first start's), so the caller can compare.
    fn claim_hash_key_fingerprint(
        &self,
        fingerprint: String,
    ) -> BoxFuture<'static, Result<String, StoreError>>;
}

/// The store as the application holds it: one backend behind all four interfaces.
#[derive(Clone)]
pub struct Store {
    pub trading: Arc<dyn TradingStore>,
    pub history: Arc<dyn HistoryStore>,
    pub feeds: Arc<dyn FeedStateStore>,
    pub api_keys: Arc<dyn ApiKeyStore>,
    pub health: StoreHealth,
    pub settings: StoreSettings,
    /// The SQLite file's path, or `postgresql://host:port/database` (no credentials).
    location: String,
    /// The data directory's lock file, held while this store is in use (see [`Store::open`]).
    lock: Arc<Mutex<Option<std::fs::File>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// A store opened at start-up, with the decision on how the feeds start.
#[derive(Debug)]
pub struct OpenedStore {
    pub store: Store,
    pub feed_start: FeedStart,
}

impl Store {
    /// Opens the configured backend (SQLite: creating the directory and file; PostgreSQL:
    /// connecting) and applies its migrations, then decides how the feeds start and records
    /// that this run began.
    ///
    /// Start-up only: it waits for the writer thread, so call it before serving.
    ///
    /// Two processes on one data directory would each rebuild the exchange and then append
    /// diverging events, so the directory is locked (`<file_name>.lock`, an advisory lock the
    /// kernel releases when the process dies) and a second process is refused.
    pub fn open(settings: &StoreSettings) -> Result<OpenedStore, StoreError> {
        Store::open_with_metrics(settings, None)
    }

    /// Like [`Store::open`], counting store transactions in `metrics`.
    pub fn open_with_metrics(
        settings: &StoreSettings,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<OpenedStore, StoreError> {
        let store = match settings.backend {
            StoreBackend::Sqlite => {
                let lock = lock_data_dir(settings)?;
                let backend = Arc::new(sqlite::SqliteStore::open(settings, metrics)?);
                Store {
                    trading: backend.clone(),
                    history: backend.clone(),
                    feeds: backend.clone(),
                    api_keys: backend.clone(),
                    health: backend.health(),
                    location: settings.database_path().display().to_string(),
                    settings: settings.clone(),
                    lock: Arc::new(Mutex::new(Some(lock))),
                }
            }
            // No data-directory lock: several nodes share the database, and the exchange lease
            // (with its fencing token on every batch) keeps a single writer of trading state.
            StoreBackend::Postgres => {
                let backend = Arc::new(postgres::PostgresStore::open(settings, metrics)?);
                Store {
                    trading: backend.clone(),
                    history: backend.clone(),
                    feeds: backend.clone(),
                    api_keys: backend.clone(),
                    health: backend.health(),
                    location: backend.target().to_owned(),
                    settings: settings.clone(),
                    lock: Arc::new(Mutex::new(None)),
                }
            }
        };
        let now_epoch = Utc::now().timestamp_millis().max(1) as u64;
        // Runtime-agnostic executor: the futures only wait on the writer thread's replies.
        let recorded = futures::executor::block_on(store.feeds.recorded_feeds())?;
        let feed_start = FeedStart::decide(recorded.as_ref(), now_epoch);
        futures::executor::block_on(store.feeds.record_run_started(feed_start.epoch))?;
        tracing::info!(
            database = %store.location,
            epoch = feed_start.epoch,
            reason = feed_start.reason,
            "store opened"
        );
        Ok(OpenedStore { store, feed_start })
    }

    /// Syncs the configured users (names and password hashes) into the store. Start-up only:
    /// it waits for the writer thread.
    pub fn sync_users_at_start(&self, users: Vec<UserRecord>) -> Result<(), StoreError> {
        let count = users.len();
        futures::executor::block_on(self.trading.sync_users(users))?;
        tracing::info!(users = count, "users synced into the store");
        Ok(())
    }

    /// Starts the bar writer and the pruner. Call [`StoreTasks::finish`] after the HTTP
    /// server has stopped.
    pub fn spawn_background(
        &self,
        hub: &Arc<Hub>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> StoreTasks {
        let writer = tokio::spawn(history::run_bar_writer(
            Arc::clone(hub),
            Arc::clone(&self.history),
            self.settings.clone(),
            self.health.clone(),
            shutdown.clone(),
        ));
        let pruner = tokio::spawn(history::run_pruner(
            Arc::clone(&self.history),
            self.settings.clone(),
            shutdown,
        ));
        StoreTasks {
            store: self.clone(),
            writer,
            pruner,
        }
    }

    pub fn status(&self) -> StoreStatus {
        self.health.status()
    }

    /// Lets another process (or a restarted application in the same process) open the store.
    fn release_lock(&self) {
        self.lock.lock().take();
    }
}

/// How long a lock held by someone else is waited for before the store reports it in use.
/// A process that forks (a test harness, a supervisor starting a child) holds a copy of every
/// descriptor, the lock's too, for the instant between fork and exec; a short wait rides that
/// out without letting two gateways share a directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(1_000);

/// Takes the data directory's lock, waiting at most [`LOCK_WAIT`] for a holder to let go.
fn lock_data_dir(settings: &StoreSettings) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| StoreError::DataDir {
        path: settings.data_dir.display().to_string(),
        detail: e.to_string(),
    })?;
    let path = settings
        .data_dir
        .join(format!("{}.lock", settings.file_name));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut outcome = file.try_lock();
    while matches!(outcome, Err(std::fs::TryLockError::WouldBlock))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        outcome = file.try_lock();
    }
    match outcome {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: settings.data_dir.display().to_string(),
            lock: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(StoreError::Open {
            path: path.display().to_string(),
            detail: error.to_string(),
        }),
    }
}

/// The store's background tasks for one run.
#[derive(Debug)]
pub struct StoreTasks {
    store: Store,
    writer: tokio::task::JoinHandle<()>,
    pruner: tokio::task::JoinHandle<()>,
}

impl StoreTasks {
    /// Waits for the bar writer's final flush, then records the feeds' high-water marks as a
    /// clean shutdown. Must run after the HTTP server stopped: no client can then have seen an
    /// event later than the marks recorded here.
    pub async fn finish(self, hub: &Hub) {
        if let Err(error) = self.writer.await {
            tracing::error!(%error, "bar writer task failed");
        }
        self.pruner.abort();
        let high_water: BTreeMap<String, u64> = Feed::ALL
            .into_iter()
            .map(|feed| (feed.name().to_owned(), hub.cursor(feed).seq))
            .collect();
        match self.store.feeds.record_clean_shutdown(high_water).await {
            Ok(()) => tracing::info!("store closed cleanly"),
            Err(error) => tracing::error!(%error, "could not record a clean shutdown"),
        }
        self.store.release_lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn recorded(clean: bool) -> RecordedFeeds {
        RecordedFeeds {
            epoch: 500,
            clean_shutdown: clean,
            high_water: BTreeMap::from([("market".to_owned(), 42), ("news".to_owned(), 3)]),
        }
    }

    #[test]
    fn a_clean_restart_keeps_the_epoch_and_continues_above_the_high_water_marks() {
        let start = FeedStart::decide(Some(&recorded(true)), 900);
        assert_eq!(start.epoch, 500);
        assert_eq!(start.continue_after.get("market"), Some(&42));
        assert_eq!(start.continue_after.get("news"), Some(&3));
    }

    #[test]
    fn a_restart_after_a_crash_takes_a_new_larger_epoch_and_starts_sequences_afresh() {
        let start = FeedStart::decide(Some(&recorded(false)), 900);
        assert_eq!(start.epoch, 900);
        assert!(start.continue_after.is_empty());
        // Even with a clock that went backwards the epoch still changes.
        let start = FeedStart::decide(Some(&recorded(false)), 100);
        assert_eq!(start.epoch, 501);
    }

    #[test]
    fn fills_move_cash_and_quantity_by_side_with_commission_always_a_cost() {
        let mut fill = FillRecord {
            execution_id: "e".into(),
            order_id: "o".into(),
            username: "u".into(),
            symbol: "AAPL".into(),
            side: Side::Buy,
            qty: dec!(3),
            price: dec!(10.5),
            commission: dec!(0.01),
            timestamp: Utc::now(),
        };
        assert_eq!(fill.cash_delta(), dec!(-31.51));
        assert_eq!(fill.qty_delta(), dec!(3));
        fill.side = Side::Sell;
        assert_eq!(fill.cash_delta(), dec!(31.49));
        assert_eq!(fill.qty_delta(), dec!(-3));
    }
}
