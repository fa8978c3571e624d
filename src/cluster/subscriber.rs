//! A node's subscriber and health check: the subscription to the feeds' channels, the repair
//! reads that keep the local log equal to the shared one, and the health the node reports.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::merge::{Action, FeedMerge};
use super::node::{ClusterError, Inner, timed};
use super::{SequencedSink, wire};
use crate::hub::Feed;

/// Pings Redis on the command connection: the round-trip gauge, and "down" when it fails.
pub(super) async fn run_health_check(
    inner: Arc<Inner>,
    sink: Arc<dyn SequencedSink>,
    shutdown: CancellationToken,
) {
    let mut ticker =
        tokio::time::interval(inner.config.renew_interval().min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut connection = inner.commands.clone();
        let started = tokio::time::Instant::now();
        let result: Result<String, ClusterError> = timed(
            inner.config.response_timeout(),
            redis::cmd("PING").query_async(&mut connection),
        )
        .await;
        match result {
            Ok(_) => {
                inner.metrics.set_gauge(
                    "tickgate_cluster_redis_rtt_seconds",
                    "Round trip of the last health ping to Redis.",
                    "",
                    started.elapsed().as_secs_f64(),
                );
                inner.set_command_result(None, &*sink);
            }
            Err(error) => {
                inner.set_command_result(Some(format!("redis unreachable: {error}")), &*sink);
            }
        }
    }
}

/// Keeps the local logs equal to the shared ones, reconnecting until shutdown.
pub(super) async fn run_subscriber(
    inner: Arc<Inner>,
    sink: Arc<dyn SequencedSink>,
    shutdown: CancellationToken,
) {
    let mut merges: [FeedMerge; 3] = Default::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        let reason = match subscription(&inner, &*sink, &mut merges, &shutdown).await {
            Ok(()) => return,
            Err(error) => error.to_string(),
        };
        inner.set_synced(false, &format!("redis subscription lost: {reason}"), &*sink);
        inner.metrics.add_counter(
            "tickgate_cluster_reconnects_total",
            "Times the subscription to Redis was lost and set up again.",
            "",
            1.0,
        );
        tracing::debug!(%reason, "redis subscription lost; reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One subscription's life: subscribe, repair every feed, then merge live messages.
async fn subscription(
    inner: &Inner,
    sink: &dyn SequencedSink,
    merges: &mut [FeedMerge; 3],
    shutdown: &CancellationToken,
) -> Result<(), ClusterError> {
    let limit = inner.config.response_timeout();
    let pubsub = timed(limit, inner.client.get_async_pubsub()).await?;
    let (mut control, mut messages) = pubsub.split();
    let channels: Vec<String> = Feed::ALL.iter().map(|feed| wire::channel(*feed)).collect();
    timed(limit, control.subscribe(&channels)).await?;
    for feed in Feed::ALL {
        let merge = &mut merges[feed_index(feed)];
        let from = merge.resubscribed();
        repair(inner, sink, feed, merge, from).await?;
    }
    inner.set_synced(true, "", sink);
    let mut ping = tokio::time::interval(inner.config.renew_interval().min(Duration::from_secs(1)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut actions = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => {
                let Some(message) = message else {
                    return Err(ClusterError::Reply("the subscription connection closed".into()));
                };
                let Some(feed) = wire::feed_of_channel(message.get_channel_name()) else {
                    continue;
                };
                let Some((epoch, seq, json)) = wire::decode_message(message.get_payload_bytes()) else {
                    tracing::warn!(channel = message.get_channel_name(), "undecodable cluster message ignored");
                    continue;
                };
                let merge = &mut merges[feed_index(feed)];
                let repair_from = merge.live(epoch, seq, json, &mut actions);
                carry_out(sink, feed, epoch, &mut actions, &[]);
                if let Some(from) = repair_from {
                    repair(inner, sink, feed, merge, from).await?;
                    align_epochs(inner, sink, merges, feed).await?;
                }
            }
            _ = ping.tick() => {
                // A subscription whose connection silently died would never end by itself.
                timed(limit, control.ping::<Value>()).await?;
            }
        }
    }
}

/// After `changed` moved to another epoch, the other feeds follow at once (the epoch is one
/// for all feeds): each is read again, which resets it under the new epoch. Without this a
/// quiet feed would keep the old epoch until its next event.
async fn align_epochs(
    inner: &Inner,
    sink: &dyn SequencedSink,
    merges: &mut [FeedMerge; 3],
    changed: Feed,
) -> Result<(), ClusterError> {
    let epoch = merges[feed_index(changed)]
        .position()
        .map(|(epoch, _)| epoch);
    for feed in Feed::ALL {
        let merge = &mut merges[feed_index(feed)];
        if feed != changed && merge.position().map(|(epoch, _)| epoch) != epoch {
            let from = merge.resubscribed();
            repair(inner, sink, feed, merge, from).await?;
        }
    }
    Ok(())
}

/// Reads `feed` from `from` until the merge has no hole left, applying as it goes.
async fn repair(
    inner: &Inner,
    sink: &dyn SequencedSink,
    feed: Feed,
    merge: &mut FeedMerge,
    mut from: u64,
) -> Result<(), ClusterError> {
    let mut actions = Vec::new();
    loop {
        let with_latest = feed == Feed::Market;
        let read = inner
            .read(feed, from, with_latest, merge.position())
            .await?;
        let epoch = read.read.epoch;
        let was = merge.position();
        let next = merge.stream(read.read, &mut actions);
        let applied = actions
            .iter()
            .filter(|action| matches!(action, Action::Apply { .. }))
            .count();
        if was.is_some() {
            inner.metrics.add_counter(
                "tickgate_cluster_repairs_total",
                "Reads of a feed's stream to fill a gap or catch up after a reconnect.",
                &format!("feed=\"{}\"", feed.name()),
                1.0,
            );
            inner.metrics.add_counter(
                "tickgate_cluster_repaired_events_total",
                "Events a node took from the stream rather than from pub/sub (repair size).",
                &format!("feed=\"{}\"", feed.name()),
                applied as f64,
            );
        }
        let resets = actions
            .iter()
            .filter(|action| matches!(action, Action::Reset { initial: false, .. }))
            .count();
        if resets > 0 {
            inner.metrics.add_counter(
                "tickgate_cluster_resets_total",
                "Times a feed's local log had to start afresh (new epoch, or a hole the stream \
                 no longer held); its clients got an explicit reset.",
                &format!("feed=\"{}\"", feed.name()),
                resets as f64,
            );
        }
        carry_out(sink, feed, epoch, &mut actions, &read.latest);
        match next {
            Some(again) => from = again,
            None => return Ok(()),
        }
    }
}

/// Hands merged actions to the sink. After a reset of the market feed, latest values older
/// than the new start are seeded first, so snapshots cover symbols with no recent event.
fn carry_out(
    sink: &dyn SequencedSink,
    feed: Feed,
    epoch: u64,
    actions: &mut Vec<Action>,
    latest: &[(u64, Bytes)],
) {
    let mut epoch = epoch;
    for action in actions.drain(..) {
        match action {
            Action::Reset {
                epoch: new_epoch,
                next_seq,
                initial,
            } => {
                epoch = new_epoch;
                sink.reset(feed, new_epoch, next_seq, initial);
                if feed == Feed::Market && !latest.is_empty() {
                    let older = latest
                        .iter()
                        .filter(|(seq, _)| *seq < next_seq)
                        .cloned()
                        .collect();
                    sink.seed_latest(new_epoch, older);
                }
            }
            Action::Apply { seq, payload } => sink.apply(feed, epoch, seq, payload),
        }
    }
}

fn feed_index(feed: Feed) -> usize {
    match feed {
        Feed::Market => 0,
        Feed::News => 1,
        Feed::Alerts => 2,
    }
}
