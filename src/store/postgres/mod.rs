//! The PostgreSQL store (`store.backend = "postgres"`): a database several gateway nodes
//! share. Files: [`writer`] (the single writer task and group commit), [`migrations`] (the
//! versioned schema in `migrations/postgres/`), [`trading`], [`history`], [`feeds`] and
//! [`api_keys`] (one store interface each); this file connects and holds the pool.
//!
//! The connections run on a small tokio runtime of the store's own (two threads, one when the
//! process may use only one CPU), so the
//! store works from any executor, and start-up can wait for it synchronously like it waits
//! for the SQLite writer thread. Writes go through one writer task in call order (group
//! commit: queued writes share one transaction, a savepoint each); reads take pooled
//! connections. A commit returns once PostgreSQL reports it durable (`synchronous_commit`
//! as the server is configured; the default `on` waits for the WAL flush).
//!
//! No TLS: the database is expected on loopback or a private network (see
//! `docs/deployment.md`). The URL may hold a password and is never logged: errors name the
//! database as `postgresql://host:port/database`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

mod api_keys;
mod feeds;
mod history;
pub mod migrations;
mod trading;
mod writer;

use super::{StoreError, StoreHealth, StoreSettings};
use crate::metrics::Metrics;
use writer::{Job, JobWork, WriteJob, run_writer};

/// How long connecting, or waiting for a pooled connection, may take before the store
/// reports an error instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Work for one connection: a closure that borrows the connection for the future it returns.
pub(super) type Work<T> =
    Box<dyn for<'c> FnOnce(&'c ClientWrapper) -> BoxFuture<'c, Result<T, StoreError>> + Send>;

/// Work whose every failure leaves nothing of it in the transaction (it fails before sending
/// a statement, or a statement fails in the server): given a closing statement (`COMMIT`),
/// it sends it right after its own statements, without waiting for their answers, and returns
/// that statement's result too (`None` when it did not send it).
pub(super) type PipelinedWork<T> = Box<
    dyn for<'c> FnOnce(
            &'c ClientWrapper,
            Option<&'static str>,
        )
            -> BoxFuture<'c, (Result<T, StoreError>, Option<Result<(), StoreError>>)>
        + Send,
>;

/// Boxes a closure as [`Work`]; the bound lets the compiler infer the borrow.
fn work<T, F>(function: F) -> Work<T>
where
    F: for<'c> FnOnce(&'c ClientWrapper) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
{
    Box::new(function)
}

/// The store's own runtime, shut down without waiting when the store goes (dropping a
/// runtime inside another runtime's task would panic).
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The PostgreSQL implementation of every store interface.
pub struct PostgresStore {
    /// `postgresql://host:port/database`, for errors and logs (no user, no password).
    target: String,
    pool: Pool,
    writer: mpsc::UnboundedSender<Box<dyn WriteJob>>,
    health: StoreHealth,
    runtime: tokio::runtime::Handle,
    /// Declared last: the runtime stops after the pool and the writer's sender are dropped.
    _runtime: StoreRuntime,
}

/// Checks a `store.postgres_url` without connecting; the problem, without the URL itself.
pub fn check_url(url: &str) -> Result<(), String> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| format!("not a PostgreSQL connection URL ({e})"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host (postgres://user:password@host:port/database)".into());
    }
    Ok(())
}

/// The database a configuration points at, without credentials.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("?");
    format!("postgresql://{host}:{port}/{database}")
}

/// The SQLSTATE `claim_fence` (migration 3) raises when the stored fencing token is larger
/// than the batch's; the error's DETAIL is the stored token.
pub(super) const FENCED_SQLSTATE: &str = "TGF01";

/// Maps a driver error to the store's error, naming the database.
///
/// A refused fence becomes [`StoreError::Fenced`] with the stored token (`current`); the
/// error does not carry the fence's name or the batch's token, so they are left empty here
/// and the caller that claimed the fence fills them in ([`trading`] does).
pub(super) fn classify(target: &str, error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) if db.code().code() == FENCED_SQLSTATE => {
            match db
                .detail()
                .and_then(|detail| detail.trim().parse::<u64>().ok())
            {
                Some(current) => StoreError::Fenced {
                    name: String::new(),
                    token: 0,
                    current,
                },
                None => StoreError::Database {
                    path: target.into(),
                    detail: format!(
                        "{} ({FENCED_SQLSTATE}, without the stored token as its detail)",
                        db.message()
                    ),
                },
            }
        }
        Some(db) if *db.code() == SqlState::DISK_FULL => StoreError::DiskFull {
            path: target.into(),
        },
        Some(db)
            if *db.code() == SqlState::DATA_CORRUPTED
                || *db.code() == SqlState::INDEX_CORRUPTED =>
        {
            StoreError::Corrupt {
                path: target.into(),
                detail: db.message().into(),
            }
        }
        Some(db) => StoreError::Database {
            path: target.into(),
            detail: format!("{} ({})", db.message(), db.code().code()),
        },
        None => StoreError::Database {
            path: target.into(),
            detail: error_chain(&error),
        },
    }
}

/// An error with its causes, one line ("connection refused" is in the source, not the top).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn pool_error(target: &str, error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => classify(target, error),
        other => StoreError::Database {
            path: target.into(),
            detail: format!("no database connection: {}", error_chain(&other)),
        },
    }
}

pub(super) fn decode_error(target: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Decode {
        path: target.into(),
        detail: detail.to_string(),
    }
}

pub(super) fn parse_decimal(target: &str, text: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(text).map_err(|e| decode_error(target, format!("decimal {text:?}: {e}")))
}

pub(super) fn parse_time(target: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| decode_error(target, format!("time {text:?}: {e}")))
}

/// A `u64` the schema keeps in a BIGINT; larger values are an error, never wrapped.
pub(super) fn to_bigint(target: &str, what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Database {
        path: target.into(),
        detail: format!("{what} {value} does not fit the database's BIGINT"),
    })
}

impl PostgresStore {
    /// Connects, applies migrations and starts the writer task. Waits on the calling thread:
    /// start-up only.
    pub fn open(
        settings: &StoreSettings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<PostgresStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(&settings.postgres_url).map_err(|e| {
            StoreError::Open {
                path: "store.postgres_url".into(),
                detail: format!("not a PostgreSQL connection URL ({e})"),
            }
        })?;
        let target = describe(&config);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("tickgate");
        }
        // Two threads at most, and no more than the CPUs this process may run on: on one CPU
        // a second worker only adds wake-ups (the connection task and the writer hand every
        // request and answer across threads, and requests meant to travel together are
        // flushed apart), about two context switches per commit in the cluster benchmark.
        let workers = std::thread::available_parallelism().map_or(2, |cpus| cpus.get().min(2));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tickgate-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open {
                path: target.clone(),
                detail: format!("cannot start the store's runtime: {e}"),
            })?;
        let handle = runtime.handle().clone();
        let runtime = StoreRuntime(Some(runtime));
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // One connection for the writer plus the readers.
        let pool = Pool::builder(manager)
            .max_size(settings.read_connections.max(1) + 1)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Open {
                path: target.clone(),
                detail: e.to_string(),
            })?;
        let migrate_pool = pool.clone();
        let migrate_target = target.clone();
        let applied = wait_on(&handle, async move {
            let mut client = migrate_pool.get().await.map_err(|e| match e {
                deadpool_postgres::PoolError::Backend(error) => StoreError::Open {
                    path: migrate_target.clone(),
                    detail: error_chain(&error),
                },
                other => StoreError::Open {
                    path: migrate_target.clone(),
                    detail: error_chain(&other),
                },
            })?;
            migrations::migrate(&mut client, &migrate_target).await
        })?;
        if !applied.is_empty() {
            tracing::info!(database = %target, ?applied, "store migrations applied");
        }
        let health = StoreHealth::default();
        let (writer, jobs) = mpsc::unbounded_channel::<Box<dyn WriteJob>>();
        handle.spawn(run_writer(
            pool.clone(),
            jobs,
            settings.trading_batch_size.max(1),
            health.clone(),
            target.clone(),
            metrics,
        ));
        Ok(PostgresStore {
            target,
            pool,
            writer,
            health,
            runtime: handle,
            _runtime: runtime,
        })
    }

    pub fn health(&self) -> StoreHealth {
        self.health.clone()
    }

    /// `postgresql://host:port/database`: where the store is, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Queues a write now (so writes commit in call order); resolves once its group
    /// transaction committed.
    fn write_future<T: Send + 'static>(
        &self,
        work: Work<T>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.queue_write(JobWork::Plain(work))
    }

    /// [`PostgresStore::write_future`] for work that aborts the transaction on every failure:
    /// alone in its group, it runs in one round trip (see `writer`).
    fn write_pipelined<T: Send + 'static>(
        &self,
        work: PipelinedWork<T>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        self.queue_write(JobWork::Pipelined(work))
    }

    fn queue_write<T: Send + 'static>(
        &self,
        work: JobWork<T>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let (reply, receiver) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            output: None,
            reply,
        });
        // If the writer task is gone the job (and its reply sender) is dropped, and the
        // receiver reports `Closed`.
        let _ = self.writer.send(job);
        Box::pin(async move { receiver.await.unwrap_or(Err(StoreError::Closed)) })
    }

    /// Runs `work` on a pooled connection on the store's runtime.
    fn read_future<T: Send + 'static>(
        &self,
        work: Work<T>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let pool = self.pool.clone();
        let target = self.target.clone();
        let task = self.runtime.spawn(async move {
            let client = pool.get().await.map_err(|e| pool_error(&target, e))?;
            work(&client).await
        });
        Box::pin(async move { task.await.unwrap_or(Err(StoreError::Closed)) })
    }
}

/// Runs `future` on the store's runtime and waits for it on this thread, which may belong to
/// another runtime (start-up is synchronous).
fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    future: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let task = runtime.spawn(future);
    futures::executor::block_on(task).unwrap_or(Err(StoreError::Closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_connecting_and_described_without_credentials() {
        assert!(check_url("postgres://u:p@db.internal:6543/tickgate").is_ok());
        assert!(check_url("host=127.0.0.1 port=5433 dbname=tickgate user=u").is_ok());
        let no_host = check_url("postgres:///tickgate").expect_err("no host");
        assert!(no_host.contains("host"), "{no_host}");
        assert!(check_url("mysql://u:p@h/db").is_err());
        let config = tokio_postgres::Config::from_str("postgres://u:secret@db.internal:6543/tick")
            .expect("parses");
        assert_eq!(describe(&config), "postgresql://db.internal:6543/tick");
        let config = tokio_postgres::Config::from_str("postgres://u@10.0.0.6").expect("parses");
        assert_eq!(describe(&config), "postgresql://10.0.0.6:5432/u");
    }

    #[test]
    fn a_value_too_large_for_bigint_is_an_error_not_a_wrapped_number() {
        assert_eq!(to_bigint("db", "token", 7), Ok(7));
        let error = to_bigint("db", "token", u64::MAX).expect_err("too large");
        assert!(error.to_string().contains("BIGINT"), "{error}");
    }
}
