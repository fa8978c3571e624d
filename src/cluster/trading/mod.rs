//! Cluster trading: one exchange for every node. The node holding the `exchange` lease runs
//! the simulated exchange, rebuilt from the shared store when it takes the lease, and every
//! batch it stores carries the lease's fencing token; every node (that one included) reaches
//! it through [`RemoteExchange`], its `TradingApi`.
//!
//! - `stream`: the command stream and its consumer group in Redis.
//! - `term`: one lease term of the exchange: claim the fence, rebuild, take over pending
//!   commands, run commands until the lease is lost.
//! - `relay`: the exchange's announcements, replies and heartbeat, published in order, and
//!   the commands' acknowledgements after their replies.
//! - `remote`: [`RemoteExchange`], requests as commands and the node's mirror of the private
//!   channels and books.
//! - `local`: the exchange's own node hands its sessions' commands to the exchange
//!   in-process (no stream, no reply channel), with the same exactly-once rules.
//! - `listen`: the node's subscription: delivery, repair from the store, trading status.
//! - `trace`: opt-in stage timing of commands (`TICKGATE_ORDER_TRACE`).
//!
//! Invariants:
//! - *One writer.* Only the lease holder's batches reach the store: the fence is claimed in
//!   the store before the rebuild reads it, so a former holder that resumes (SIGSTOP) is
//!   refused, stops at once and publishes nothing.
//! - *Exactly once.* A state change's reply is stored with its effects under the command's
//!   id; a command delivered again is answered from there (`trading::command`). A requester
//!   that hears nothing by the deadline answers 50310002, and the exchange does not start a
//!   command that close to its deadline.
//! - *Nothing missed, nothing twice.* Trade updates reach a node's sessions in `seq` order per
//!   user; a gap is filled from the store before anything newer.

mod listen;
mod local;
mod relay;
mod remote;
mod stream;
mod term;
mod trace;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use listen::TradingStatus;
pub use remote::RemoteExchange;
pub use term::EXCHANGE_LEASE;

use super::lease::run_leased;
use super::node::ClusterNode;
use crate::hub::Hub;
use crate::store::TradingStore;
use crate::trading::api::BookUpdate;
use crate::trading::config::TradingSettings;
use crate::trading::engine::Engine;
use crate::trading::exchange::{BookSlot, engine_settings};

/// How long a requesting node waits for the exchange: two leases' lives and two seconds, so a
/// command sent as the exchange dies is still run by its successor (the lease expires, the
/// next node takes it within one renewal, rebuilds and reads the stream) in time.
pub fn command_timeout(lease_ttl: Duration) -> Duration {
    lease_ttl * 2 + Duration::from_secs(2)
}

/// How long before a command's deadline the exchange no longer starts it: a quarter of the
/// timeout, the margin for its store write and for the nodes' clocks to differ.
pub fn command_guard(timeout: Duration) -> Duration {
    timeout / 4
}

/// Starts cluster trading on this node: the listener of the exchange's messages, and the
/// competition for the exchange's lease (this node runs the exchange while it holds it).
/// Returns the node's `TradingApi`. Everything ends when `shutdown` fires.
pub fn start(
    node: &ClusterNode,
    trading: &TradingSettings,
    prices: &BTreeMap<String, f64>,
    hub: Arc<Hub>,
    store: Arc<dyn TradingStore>,
    status: TradingStatus,
    shutdown: CancellationToken,
) -> RemoteExchange {
    let timeout = command_timeout(node.config().lease_ttl);
    let local = Arc::new(local::LocalSlot::default());
    // The books start as the exchange's would, until its first delta arrives.
    let engine = Engine::new(engine_settings(trading, prices), hub.universe().clone());
    let now = chrono::Utc::now();
    let books = engine
        .universe()
        .names()
        .iter()
        .map(|symbol| {
            let book = engine.book(symbol).cloned().unwrap_or_default();
            let mirror = remote::BookMirror::new(BookSlot {
                snapshot: BookUpdate {
                    symbol: symbol.clone(),
                    snapshot: true,
                    bids: book.bids,
                    asks: book.asks,
                    t: now,
                },
                updates: broadcast::channel(trading.book_channel_capacity.max(1)).0,
            });
            (symbol.clone(), Mutex::new(mirror))
        })
        .collect();
    let shared = Arc::new(remote::Shared {
        node: node.clone(),
        store: Arc::clone(&store),
        pending: Mutex::new(Default::default()),
        users: Mutex::new(Default::default()),
        books,
        user_channel_capacity: trading.user_channel_capacity.max(1),
        timeout,
        started_ms: chrono::Utc::now().timestamp_millis(),
        counter: AtomicU64::new(0),
        local: Arc::clone(&local),
        runtime: tokio::runtime::Handle::current(),
    });
    tokio::spawn(listen::run_listener(
        Arc::clone(&shared),
        status,
        shutdown.clone(),
    ));
    let context = Arc::new(term::ExchangeContext {
        node: node.clone(),
        trading: trading.clone(),
        prices: prices.clone(),
        hub,
        store,
        guard: command_guard(timeout),
        local,
    });
    tokio::spawn(run_leased(
        node.clone(),
        EXCHANGE_LEASE.to_owned(),
        shutdown,
        move |ticket| term::run_term(Arc::clone(&context), ticket),
    ));
    RemoteExchange { shared }
}
