//! One gateway node's link to Redis: the command connection (a `ConnectionManager` that
//! reconnects by itself), the ordered publisher, the subscriber that keeps the local log equal
//! to the shared one, and the health the node reports.
//!
//! The subscriber has a connection of its own rather than using the manager's automatic
//! resubscription: when that connection drops, the node must read what it missed from the
//! stream right after subscribing again, and with its own connection it knows exactly when
//! that moment is. Subscribing happens before reading, so nothing falls between the two.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lease::LeaseTicket;
use super::merge::{Action, FeedMerge, StreamRead};
use super::{SequencedSink, scripts, wire};
use crate::hub::Feed;
use crate::market::MarketEvent;
use crate::metrics::Metrics;
use crate::settings::ClusterSettings;

/// What a node needs to know to join the cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// This node's name (never empty: derived when the settings leave it empty).
    pub node_id: String,
    pub lease_ttl: Duration,
    /// Length of each feed's stream in Redis: the shared replay window.
    pub replay_window: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("replay_window", &self.replay_window)
            .finish()
    }
}

impl ClusterConfig {
    pub fn from_settings(settings: &ClusterSettings, replay_window: usize) -> ClusterConfig {
        let node_id = if settings.node_id.is_empty() {
            derived_node_id()
        } else {
            settings.node_id.clone()
        };
        ClusterConfig {
            redis_url: settings.redis_url.clone(),
            node_id,
            lease_ttl: settings.lease_ttl,
            replay_window,
        }
    }

    /// How often leases are renewed and free leases are tried: a third of their life, so one
    /// lost renewal still leaves time for another.
    pub fn renew_interval(&self) -> Duration {
        (self.lease_ttl / 3).max(Duration::from_millis(50))
    }

    /// How long one Redis round trip may take before the node counts Redis as unreachable.
    fn response_timeout(&self) -> Duration {
        self.renew_interval().min(Duration::from_secs(1))
    }
}

/// `<host>-<pid>`, from the kernel's host name (letters, digits and `-` kept).
fn derived_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// A failure talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// Why an event was not published to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterPublishError {
    /// The publisher's lease is gone (expired, taken over, or Redis lost it): the fencing check
    /// in the publish script refused the event.
    #[error("this node no longer holds the lease of the source")]
    Fenced,
    /// An event of the same symbol and kind with a later time was published (on any node).
    #[error("time went backwards for this symbol")]
    TimeWentBackwards,
    #[error("the cluster is unavailable: {0}")]
    Unavailable(String),
    /// More events are waiting for Redis than the node queues.
    #[error("too many events are waiting for the cluster")]
    Backlog,
    #[error("could not encode event: {0}")]
    Encode(String),
}

/// One read of a feed: the merge input plus, when asked for, the latest values by sequence.
#[derive(Debug, Clone)]
pub struct FeedRead {
    pub read: StreamRead,
    pub latest: Vec<(u64, Bytes)>,
}

/// One event on its way to the publish script.
struct Job {
    feed: Feed,
    json: Bytes,
    latest_field: Option<String>,
    time_key: String,
    lease: Option<LeaseTicket>,
    reply: Option<oneshot::Sender<Result<(u64, u64), ClusterPublishError>>>,
}

/// Events queued for Redis per node before `submit` reports a backlog.
const PUBLISH_QUEUE: usize = 8192;

/// Events sent to Redis in one pipelined round trip at most.
const MAX_BATCH: usize = 256;

/// A node of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    client: redis::Client,
    commands: ConnectionManager,
    jobs: mpsc::Sender<Job>,
    queued: Mutex<Option<mpsc::Receiver<Job>>>,
    metrics: Arc<Metrics>,
    publish_script: String,
    read_script: String,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    /// The subscriber is connected and its log is caught up.
    synced: bool,
    /// The last command (health ping) round trip failed, with why.
    command_failure: Option<String>,
    /// What was last reported to the sink (`None`: nothing yet).
    reported: Option<bool>,
    reason: String,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl ClusterNode {
    /// Prepares the node; nothing is sent to Redis until [`ClusterNode::start`]. Needs a
    /// tokio runtime.
    pub fn new(config: ClusterConfig, metrics: Arc<Metrics>) -> Result<ClusterNode, ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let timeout = config.response_timeout();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let (jobs, queued) = mpsc::channel(PUBLISH_QUEUE);
        Ok(ClusterNode {
            inner: Arc::new(Inner {
                config,
                client,
                commands,
                jobs,
                queued: Mutex::new(Some(queued)),
                metrics,
                publish_script: scripts::publish_source(),
                read_script: scripts::read_source(),
                health: Mutex::new(Health {
                    synced: false,
                    command_failure: None,
                    reported: None,
                    reason: "not yet connected to redis".into(),
                }),
            }),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Whether the node is connected and caught up, and if not, why.
    pub fn health(&self) -> Result<(), String> {
        let health = self.inner.health.lock();
        if health.synced && health.command_failure.is_none() {
            Ok(())
        } else {
            Err(health.reason.clone())
        }
    }

    /// Starts the publisher, the subscriber (which delivers to `sink`) and the health check,
    /// all ending when `shutdown` fires. Call once.
    pub fn start(&self, sink: Arc<dyn SequencedSink>, shutdown: CancellationToken) {
        self.inner.metrics.set_gauge(
            "tickgate_cluster_up",
            "1 when this node is connected to Redis and its feeds are caught up.",
            "",
            0.0,
        );
        if let Some(queued) = self.inner.queued.lock().take() {
            tokio::spawn(run_publisher(
                Arc::clone(&self.inner),
                queued,
                shutdown.clone(),
            ));
        }
        tokio::spawn(run_health_check(
            Arc::clone(&self.inner),
            Arc::clone(&sink),
            shutdown.clone(),
        ));
        tokio::spawn(run_subscriber(Arc::clone(&self.inner), sink, shutdown));
    }

    /// Queues an event for the publish script without waiting (sources). Events of one node
    /// reach Redis in the order they were queued. A refusal by the script is counted and, for
    /// a lost lease, fires the ticket's `lost` token.
    pub fn submit(
        &self,
        event: &MarketEvent,
        lease: Option<&LeaseTicket>,
    ) -> Result<(), ClusterPublishError> {
        let job = job(event, lease, None)?;
        self.inner.jobs.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ClusterPublishError::Backlog,
            mpsc::error::TrySendError::Closed(_) => {
                ClusterPublishError::Unavailable("the node is shutting down".into())
            }
        })
    }

    /// Publishes an event and waits for its place in the shared log: `(epoch, seq)`.
    pub async fn publish(
        &self,
        event: &MarketEvent,
        lease: Option<&LeaseTicket>,
    ) -> Result<(u64, u64), ClusterPublishError> {
        let (reply, answer) = oneshot::channel();
        let job = job(event, lease, Some(reply))?;
        self.inner.jobs.try_send(job).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ClusterPublishError::Backlog,
            mpsc::error::TrySendError::Closed(_) => {
                ClusterPublishError::Unavailable("the node is shutting down".into())
            }
        })?;
        answer.await.unwrap_or_else(|_| {
            Err(ClusterPublishError::Unavailable(
                "the node is shutting down".into(),
            ))
        })
    }

    /// Reads `feed`'s log from `from` on (and the latest values when asked), atomically.
    pub async fn read(
        &self,
        feed: Feed,
        from: u64,
        with_latest: bool,
    ) -> Result<FeedRead, ClusterError> {
        self.inner.read(feed, from, with_latest, None).await
    }

    /// A clone of the command connection, for leases.
    pub(super) fn commands(&self) -> ConnectionManager {
        self.inner.commands.clone()
    }

    pub(super) async fn timed<T>(
        &self,
        future: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        timed(self.inner.config.response_timeout(), future).await
    }
}

async fn timed<T>(
    limit: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout(limit)),
    }
}

fn job(
    event: &MarketEvent,
    lease: Option<&LeaseTicket>,
    reply: Option<oneshot::Sender<Result<(u64, u64), ClusterPublishError>>>,
) -> Result<Job, ClusterPublishError> {
    let json = serde_json::to_vec(event)
        .map_err(|error| ClusterPublishError::Encode(error.to_string()))?;
    Ok(Job {
        feed: Feed::of(event.kind()),
        json: Bytes::from(json),
        latest_field: wire::latest_field(event),
        time_key: wire::time_key(event.time()),
        lease: lease.cloned(),
        reply,
    })
}

fn new_epoch() -> u64 {
    chrono::Utc::now().timestamp_millis().max(1) as u64
}

impl Inner {
    async fn read(
        &self,
        feed: Feed,
        from: u64,
        with_latest: bool,
        applied: Option<(u64, u64)>,
    ) -> Result<FeedRead, ClusterError> {
        let mut command = redis::cmd("EVAL");
        command
            .arg(&self.read_script)
            .arg(4)
            .arg(wire::epoch_key())
            .arg(wire::meta_key(feed))
            .arg(wire::stream_key(feed))
            .arg(wire::latest_key())
            .arg(new_epoch())
            .arg(from)
            .arg(if with_latest { "1" } else { "0" })
            .arg(applied.map_or(0, |(_, last)| last))
            .arg(applied.map_or(String::new(), |(epoch, _)| epoch.to_string()));
        let mut connection = self.commands.clone();
        let value: Value = timed(
            self.config.response_timeout(),
            command.query_async(&mut connection),
        )
        .await?;
        parse_read(value)
    }

    fn set_synced(&self, synced: bool, reason: &str, sink: &dyn SequencedSink) {
        let mut health = self.health.lock();
        health.synced = synced;
        if !synced {
            health.reason = reason.to_owned();
        }
        self.report(&mut health, sink);
    }

    fn set_command_result(&self, failure: Option<String>, sink: &dyn SequencedSink) {
        let mut health = self.health.lock();
        if let Some(reason) = &failure {
            health.reason = reason.clone();
        }
        health.command_failure = failure;
        self.report(&mut health, sink);
    }

    /// Tells the sink (and the gauge) when the combined state changed.
    fn report(&self, health: &mut Health, sink: &dyn SequencedSink) {
        let up = health.synced && health.command_failure.is_none();
        if health.reported == Some(up) {
            return;
        }
        // Before the first synchronisation there is nothing to take back from clients.
        if health.reported.is_none() && !up {
            return;
        }
        health.reported = Some(up);
        self.metrics.set_gauge(
            "tickgate_cluster_up",
            "1 when this node is connected to Redis and its feeds are caught up.",
            "",
            if up { 1.0 } else { 0.0 },
        );
        if up {
            tracing::info!(node = %self.config.node_id, "cluster ok");
        } else {
            tracing::warn!(node = %self.config.node_id, reason = %health.reason, "cluster down");
        }
        sink.cluster_health(up, &health.reason);
    }
}

/// Parses `{epoch, top, entries, latest}` from the read script.
fn parse_read(value: Value) -> Result<FeedRead, ClusterError> {
    let bad = |what: &str| ClusterError::Reply(format!("read script: {what}"));
    let Value::Array(mut parts) = value else {
        return Err(bad("not an array"));
    };
    if parts.len() != 4 {
        return Err(bad("wrong number of parts"));
    }
    let latest_part = parts.pop().unwrap_or(Value::Nil);
    let entries_part = parts.pop().unwrap_or(Value::Nil);
    let top: u64 = redis::from_redis_value(parts.pop().unwrap_or(Value::Nil))
        .map_err(|e| ClusterError::Reply(format!("read script: {e}")))?;
    let epoch: u64 = redis::from_redis_value(parts.pop().unwrap_or(Value::Nil))
        .map_err(|e| ClusterError::Reply(format!("read script: {e}")))?;
    let Value::Array(raw_entries) = entries_part else {
        return Err(bad("entries are not an array"));
    };
    let mut entries = Vec::with_capacity(raw_entries.len());
    for entry in raw_entries {
        let Value::Array(mut pair) = entry else {
            return Err(bad("an entry is not an array"));
        };
        let fields = pair.pop();
        let id = pair.pop();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (id, fields) else {
            return Err(bad("an entry has no id or fields"));
        };
        let seq = wire::seq_of_stream_id(&id).ok_or_else(|| bad("an entry id is not <seq>-0"))?;
        let json = fields
            .into_iter()
            .nth(1)
            .and_then(|value| match value {
                Value::BulkString(bytes) => Some(Bytes::from(bytes)),
                _ => None,
            })
            .ok_or_else(|| bad("an entry has no data"))?;
        entries.push((seq, json));
    }
    let Value::Array(raw_latest) = latest_part else {
        return Err(bad("latest values are not an array"));
    };
    let latest = raw_latest
        .into_iter()
        .skip(1)
        .step_by(2)
        .filter_map(|value| match value {
            Value::BulkString(bytes) => wire::decode_latest(&bytes),
            _ => None,
        })
        .collect();
    Ok(FeedRead {
        read: StreamRead {
            epoch,
            top,
            entries,
        },
        latest,
    })
}

/// Sends queued events to Redis in order, in pipelined batches, and answers each.
async fn run_publisher(
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

/// Pings Redis on the command connection: the round-trip gauge, and "down" when it fails.
async fn run_health_check(
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
async fn run_subscriber(
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
                }
            }
            _ = ping.tick() => {
                // A subscription whose connection silently died would never end by itself.
                timed(limit, control.ping::<Value>()).await?;
            }
        }
    }
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
