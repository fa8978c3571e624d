//! The embedded SQLite store: one file under `store.data_dir`, WAL mode, one writer thread that
//! group-commits queued writes, and a small pool of read-only connections used through
//! `spawn_blocking`.
//!
//! Durability: the writer connection runs with `synchronous = FULL`. In WAL mode that fsyncs
//! the log on every commit, so a transaction whose commit returned survives a process kill
//! *and* a power loss or kernel crash. (`NORMAL` would only survive a process kill: the log is
//! synced at checkpoints, and the last commits can vanish with the OS.) An acknowledged order
//! must survive both, and group commit keeps the cost at one fsync per group, not per order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

mod api_keys;

use super::migrations::{self, MigrateError};
use super::{
    AccountRecord, BarQuery, FeedStateStore, FillRecord, HistoryStore, PositionRecord,
    RecordedFeeds, StoreError, StoreHealth, StoredOrder, TradingBatch, TradingState, TradingStore,
    UserRecord,
};
use crate::market::Bar;
use crate::metrics::Metrics;
use crate::settings::StoreSettings;
use crate::trading::api::{Order, Side};

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A unit of work for the writer thread, run inside the current group transaction.
trait WriteJob: Send {
    /// Runs the work inside its own savepoint; the result is kept until the group commits.
    fn run(&mut self, connection: &Connection) -> Result<(), StoreError>;
    /// Sends the result: the work's own error, the group's commit error, or the value.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Job<T, F> {
    work: Option<F>,
    output: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, connection: &Connection) -> Result<(), StoreError> {
        let result = match self.work.take() {
            Some(work) => work(connection),
            None => Err(StoreError::Closed),
        };
        let status = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.output = Some(result);
        status
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let result = match (self.output, commit) {
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(_)), Err(error)) => Err(error),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (None, Err(error)) => Err(error),
            (None, Ok(())) => Err(StoreError::Closed),
        };
        // The caller may have given up waiting; the work is stored either way.
        let _ = self.reply.send(result);
    }
}

/// Read-only connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    path_text: String,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(connection) = self.idle.lock().pop() {
            return Ok(connection);
        }
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(&self.path_text, e))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(&self.path_text, e))?;
        Ok(connection)
    }

    fn give(&self, connection: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(connection);
        }
    }
}

/// The SQLite implementation of every store interface.
pub struct SqliteStore {
    path_text: String,
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Arc<ReadPool>,
    health: StoreHealth,
}

/// Maps a SQLite error to the store's error, naming the file.
fn classify(path: &str, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull { path: path.into() },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.into(),
            detail: error.to_string(),
        },
        _ => StoreError::Database {
            path: path.into(),
            detail: error.to_string(),
        },
    }
}

fn decode_error(path: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Decode {
        path: path.into(),
        detail: detail.to_string(),
    }
}

/// The serde name of a simple enum (`"buy"`, `"partially_filled"`).
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

fn parse_decimal(path: &str, text: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(text).map_err(|e| decode_error(path, format!("decimal {text:?}: {e}")))
}

fn parse_time(path: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_error(path, format!("time {text:?}: {e}")))
}

impl SqliteStore {
    /// Opens (or creates) the database file, checks it, applies migrations and starts the
    /// writer thread. Runs on the calling thread: start-up only.
    pub fn open(
        settings: &StoreSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<SqliteStore, StoreError> {
        let path = settings.database_path();
        let path_text = path.display().to_string();
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| StoreError::DataDir {
            path: settings.data_dir.display().to_string(),
            detail: e.to_string(),
        })?;
        if !path.exists() {
            let wal = PathBuf::from(format!("{path_text}-wal"));
            if wal.exists() {
                return Err(StoreError::MissingWithWal {
                    path: path_text,
                    wal: wal.display().to_string(),
                });
            }
            if !settings.create_if_missing {
                return Err(StoreError::Missing { path: path_text });
            }
        }
        let mut connection = open_writer(&path, &path_text)?;
        match migrations::migrate(&mut connection) {
            Ok(applied) if !applied.is_empty() => {
                tracing::info!(path = %path_text, ?applied, "store migrations applied");
            }
            Ok(_) => {}
            Err(MigrateError::Newer { found, supported }) => {
                return Err(StoreError::NewerSchema {
                    path: path_text,
                    found,
                    supported,
                });
            }
            Err(MigrateError::Step {
                version,
                name,
                source,
            }) => {
                return Err(StoreError::Migration {
                    path: path_text,
                    version,
                    name: name.into(),
                    detail: source.to_string(),
                });
            }
            Err(MigrateError::Sqlite(error)) => return Err(classify(&path_text, error)),
        }
        let health = StoreHealth::default();
        let (writer, jobs) = mpsc::channel::<Box<dyn WriteJob>>();
        let max_group = settings.trading_batch_size.max(1);
        let thread_health = health.clone();
        let thread_path = path_text.clone();
        std::thread::Builder::new()
            .name("tickgate-store".into())
            .spawn(move || {
                run_writer(
                    connection,
                    jobs,
                    max_group,
                    thread_health,
                    thread_path,
                    metrics,
                )
            })
            .map_err(|e| StoreError::Open {
                path: path_text.clone(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(SqliteStore {
            readers: Arc::new(ReadPool {
                path,
                path_text: path_text.clone(),
                idle: Mutex::new(Vec::new()),
                max_idle: settings.read_connections.max(1),
            }),
            path_text,
            writer,
            health,
        })
    }

    pub fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    /// Queues a write now; the receiver resolves once its group transaction committed.
    fn write<T, F>(&self, work: F) -> oneshot::Receiver<Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, receiver) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            output: None,
            reply,
        });
        // If the writer thread is gone the job (and its reply sender) is dropped, and the
        // receiver reports `Closed`.
        let _ = self.writer.send(job);
        receiver
    }

    fn write_future<T, F>(&self, work: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let receiver = self.write(work);
        Box::pin(async move { receiver.await.unwrap_or(Err(StoreError::Closed)) })
    }

    /// Runs a query on a pooled read-only connection on the blocking thread pool.
    fn read_future<T, F>(&self, work: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        let run = move || {
            let connection = pool.take()?;
            let result = work(&connection, &pool.path_text);
            pool.give(connection);
            result
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Box::pin(async move {
                runtime
                    .spawn_blocking(run)
                    .await
                    .unwrap_or(Err(StoreError::Closed))
            }),
            // Outside a runtime (an application built before its runtime starts) there is no
            // executor to protect: the read runs where the future is polled.
            Err(_) => Box::pin(async move { run() }),
        }
    }
}

/// Opens the writer connection, sets WAL and FULL sync, and checks the file is a sound
/// database before anything is written to it.
fn open_writer(path: &Path, path_text: &str) -> Result<Connection, StoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| match classify(path_text, e) {
        StoreError::Database { path, detail } => StoreError::Open { path, detail },
        other => other,
    })?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path_text, e))?;
    let mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| classify(path_text, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path_text.into(),
            detail: format!("could not switch to WAL mode (journal_mode is {mode})"),
        });
    }
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(|e| classify(path_text, e))?;
    // A cheap structural check (no index cross-checks) so a damaged file is reported at
    // start-up, not at the first order.
    let problems: Vec<String> = {
        let mut statement = connection
            .prepare("PRAGMA quick_check")
            .map_err(|e| classify(path_text, e))?;
        let rows = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| classify(path_text, e))?;
        rows.collect::<Result<_, _>>()
            .map_err(|e| classify(path_text, e))?
    };
    if problems != ["ok"] {
        return Err(StoreError::Corrupt {
            path: path_text.into(),
            detail: problems.join("; "),
        });
    }
    Ok(connection)
}

/// The writer thread: takes the next job, gathers whatever else is queued (up to
/// `max_group`), runs them in one transaction with a savepoint each, commits once (one
/// fsync) and then replies to all of them.
fn run_writer(
    connection: Connection,
    jobs: mpsc::Receiver<Box<dyn WriteJob>>,
    max_group: usize,
    health: StoreHealth,
    path: String,
    metrics: Option<Arc<Metrics>>,
) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_group);
    while let Ok(first) = jobs.recv() {
        group.push(first);
        while group.len() < max_group {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let (commit, job_failure) = run_group(&connection, &mut group, &path);
        if let Some(metrics) = &metrics {
            record_group(metrics, group.len(), &commit, started.elapsed());
        }
        match (&commit, job_failure) {
            (Err(error), _) => health.set_degraded(error.to_string()),
            (Ok(()), Some(error)) => health.set_degraded(error.to_string()),
            (Ok(()), None) => health.set_ok(),
        }
        for job in group.drain(..) {
            job.finish(commit.clone());
        }
    }
    tracing::debug!(%path, "store writer stopped");
}

/// Counts one group transaction in `/metrics`.
fn record_group(
    metrics: &Metrics,
    writes: usize,
    commit: &Result<(), StoreError>,
    elapsed: Duration,
) {
    let result = if commit.is_ok() { "ok" } else { "error" };
    metrics.add_counter(
        "tickgate_store_transactions_total",
        "Store transactions (one fsync each), by outcome.",
        &format!("result=\"{result}\""),
        1.0,
    );
    metrics.add_counter(
        "tickgate_store_writes_total",
        "Writes (trading steps, bar batches, ...) committed in store transactions.",
        "",
        writes as f64,
    );
    metrics.add_counter(
        "tickgate_store_transaction_seconds_total",
        "Time spent in store transactions including the fsync; divide by the transaction count for the mean.",
        "",
        elapsed.as_secs_f64(),
    );
}

/// Runs one group; returns the commit result and the first job error that means the
/// database itself is in trouble (full disk, corruption).
fn run_group(
    connection: &Connection,
    group: &mut [Box<dyn WriteJob>],
    path: &str,
) -> (Result<(), StoreError>, Option<StoreError>) {
    if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
        return (Err(classify(path, error)), None);
    }
    let mut job_failure = None;
    for job in group.iter_mut() {
        if let Err(error) = connection.execute_batch("SAVEPOINT job") {
            let _ = connection.execute_batch("ROLLBACK");
            return (Err(classify(path, error)), None);
        }
        let outcome = match job.run(connection) {
            Ok(()) => connection.execute_batch("RELEASE job"),
            Err(error) => {
                if matches!(
                    error,
                    StoreError::DiskFull { .. } | StoreError::Corrupt { .. }
                ) && job_failure.is_none()
                {
                    job_failure = Some(error);
                }
                connection.execute_batch("ROLLBACK TO job; RELEASE job")
            }
        };
        if let Err(error) = outcome {
            let _ = connection.execute_batch("ROLLBACK");
            return (Err(classify(path, error)), job_failure);
        }
    }
    if let Err(error) = connection.execute_batch("COMMIT") {
        let _ = connection.execute_batch("ROLLBACK");
        return (Err(classify(path, error)), job_failure);
    }
    (Ok(()), job_failure)
}

fn store_batch(
    connection: &Connection,
    path: &str,
    batch: &TradingBatch,
) -> Result<(), StoreError> {
    let sql = |e| classify(path, e);
    for event in &batch.events {
        connection
            .prepare_cached("INSERT INTO exchange_events (body) VALUES (?1)")
            .and_then(|mut statement| statement.execute([event]))
            .map_err(sql)?;
    }
    for StoredOrder { username, order } in &batch.orders {
        let body = serde_json::to_string(order).map_err(|e| decode_error(path, e))?;
        connection
            .prepare_cached(
                "INSERT INTO orders (id, username, client_order_id, symbol, status, is_open,
                                     created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET
                     client_order_id = excluded.client_order_id,
                     status = excluded.status,
                     is_open = excluded.is_open,
                     updated_at = excluded.updated_at,
                     body = excluded.body",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    order.id,
                    username,
                    order.client_order_id,
                    order.symbol,
                    enum_text(&order.status),
                    order.status.is_open(),
                    order.created_at.to_rfc3339(),
                    order.updated_at.to_rfc3339(),
                    body,
                ])
            })
            .map_err(sql)?;
    }
    for fill in &batch.fills {
        connection
            .prepare_cached(
                "INSERT INTO fills (execution_id, order_id, username, symbol, side, qty, price,
                                    commission, t)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    fill.execution_id,
                    fill.order_id,
                    fill.username,
                    fill.symbol,
                    enum_text(&fill.side),
                    fill.qty.to_string(),
                    fill.price.to_string(),
                    fill.commission.to_string(),
                    fill.timestamp.to_rfc3339(),
                ])
            })
            .map_err(sql)?;
    }
    for account in &batch.accounts {
        connection
            .prepare_cached(
                "INSERT INTO accounts (username, initial_cash, cash, realized_pl, commissions,
                                       updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (username) DO UPDATE SET
                     cash = excluded.cash,
                     realized_pl = excluded.realized_pl,
                     commissions = excluded.commissions,
                     updated_at = excluded.updated_at",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    account.username,
                    account.initial_cash.to_string(),
                    account.cash.to_string(),
                    account.realized_pl.to_string(),
                    account.commissions.to_string(),
                    account.updated_at.to_rfc3339(),
                ])
            })
            .map_err(sql)?;
    }
    for position in &batch.positions {
        if position.qty.is_zero() {
            connection
                .prepare_cached("DELETE FROM positions WHERE username = ?1 AND symbol = ?2")
                .and_then(|mut statement| {
                    statement.execute(params![position.username, position.symbol])
                })
                .map_err(sql)?;
        } else {
            connection
                .prepare_cached(
                    "INSERT INTO positions (username, symbol, qty, cost_basis)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (username, symbol) DO UPDATE SET
                         qty = excluded.qty,
                         cost_basis = excluded.cost_basis",
                )
                .and_then(|mut statement| {
                    statement.execute(params![
                        position.username,
                        position.symbol,
                        position.qty.to_string(),
                        position.cost_basis.to_string(),
                    ])
                })
                .map_err(sql)?;
        }
    }
    Ok(())
}

fn stored_orders(
    connection: &Connection,
    path: &str,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<StoredOrder>, StoreError> {
    let mut statement = connection.prepare(sql).map_err(|e| classify(path, e))?;
    let rows = statement
        .query_map(parameters, |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(|e| classify(path, e))?;
    let mut out = Vec::new();
    for row in rows {
        let (username, body) = row.map_err(|e| classify(path, e))?;
        let order: Order = serde_json::from_str(&body).map_err(|e| decode_error(path, e))?;
        out.push(StoredOrder { username, order });
    }
    Ok(out)
}

fn load_state(
    connection: &Connection,
    path: &str,
    closed_per_user: usize,
) -> Result<TradingState, StoreError> {
    let sql = |e| classify(path, e);
    // One read transaction, so the parts are consistent with each other.
    connection.execute_batch("BEGIN").map_err(sql)?;
    let result = (|| {
        let users = {
            let mut statement = connection
                .prepare("SELECT username FROM users WHERE active = 1 ORDER BY username")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)?
        };
        let mut accounts = Vec::new();
        {
            let mut statement = connection
                .prepare(
                    "SELECT username, initial_cash, cash, realized_pl, commissions, updated_at
                     FROM accounts ORDER BY username",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (username, initial, cash, realized, commissions, updated) = row.map_err(sql)?;
                accounts.push(AccountRecord {
                    username,
                    initial_cash: parse_decimal(path, &initial)?,
                    cash: parse_decimal(path, &cash)?,
                    realized_pl: parse_decimal(path, &realized)?,
                    commissions: parse_decimal(path, &commissions)?,
                    updated_at: parse_time(path, &updated)?,
                });
            }
        }
        let mut positions = Vec::new();
        {
            let mut statement = connection
                .prepare(
                    "SELECT username, symbol, qty, cost_basis FROM positions
                     ORDER BY username, symbol",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql)?;
            for row in rows {
                let (username, symbol, qty, basis) = row.map_err(sql)?;
                positions.push(PositionRecord {
                    username,
                    symbol,
                    qty: parse_decimal(path, &qty)?,
                    cost_basis: parse_decimal(path, &basis)?,
                });
            }
        }
        let events = {
            let mut statement = connection
                .prepare("SELECT body FROM exchange_events ORDER BY seq")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sql)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql)?
        };
        let open_orders = stored_orders(
            connection,
            path,
            "SELECT username, body FROM orders WHERE is_open = 1 ORDER BY created_at, rowid",
            [],
        )?;
        let closed_orders = stored_orders(
            connection,
            path,
            "SELECT username, body FROM (
                 SELECT username, body, created_at, rowid AS r,
                        ROW_NUMBER() OVER (PARTITION BY username
                                           ORDER BY created_at DESC, rowid DESC) AS k
                 FROM orders WHERE is_open = 0)
             WHERE k <= ?1 ORDER BY created_at, r",
            params![i64::try_from(closed_per_user).unwrap_or(i64::MAX)],
        )?;
        Ok(TradingState {
            events,
            users,
            accounts,
            positions,
            open_orders,
            closed_orders,
        })
    })();
    let _ = connection.execute_batch("COMMIT");
    result
}

fn load_fills(
    connection: &Connection,
    path: &str,
    username: &str,
) -> Result<Vec<FillRecord>, StoreError> {
    let sql = |e| classify(path, e);
    let mut statement = connection
        .prepare(
            "SELECT execution_id, order_id, username, symbol, side, qty, price, commission, t
             FROM fills WHERE username = ?1 ORDER BY rowid",
        )
        .map_err(sql)?;
    let rows = statement
        .query_map([username], |row| {
            Ok([
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, String>(8)?,
            ])
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let [
            execution_id,
            order_id,
            username,
            symbol,
            side,
            qty,
            price,
            commission,
            t,
        ] = row.map_err(sql)?;
        let side = match side.as_str() {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            other => return Err(decode_error(path, format!("fill side {other:?}"))),
        };
        out.push(FillRecord {
            execution_id,
            order_id,
            username,
            symbol,
            side,
            qty: parse_decimal(path, &qty)?,
            price: parse_decimal(path, &price)?,
            commission: parse_decimal(path, &commission)?,
            timestamp: parse_time(path, &t)?,
        });
    }
    Ok(out)
}

impl TradingStore for SqliteStore {
    fn commit(&self, batch: TradingBatch) -> BoxFuture<'static, Result<(), StoreError>> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let path = self.path_text.clone();
        self.write_future(move |connection| store_batch(connection, &path, &batch))
    }

    fn sync_users(&self, users: Vec<UserRecord>) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            let now = Utc::now().to_rfc3339();
            connection
                .execute("UPDATE users SET active = 0", [])
                .map_err(sql)?;
            for user in &users {
                connection
                    .prepare_cached(
                        "INSERT INTO users (username, password_hash, active, updated_at)
                         VALUES (?1, ?2, 1, ?3)
                         ON CONFLICT (username) DO UPDATE SET
                             password_hash = excluded.password_hash,
                             active = 1,
                             updated_at = excluded.updated_at",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![user.username, user.password_hash, now])
                    })
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    fn load(
        &self,
        closed_orders_per_user: usize,
    ) -> BoxFuture<'static, Result<TradingState, StoreError>> {
        self.read_future(move |connection, path| {
            load_state(connection, path, closed_orders_per_user)
        })
    }

    fn fills(&self, username: &str) -> BoxFuture<'static, Result<Vec<FillRecord>, StoreError>> {
        let username = username.to_owned();
        self.read_future(move |connection, path| load_fills(connection, path, &username))
    }
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

impl HistoryStore for SqliteStore {
    fn write_bars(&self, bars: Vec<Bar>) -> BoxFuture<'static, Result<(), StoreError>> {
        if bars.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let mut statement = connection
                .prepare_cached(
                    "INSERT INTO bars (symbol, t, o, h, l, c, v, n, vw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (symbol, t) DO UPDATE SET
                         o = excluded.o, h = excluded.h, l = excluded.l, c = excluded.c,
                         v = excluded.v, n = excluded.n, vw = excluded.vw",
                )
                .map_err(|e| classify(&path, e))?;
            for bar in &bars {
                statement
                    .execute(params![
                        bar.symbol,
                        micros(bar.time),
                        bar.open,
                        bar.high,
                        bar.low,
                        bar.close,
                        bar.volume,
                        i64::try_from(bar.trade_count).unwrap_or(i64::MAX),
                        bar.vwap,
                    ])
                    .map_err(|e| classify(&path, e))?;
            }
            Ok(())
        })
    }

    fn bars(&self, query: BarQuery) -> BoxFuture<'static, Result<Vec<Bar>, StoreError>> {
        self.read_future(move |connection, path| {
            let sql = |e| classify(path, e);
            let mut statement = connection
                .prepare_cached(
                    "SELECT symbol, t, o, h, l, c, v, n, vw FROM bars
                     WHERE symbol = ?1 AND t >= ?2 AND t < ?3 ORDER BY t LIMIT ?4",
                )
                .map_err(sql)?;
            let rows = statement
                .query_map(
                    params![
                        query.symbol,
                        query.start.map_or(i64::MIN, micros),
                        query.end.map_or(i64::MAX, micros),
                        i64::try_from(query.limit).unwrap_or(i64::MAX),
                    ],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            [
                                row.get::<_, f64>(2)?,
                                row.get::<_, f64>(3)?,
                                row.get::<_, f64>(4)?,
                                row.get::<_, f64>(5)?,
                                row.get::<_, f64>(6)?,
                            ],
                            row.get::<_, i64>(7)?,
                            row.get::<_, f64>(8)?,
                        ))
                    },
                )
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (symbol, t, [open, high, low, close, volume], trade_count, vwap) =
                    row.map_err(sql)?;
                let time = DateTime::from_timestamp_micros(t)
                    .ok_or_else(|| decode_error(path, format!("bar time {t}")))?;
                out.push(Bar {
                    symbol,
                    open,
                    high,
                    low,
                    close,
                    volume,
                    trade_count: u64::try_from(trade_count).unwrap_or(0),
                    vwap,
                    time,
                });
            }
            Ok(out)
        })
    }

    fn prune_bars(
        &self,
        before: DateTime<Utc>,
        max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            // Bounded deletes keep each write short, so trading commits queued behind a large
            // prune do not wait long.
            connection
                .execute(
                    "DELETE FROM bars WHERE (symbol, t) IN
                         (SELECT symbol, t FROM bars WHERE t < ?1 LIMIT ?2)",
                    params![micros(before), i64::try_from(max_rows).unwrap_or(i64::MAX)],
                )
                .map(|n| n as u64)
                .map_err(|e| classify(&path, e))
        })
    }
}

impl FeedStateStore for SqliteStore {
    fn recorded_feeds(&self) -> BoxFuture<'static, Result<Option<RecordedFeeds>, StoreError>> {
        // Through the writer, so this start-up read needs no async runtime.
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            let meta = |key: &str| -> Result<Option<String>, StoreError> {
                connection
                    .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(sql)
            };
            let Some(epoch) = meta("epoch")? else {
                return Ok(None);
            };
            let epoch = epoch
                .parse::<u64>()
                .map_err(|e| decode_error(&path, format!("epoch {epoch:?}: {e}")))?;
            let clean_shutdown = meta("clean_shutdown")?.as_deref() == Some("1");
            let mut high_water = BTreeMap::new();
            let mut statement = connection
                .prepare("SELECT feed, high_water FROM feed_state")
                .map_err(sql)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(sql)?;
            for row in rows {
                let (feed, seq) = row.map_err(sql)?;
                high_water.insert(feed, u64::try_from(seq).unwrap_or(0));
            }
            Ok(Some(RecordedFeeds {
                epoch,
                clean_shutdown,
                high_water,
            }))
        })
    }

    fn record_run_started(&self, epoch: u64) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            for (key, value) in [("epoch", epoch.to_string()), ("clean_shutdown", "0".into())] {
                connection
                    .execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![key, value],
                    )
                    .map_err(sql)?;
            }
            Ok(())
        })
    }

    fn record_clean_shutdown(
        &self,
        high_water: BTreeMap<String, u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let path = self.path_text.clone();
        self.write_future(move |connection| {
            let sql = |e| classify(&path, e);
            for (feed, seq) in &high_water {
                connection
                    .execute(
                        "INSERT INTO feed_state (feed, high_water) VALUES (?1, ?2)
                         ON CONFLICT (feed) DO UPDATE SET high_water = excluded.high_water",
                        params![feed, i64::try_from(*seq).unwrap_or(i64::MAX)],
                    )
                    .map_err(sql)?;
            }
            connection
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('clean_shutdown', '1')
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [],
                )
                .map_err(sql)?;
            Ok(())
        })
    }
}
