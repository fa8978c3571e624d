//! The embedded SQLite store: one file under `store.data_dir`, WAL mode, one writer thread that
//! group-commits queued writes, and a small pool of read-only connections used through
//! `spawn_blocking`. Files: [`writer`] (the writer thread and group commit), [`trading`],
//! [`history`] and [`feeds`] (one store interface each); this file opens the database and
//! holds the connections.
//!
//! Durability: the writer connection runs with `synchronous = FULL`. In WAL mode that fsyncs
//! the log on every commit, so a transaction whose commit returned survives a process kill
//! *and* a power loss or kernel crash. (`NORMAL` would only survive a process kill: the log is
//! synced at checkpoints, and the last commits can vanish with the OS.) An acknowledged order
//! must survive both, and group commit keeps the cost at one fsync per group, not per order.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

mod api_keys;
mod feeds;
mod history;
mod trading;
mod writer;

use super::migrations::{self, MigrateError};
use super::{StoreError, StoreHealth};
use crate::metrics::Metrics;
use crate::store::StoreSettings;
pub(in crate::store) use writer::record_group;
use writer::{Job, WriteJob, open_writer, prepare_for_group_commit, run_writer};

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        prepare_for_group_commit(&connection, &path_text)?;
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
