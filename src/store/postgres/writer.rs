//! The writer task: every write of this process goes through it in call order, and queued
//! writes are group-committed: one transaction with a savepoint per write, so one failing
//! write (a fenced batch, a duplicate key) is rolled back alone and the rest commit together.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::{ClientWrapper, Pool};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{StoreError, StoreHealth};

use super::{Work, classify, pool_error};

/// A unit of work for the writer task, run inside the current group transaction.
pub(super) trait WriteJob: Send {
    /// Runs the work (inside its savepoint); the result is kept until the group commits.
    fn run<'a>(&'a mut self, client: &'a ClientWrapper) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Sends the result: the work's own error, the group's commit error, or the value.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(super) struct Job<T> {
    pub(super) work: Option<Work<T>>,
    pub(super) output: Option<Result<T, StoreError>>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> WriteJob for Job<T> {
    fn run<'a>(&'a mut self, client: &'a ClientWrapper) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let result = match self.work.take() {
                Some(work) => work(client).await,
                None => Err(StoreError::Closed),
            };
            let status = result.as_ref().map(|_| ()).map_err(Clone::clone);
            self.output = Some(result);
            status
        })
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

/// Takes the next job, gathers whatever else is queued (up to `max_group`), runs them in one
/// transaction, commits once and replies to all of them. Ends when every sender is gone.
pub(super) async fn run_writer(
    pool: Pool,
    mut jobs: mpsc::UnboundedReceiver<Box<dyn WriteJob>>,
    max_group: usize,
    health: StoreHealth,
    target: String,
    metrics: Option<Arc<Metrics>>,
) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(max_group);
    while let Some(first) = jobs.recv().await {
        group.push(first);
        while group.len() < max_group {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let (commit, job_failure) = run_group(&pool, &mut group, &target).await;
        if let Some(metrics) = &metrics {
            crate::store::sqlite::record_group(metrics, group.len(), &commit, started.elapsed());
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
    tracing::debug!(database = %target, "store writer stopped");
}

/// Runs one group; returns the commit result and the first job error that means the
/// database itself is in trouble (full disk, corruption).
///
/// If the connection breaks while `COMMIT` is under way, the outcome is unknown to this
/// process: the group is reported failed (nothing is acknowledged), although PostgreSQL may
/// have committed it. The exchange then halts and rebuilds from what is stored.
async fn run_group(
    pool: &Pool,
    group: &mut [Box<dyn WriteJob>],
    target: &str,
) -> (Result<(), StoreError>, Option<StoreError>) {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(error) => return (Err(pool_error(target, error)), None),
    };
    // The statements that close one job and open the next travel together (`BEGIN` with the
    // first savepoint, a job's release with the next one's savepoint, the last release with
    // `COMMIT`, which ends every savepoint), and they are pipelined with the job's own
    // statements (sent before them, without waiting for their answer): one round trip per job
    // and one for the commit. A failure anywhere in such a string skips its rest and leaves
    // the transaction aborted (so the job's statements fail too), and the group is rolled
    // back whole.
    let mut opening = "BEGIN";
    let mut job_failure = None;
    for job in group.iter_mut() {
        let opened = format!("{opening}; SAVEPOINT job");
        // `join!` polls in order: the opening is sent first, then the job's statements.
        let (opened, ran) = futures::join!(client.batch_execute(&opened), job.run(&client));
        if let Err(error) = opened {
            let _ = client.batch_execute("ROLLBACK").await;
            return (Err(classify(target, error)), job_failure);
        }
        opening = match ran {
            Ok(()) => "RELEASE SAVEPOINT job",
            Err(error) => {
                if matches!(
                    error,
                    StoreError::DiskFull { .. } | StoreError::Corrupt { .. }
                ) && job_failure.is_none()
                {
                    job_failure = Some(error);
                }
                "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"
            }
        };
    }
    if let Err(error) = client.batch_execute(&format!("{opening}; COMMIT")).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return (Err(classify(target, error)), job_failure);
    }
    (Ok(()), job_failure)
}
