//! Leases: exactly one node runs each source (and, for the trading issue, the exchange).
//!
//! A lease is a Redis key `SET NX PX` with the value `<node>:<token>`, where the token comes
//! from one counter that only rises (a fencing token). The holder renews it every third of its
//! time to live and gives it up on a clean shutdown. Holding a lease is a belief that can be
//! wrong (a paused process wakes up after its lease expired), so every write made under it
//! carries the value and is checked where it lands: the publish script refuses an event whose
//! lease value is no longer the key's. Anything else written under a lease (a database row)
//! can compare the token the same way, keeping the highest token it has seen.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::node::{ClusterError, ClusterNode};
use super::{scripts, wire};

/// Proof of holding a source's lease, handed to whatever runs under it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaseTicket {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    source: String,
    /// `<node>:<token>`, what the lease key holds while this ticket is valid.
    value: String,
    token: u64,
    /// Fires when the lease is lost, given up, or the node shuts down.
    lost: CancellationToken,
}

impl LeaseTicket {
    pub fn source(&self) -> &str {
        &self.shared.source
    }

    /// The value every write under this lease carries for the fencing check.
    pub fn value(&self) -> &str {
        &self.shared.value
    }

    /// The fencing token: larger for every later holder of any lease.
    pub fn token(&self) -> u64 {
        self.shared.token
    }

    /// Fires when work under this lease must stop.
    pub fn lost(&self) -> &CancellationToken {
        &self.shared.lost
    }

    pub fn is_lost(&self) -> bool {
        self.shared.lost.is_cancelled()
    }

    /// Marks the lease as lost (a write was refused by the fencing check).
    pub fn mark_lost(&self) {
        self.shared.lost.cancel();
    }
}

/// Tries once to take `source`'s free lease.
/// The ticket's `lost` token is a child of `parent` (the node's shutdown).
pub async fn try_acquire(
    node: &ClusterNode,
    source: &str,
    parent: &CancellationToken,
) -> Result<Option<LeaseTicket>, ClusterError> {
    let ttl = node.config().lease_ttl;
    let floor = chrono::Utc::now().timestamp_millis().max(1);
    let mut connection = node.commands();
    let script = redis::cmd("EVAL")
        .arg(scripts::ACQUIRE)
        .arg(2)
        .arg(wire::lease_key(source))
        .arg(wire::fence_key())
        .arg(node.node_id())
        .arg(ttl.as_millis() as u64)
        .arg(floor)
        .to_owned();
    let value: Option<String> = node.timed(script.query_async(&mut connection)).await?;
    let Some(value) = value else {
        return Ok(None);
    };
    let token = value
        .rsplit_once(':')
        .and_then(|(_, token)| token.parse().ok())
        .ok_or_else(|| ClusterError::Reply(format!("lease value {value:?} has no token")))?;
    Ok(Some(LeaseTicket {
        shared: Arc::new(Shared {
            source: source.to_owned(),
            value,
            token,
            lost: parent.child_token(),
        }),
    }))
}

/// Waits until this node holds `source`'s lease, then keeps it renewed in the background
/// until it is lost or `shutdown` fires, when it is released. Returns `None` on shutdown.
///
/// A refused try is followed by the next one when the holder's lease would expire without
/// another renewal ([`next_try_in`]), and at least every renewal interval: so the lease of a
/// dead holder is taken a few milliseconds after it expires, not up to a renewal interval
/// later, while a live holder's lease costs its competitors two cheap commands per interval.
pub async fn hold_lease(
    node: &ClusterNode,
    source: &str,
    shutdown: &CancellationToken,
) -> Option<LeaseTicket> {
    let interval = node.config().renew_interval();
    set_held(node, source, false);
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        match try_acquire(node, source, shutdown).await {
            Ok(Some(ticket)) => {
                tracing::info!(
                    source,
                    token = ticket.token(),
                    node = node.node_id(),
                    "lease taken"
                );
                set_held(node, source, true);
                node.hold(&ticket);
                tokio::spawn(keep_renewed(node.clone(), ticket.clone(), shutdown.clone()));
                return Some(ticket);
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(source, %error, "lease not taken"),
        }
        let wait = next_try_in(node, source, interval).await;
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long after a refused try a lease has gone (expired or released) at the latest
/// being tried again, so a try lands just after the key expired.
const AFTER_EXPIRY: Duration = Duration::from_millis(15);

/// When to try `source`'s lease again after a refused try: once the holder's key would have
/// expired (its remaining time to live, `PTTL`, plus [`AFTER_EXPIRY`]), and within `interval`
/// at the latest (a renewing holder pushes the expiry back; an unanswered `PTTL` waits the
/// whole interval).
async fn next_try_in(node: &ClusterNode, source: &str, interval: Duration) -> Duration {
    let mut connection = node.commands();
    let remaining: Result<i64, ClusterError> = node
        .timed(
            redis::cmd("PTTL")
                .arg(wire::lease_key(source))
                .query_async(&mut connection),
        )
        .await;
    match remaining {
        // The key lives for `ms` more.
        Ok(ms) if ms >= 0 => {
            (Duration::from_millis(ms.unsigned_abs()) + AFTER_EXPIRY).min(interval)
        }
        // Gone since the try (-2): try again at once, nearly.
        Ok(-2) => AFTER_EXPIRY,
        // No expiry (-1, never set so by tickgate) or no answer.
        _ => interval,
    }
}

/// Runs `work` whenever this node holds `source`'s lease, until `shutdown`. `work` gets the
/// ticket and must return soon after `ticket.lost()` fires.
pub async fn run_leased<F, Fut>(
    node: ClusterNode,
    source: String,
    shutdown: CancellationToken,
    mut work: F,
) where
    F: FnMut(LeaseTicket) -> Fut,
    Fut: Future<Output = ()>,
{
    let pause = node.config().renew_interval();
    while let Some(ticket) = hold_lease(&node, &source, &shutdown).await {
        work(ticket.clone()).await;
        // The work may have ended on its own; the lease must not outlive it.
        ticket.mark_lost();
        // Before competing again: a source that ends at once must not spin on Redis, and a
        // node that just lost the lease leaves it to the others for a moment.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Renews every interval. The lease counts as lost locally once a whole time to live has
/// passed since the last renewal that Redis confirmed was sent (the key may be gone by
/// then), or at once when Redis says it is no longer ours.
async fn keep_renewed(node: ClusterNode, ticket: LeaseTicket, shutdown: CancellationToken) {
    let ttl = node.config().lease_ttl;
    let interval = node.config().renew_interval();
    let mut expires = Instant::now() + ttl;
    loop {
        let wait = interval.min(expires.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = shutdown.cancelled() => {
                release(&node, &ticket).await;
                break;
            }
            _ = ticket.lost().cancelled() => {
                // Given up by the work, or refused by the fencing check: release if still ours.
                release(&node, &ticket).await;
                break;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        if Instant::now() >= expires {
            tracing::warn!(source = ticket.source(), "lease expired without renewal");
            break;
        }
        let sent = Instant::now();
        match renew(&node, &ticket, ttl).await {
            Ok(true) => expires = sent + ttl,
            Ok(false) => {
                tracing::warn!(source = ticket.source(), "lease lost to another node");
                break;
            }
            Err(error) => tracing::debug!(source = ticket.source(), %error, "lease renewal failed"),
        }
    }
    ticket.mark_lost();
    node.forget(&ticket);
    set_held(&node, ticket.source(), false);
}

async fn renew(
    node: &ClusterNode,
    ticket: &LeaseTicket,
    ttl: Duration,
) -> Result<bool, ClusterError> {
    let mut connection = node.commands();
    let script = redis::cmd("EVAL")
        .arg(scripts::RENEW)
        .arg(1)
        .arg(wire::lease_key(ticket.source()))
        .arg(ticket.value())
        .arg(ttl.as_millis() as u64)
        .to_owned();
    let renewed: i64 = node.timed(script.query_async(&mut connection)).await?;
    Ok(renewed == 1)
}

/// Gives the lease up if it is still ours (best effort: it expires anyway).
pub async fn release(node: &ClusterNode, ticket: &LeaseTicket) {
    let mut connection = node.commands();
    let script = redis::cmd("EVAL")
        .arg(scripts::RELEASE)
        .arg(1)
        .arg(wire::lease_key(ticket.source()))
        .arg(ticket.value())
        .to_owned();
    let result: Result<i64, ClusterError> = node.timed(script.query_async(&mut connection)).await;
    if let Err(error) = result {
        tracing::debug!(source = ticket.source(), %error, "lease not released");
    }
}

fn set_held(node: &ClusterNode, source: &str, held: bool) {
    node.metrics().set_gauge(
        "tickgate_cluster_lease_held",
        "1 while this node holds the lease of a source (it runs that source).",
        &format!("source=\"{}\"", crate::metrics::escape_label(source)),
        if held { 1.0 } else { 0.0 },
    );
}
