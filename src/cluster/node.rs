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
use parking_lot::Mutex;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::lease::LeaseTicket;
use super::merge::StreamRead;
use super::{SequencedSink, scripts, wire};
use crate::cluster::settings::ClusterSettings;
use crate::hub::Feed;
use crate::market::MarketEvent;
use crate::metrics::Metrics;

/// What a node needs to know to join the cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// This node's name (never empty: derived when the settings leave it empty).
    pub node_id: String,
    pub lease_ttl: Duration,
    /// How long a node hears nothing from the exchange before telling its trading sessions
    /// `trading_unavailable` (`ClusterSettings::exchange_silence`).
    pub exchange_silence: Duration,
    /// Length of each feed's stream in Redis: the shared replay window.
    pub replay_window: usize,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("exchange_silence", &self.exchange_silence)
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
            exchange_silence: settings.exchange_silence(),
            replay_window,
        }
    }

    /// How often leases are renewed and free leases are tried: a third of their life, so one
    /// lost renewal still leaves time for another.
    pub fn renew_interval(&self) -> Duration {
        crate::cluster::settings::renew_interval(self.lease_ttl)
    }

    /// How often the exchange publishes its heartbeat (a fraction of the lease, at most
    /// 250 ms), so a node notices a silent exchange after a few missed ones.
    pub fn exchange_heartbeat(&self) -> Duration {
        crate::cluster::settings::exchange_heartbeat(self.lease_ttl)
    }

    /// How long one Redis round trip may take before the node counts Redis as unreachable.
    pub(super) fn response_timeout(&self) -> Duration {
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
pub(super) struct Job {
    pub(super) feed: Feed,
    pub(super) json: Bytes,
    pub(super) latest_field: Option<String>,
    pub(super) time_key: String,
    pub(super) lease: Option<LeaseTicket>,
    pub(super) reply: Option<oneshot::Sender<Result<(u64, u64), ClusterPublishError>>>,
}

/// Events queued for Redis per node before `submit` reports a backlog.
const PUBLISH_QUEUE: usize = 8192;

/// Events sent to Redis in one pipelined round trip at most.
pub(super) const MAX_BATCH: usize = 256;

/// A node of the cluster. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: ClusterConfig,
    pub(super) client: redis::Client,
    pub(super) commands: ConnectionManager,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) queued: Mutex<Option<mpsc::Receiver<Job>>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) publish_script: String,
    /// Leases this node holds now, released together on shutdown.
    pub(super) held: Mutex<Vec<LeaseTicket>>,
    pub(super) read_script: String,
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
        // Small requests and replies on multiplexed connections: without `TCP_NODELAY` (the
        // client library's default is off) a write can wait behind Nagle's algorithm for the
        // peer's delayed acknowledgement.
        let info = redis::IntoConnectionInfo::into_connection_info(config.redis_url.as_str())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
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
                held: Mutex::new(Vec::new()),
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
            tokio::spawn(super::publisher::run_publisher(
                Arc::clone(&self.inner),
                queued,
                shutdown.clone(),
            ));
        }
        tokio::spawn(super::subscriber::run_health_check(
            Arc::clone(&self.inner),
            Arc::clone(&sink),
            shutdown.clone(),
        ));
        tokio::spawn(super::subscriber::run_subscriber(
            Arc::clone(&self.inner),
            sink,
            shutdown,
        ));
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

    /// Gives up every lease this node holds (clean shutdown), waiting for Redis to confirm
    /// each (bounded by the response timeout).
    pub async fn release_leases(&self) {
        let held: Vec<LeaseTicket> = std::mem::take(&mut *self.inner.held.lock());
        for ticket in held {
            ticket.mark_lost();
            super::lease::release(self, &ticket).await;
        }
    }

    /// Records a lease this node now holds (see [`ClusterNode::release_leases`]).
    pub(super) fn hold(&self, ticket: &LeaseTicket) {
        self.inner.held.lock().push(ticket.clone());
    }

    /// Forgets a lease this node no longer holds.
    pub(super) fn forget(&self, ticket: &LeaseTicket) {
        self.inner
            .held
            .lock()
            .retain(|held| held.value() != ticket.value());
    }

    /// The latest trade, quote and bar per symbol in the shared log, with their sequences.
    pub async fn latest_values(&self) -> Result<Vec<(u64, Bytes)>, ClusterError> {
        // A start past any sequence: the stream part of the read is empty.
        let read = self.inner.read(Feed::Market, u64::MAX, true, None).await?;
        Ok(read.latest)
    }

    /// The Redis client, for connections of their own (subscriptions, blocking reads).
    pub(super) fn client(&self) -> &redis::Client {
        &self.inner.client
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

pub(super) async fn timed<T>(
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

pub(super) fn new_epoch() -> u64 {
    chrono::Utc::now().timestamp_millis().max(1) as u64
}

impl Inner {
    pub(super) async fn read(
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

    pub(super) fn set_synced(&self, synced: bool, reason: &str, sink: &dyn SequencedSink) {
        let mut health = self.health.lock();
        health.synced = synced;
        if !synced {
            health.reason = reason.to_owned();
        }
        self.report(&mut health, sink);
    }

    pub(super) fn set_command_result(&self, failure: Option<String>, sink: &dyn SequencedSink) {
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
