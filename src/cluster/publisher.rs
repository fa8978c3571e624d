//! The ordered publisher of a node: events queued by sources and the publish API go to the
//! publish script in pipelined batches, in queue order, and each gets its answer.

use std::sync::Arc;

use redis::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::node::{ClusterError, ClusterPublishError, Inner, Job, MAX_BATCH, new_epoch, timed};
use super::wire;

/// Sends queued events to Redis in order, in pipelined batches, and answers each.
pub(super) async fn run_publisher(
    inner: Arc<Inner>,
    mut queued: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            received = queued.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    return;
                }
            }
        }
        publish_batch(&inner, &mut batch).await;
    }
}

async fn publish_batch(inner: &Inner, batch: &mut Vec<Job>) {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let epoch = new_epoch();
    let window = inner.config.replay_window;
    for job in batch.iter() {
        let lease_key = match &job.lease {
            Some(ticket) => wire::lease_key(ticket.source()),
            None => wire::epoch_key(),
        };
        pipe.cmd("EVAL")
            .arg(&inner.publish_script)
            .arg(5)
            .arg(wire::epoch_key())
            .arg(wire::meta_key(job.feed))
            .arg(wire::stream_key(job.feed))
            .arg(wire::latest_key())
            .arg(lease_key)
            .arg(epoch)
            .arg(window)
            .arg(wire::channel(job.feed))
            .arg(job.lease.as_ref().map_or("", |ticket| ticket.value()))
            .arg(job.latest_field.as_deref().unwrap_or(""))
            .arg(&job.time_key)
            .arg(job.json.as_ref());
    }
    let mut connection = inner.commands.clone();
    let started = tokio::time::Instant::now();
    let results: Result<Vec<redis::RedisResult<Value>>, ClusterError> = timed(
        inner.config.response_timeout(),
        pipe.query_async(&mut connection),
    )
    .await;
    let elapsed = started.elapsed();
    match results {
        Ok(results) if results.len() == batch.len() => {
            inner.metrics.set_gauge(
                "tickgate_cluster_publish_seconds",
                "Round trip of the last batch of events sent to Redis.",
                "",
                elapsed.as_secs_f64(),
            );
            for (job, result) in batch.drain(..).zip(results) {
                let outcome = publish_outcome(result);
                if let Err(error) = &outcome {
                    publish_failed(inner, &job, error);
                }
                if let Some(reply) = job.reply {
                    let _ = reply.send(outcome);
                }
            }
        }
        other => {
            let reason = match other {
                Err(error) => error.to_string(),
                Ok(_) => "redis answered a different number of results".into(),
            };
            for job in batch.drain(..) {
                let error = ClusterPublishError::Unavailable(reason.clone());
                publish_failed(inner, &job, &error);
                if let Some(reply) = job.reply {
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}

fn publish_outcome(result: redis::RedisResult<Value>) -> Result<(u64, u64), ClusterPublishError> {
    match result {
        Ok(value) => {
            let (epoch, seq): (u64, u64) = redis::from_redis_value(value)
                .map_err(|error| ClusterPublishError::Unavailable(error.to_string()))?;
            Ok((epoch, seq))
        }
        Err(error) => Err(match error.code() {
            Some("FENCED") => ClusterPublishError::Fenced,
            Some("BACKWARDS") => ClusterPublishError::TimeWentBackwards,
            _ => ClusterPublishError::Unavailable(error.to_string()),
        }),
    }
}

impl ClusterPublishError {
    /// The metric label of this refusal.
    pub fn reason_label(&self) -> &'static str {
        match self {
            ClusterPublishError::Fenced => "fenced",
            ClusterPublishError::TimeWentBackwards => "time_backwards",
            ClusterPublishError::Unavailable(_) => "cluster_unavailable",
            ClusterPublishError::Backlog => "cluster_backlog",
            ClusterPublishError::Encode(_) => "encode",
        }
    }
}

fn publish_failed(inner: &Inner, job: &Job, error: &ClusterPublishError) {
    let reason = error.reason_label();
    inner.metrics.add_counter(
        "tickgate_cluster_publish_failures_total",
        "Events Redis did not accept, by reason.",
        &format!("reason=\"{reason}\""),
        1.0,
    );
    if let (ClusterPublishError::Fenced, Some(ticket)) = (error, &job.lease) {
        tracing::warn!(
            source = ticket.source(),
            "publish refused: the lease was lost"
        );
        ticket.mark_lost();
    }
}
