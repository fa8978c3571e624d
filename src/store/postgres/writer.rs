//! The writer task: every write of this process goes through it in call order, and queued
//! writes are group-committed: one transaction with a savepoint per write, so one failing
//! write (a fenced batch, a duplicate key) is rolled back alone and the rest commit together.
//! A write that is alone in its group and whose every failure aborts the transaction (a
//! trading batch) needs no savepoint: `BEGIN`, its statements and `COMMIT` go out pipelined,
//! one round trip.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::{ClientWrapper, Pool};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{StoreError, StoreHealth};

use super::{PipelinedWork, Work, classify, pool_error};

/// What running a job reports.
pub(super) struct Ran {
    /// The work's own result.
    pub(super) work: Result<(), StoreError>,
    /// The closing statement's result, when the writer asked for one and the job sent it.
    /// `Err` also when the closing answered but the job cannot say that nothing of it
    /// committed (see [`WriteJob::aborts_on_failure`]).
    pub(super) closing: Option<Result<(), StoreError>>,
}

/// A unit of work for the writer task, run inside the current group transaction.
pub(super) trait WriteJob: Send {
    /// True when every failure of the work leaves nothing of it in the transaction: it fails
    /// before sending a statement, or one of its statements fails in the server (which aborts
    /// the transaction, so a later `COMMIT` answers `ROLLBACK`). Such a job, alone in its
    /// group, runs without a savepoint, with `COMMIT` sent right after its statements.
    fn aborts_on_failure(&self) -> bool;
    /// Runs the work (inside its savepoint, or alone in the transaction); the result is kept
    /// until the group commits. With `closing`, a job that
    /// [aborts on failure](WriteJob::aborts_on_failure) sends that statement right after its
    /// own, without waiting for their answers, unless it fails before sending anything; any
    /// other job ignores it. The writer ends the transaction itself when the job did not.
    fn run<'a>(
        &'a mut self,
        client: &'a ClientWrapper,
        closing: Option<&'static str>,
    ) -> BoxFuture<'a, Ran>;
    /// Sends the result: the work's own error, the group's commit error, or the value.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

/// The work of a [`Job`]: plain, or pipelined with the transaction's end.
pub(super) enum JobWork<T> {
    Plain(Work<T>),
    Pipelined(PipelinedWork<T>),
}

pub(super) struct Job<T> {
    pub(super) work: Option<JobWork<T>>,
    pub(super) output: Option<Result<T, StoreError>>,
    pub(super) reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> WriteJob for Job<T> {
    fn aborts_on_failure(&self) -> bool {
        matches!(self.work, Some(JobWork::Pipelined(_)))
    }

    fn run<'a>(
        &'a mut self,
        client: &'a ClientWrapper,
        closing: Option<&'static str>,
    ) -> BoxFuture<'a, Ran> {
        Box::pin(async move {
            let (result, closed) = match self.work.take() {
                Some(JobWork::Pipelined(work)) => work(client, closing).await,
                Some(JobWork::Plain(work)) => (work(client).await, None),
                None => (Err(StoreError::Closed), None),
            };
            let status = result.as_ref().map(|_| ()).map_err(Clone::clone);
            self.output = Some(result);
            Ran {
                work: status,
                closing: closed,
            }
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
    if let [job] = group
        && job.aborts_on_failure()
    {
        return run_alone(&client, job.as_mut(), target).await;
    }
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
        let (opened, ran) = futures::join!(client.batch_execute(&opened), job.run(&client, None));
        if let Err(error) = opened {
            let _ = client.batch_execute("ROLLBACK").await;
            return (Err(classify(target, error)), job_failure);
        }
        opening = match ran.work {
            Ok(()) => "RELEASE SAVEPOINT job",
            Err(error) => {
                if error.troubles_the_database() && job_failure.is_none() {
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

/// Runs a job that is alone in its group and [aborts on failure](WriteJob::aborts_on_failure):
/// `BEGIN`, the job's statements and `COMMIT` are sent together, one round trip, and no
/// savepoint is needed, because nothing but the job is in the transaction.
///
/// PostgreSQL's rules decide the reading: after a failed statement the rest of the
/// transaction block fails too, and `COMMIT` in an aborted transaction answers `ROLLBACK`
/// without an error. So the job's own error, not `COMMIT`'s answer, says that nothing of it
/// committed; the group's result is then `Ok` (the database is fine: a fenced batch or a
/// broken constraint is the job's failure, reported to it alone, and the store stays
/// healthy). When the outcome is unknown (the connection broke after the statements were
/// sent, or the job failed in the client after sending some of them) the commit result is
/// `Err`, as in the savepoint path: the job is reported failed and the exchange halts and
/// rebuilds from what is stored.
async fn run_alone(
    client: &ClientWrapper,
    job: &mut dyn WriteJob,
    target: &str,
) -> (Result<(), StoreError>, Option<StoreError>) {
    // `join!` polls in order: `BEGIN` is sent first, then the job's statements and `COMMIT`.
    let (begun, ran) = futures::join!(
        client.batch_execute("BEGIN"),
        job.run(client, Some("COMMIT"))
    );
    let job_failure = ran
        .work
        .as_ref()
        .err()
        .filter(|error| error.troubles_the_database())
        .cloned();
    let committed = match (begun, ran.closing) {
        // Without `BEGIN` the statements ran each on its own: what committed is unknown.
        (Err(error), _) => Err(classify(target, error)),
        (Ok(()), Some(closed)) => closed,
        // The job stopped before sending its statements (or is not pipelined): end the
        // transaction here, committing only what succeeded.
        (Ok(()), None) => {
            let end = if ran.work.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            client
                .batch_execute(end)
                .await
                .map_err(|e| classify(target, e))
        }
    };
    if committed.is_err() {
        // Leaves the connection outside a transaction if it still works.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    (committed, job_failure)
}
