//! Multi-node operation on Redis: one shared log per feed, exactly one active instance of each
//! source, and every node applying every event in order to its local hub.
//!
//! - [`settings`]: the `[cluster]` section.
//! - [`scripts`]: the Lua scripts that make publishing, reading and leasing atomic in Redis.
//! - [`wire`]: key names and the encoding of events in the stream and on pub/sub.
//! - [`merge`]: the pure state machine that merges live messages with stream reads.
//! - [`node`]: the node's connection to Redis and its API (publish, read, health); its tasks
//!   are the ordered publisher (`publisher`) and the subscriber with repair (`subscriber`).
//! - [`lease`]: leases with fencing tokens, renewed in the background, released on shutdown.
//! - [`local`]: the hub side (applying the shared log) and the sink leased sources publish to.
//! - [`trading`]: cluster trading: the exchange under a lease, commands over a Redis stream,
//!   private updates to every node.
//!
//! This module knows nothing of HTTP or of the hub's internals: a node hands sequenced events
//! to a [`SequencedSink`], and the hub side implements it.

pub mod lease;
pub mod local;
pub mod merge;
pub mod node;
mod publisher;
pub mod scripts;
pub mod settings;
mod subscriber;
pub mod trading;
pub mod wire;

pub use lease::{LeaseTicket, hold_lease, run_leased};
pub use local::{HubSink, LeasedSink};
pub use node::{ClusterConfig, ClusterError, ClusterNode, ClusterPublishError, FeedRead};

use crate::hub::Feed;

/// Where a node's subscriber delivers what it merged. Called from one task, in order.
pub trait SequencedSink: Send + Sync + 'static {
    /// Start `feed`'s local log afresh under `epoch`; the next event applied has `next_seq`.
    /// `initial` is the node's first synchronisation; otherwise clients must be told (their
    /// cursors no longer continue).
    fn reset(&self, feed: Feed, epoch: u64, next_seq: u64, initial: bool);
    /// Latest values older than the retained stream (market feed, first synchronisation
    /// only), each the JSON of one event with the sequence it was published at.
    fn seed_latest(&self, epoch: u64, latest: Vec<(u64, bytes::Bytes)>);
    /// Appends one event (its JSON) at `seq`, already validated and sequenced in Redis.
    fn apply(&self, feed: Feed, epoch: u64, seq: u64, json: bytes::Bytes);
    /// Redis became unreachable (`up == false`, with the reason) or reachable again.
    fn cluster_health(&self, up: bool, reason: &str);
}
