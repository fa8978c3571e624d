//! The writer thread: the one read-write connection (WAL, `synchronous = FULL`), checked
//! before anything is written, and group commit: queued jobs run in one transaction with a
//! savepoint each, then one fsync answers them all.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{StoreError, StoreHealth};

use super::{BUSY_TIMEOUT, classify};

/// A unit of work for the writer thread, run inside the current group transaction.
pub(super) trait WriteJob: Send {
    /// Runs the work inside its own savepoint; the result is kept until the group commits.
    fn run(&mut self, connection: &Connection) -> Result<(), StoreError>;
    /// Sends the result: the work's own error, the group's commit error, or the value.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(super) struct Job<T, F> {
    pub(super) work: Option<F>,
    pub(super) output: Option<Result<T, StoreError>>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
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

/// Opens the writer connection, sets WAL and FULL sync, and checks the file is a sound
/// database before anything is written to it.
pub(super) fn open_writer(path: &Path, path_text: &str) -> Result<Connection, StoreError> {
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

/// Readies the writer connection for group commit, once migrations are done (they may sort
/// more than fits in memory, so they keep the default).
///
/// Every write job runs in its own savepoint, and SQLite keeps the pre-image of each page a
/// savepoint changes in a sub-journal. By default that spills to a temporary file past
/// 64 KiB, which a group of trading steps passes: one extra `pwrite` per page, the largest
/// single cost in the profile of a busy writer (docs/perf/2026-12-06-order-sequences-cost.md).
/// In memory it is a copy. It holds at most one group's changed pages and is never read after
/// a crash (the WAL, not the sub-journal, makes commits durable).
pub(super) fn prepare_for_group_commit(
    connection: &Connection,
    path_text: &str,
) -> Result<(), StoreError> {
    connection
        .pragma_update(None, "temp_store", "MEMORY")
        .map_err(|e| classify(path_text, e))
}

/// The writer thread: takes the next job, gathers whatever else is queued (up to
/// `max_group`), runs them in one transaction with a savepoint each, commits once (one
/// fsync) and then replies to all of them.
pub(super) fn run_writer(
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

/// Counts one group transaction in `/metrics` (the PostgreSQL writer counts its groups the
/// same way).
pub(in crate::store) fn record_group(
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
                if error.troubles_the_database() && job_failure.is_none() {
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
