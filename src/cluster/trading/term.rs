//! One lease term of the exchange on this node: claim the fence in the store, rebuild the
//! exchange from the store, move its books to the market's latest quotes, take over the
//! commands a dead predecessor left pending, then read and run commands until the lease is
//! lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use redis::Value;

use super::super::lease::LeaseTicket;
use super::super::node::{ClusterError, ClusterNode};
use super::super::wire;
use super::local::{LocalExchange, LocalSlot};
use super::relay::Relay;
use super::stream::{self, Entry};
use super::trace::{self, ExchangeStamps};
use crate::hub::Hub;
use crate::market::MarketEvent;
use crate::store::{Fence, StoreError, TradingBatch, TradingStore};
use crate::trading::command::{self, Disposition, TradingCommand, TradingReply};
use crate::trading::config::TradingSettings;
use crate::trading::engine::Engine;
use crate::trading::exchange::engine_settings;
use crate::trading::persist::{self, LeaseFence, UpdateLogSettings};
use crate::trading::{ExchangeHandle, MarketInput};

/// The name of the exchange's lease, and of its fence in the store.
pub const EXCHANGE_LEASE: &str = "exchange";

/// Commands read from the stream per round at most (run together, stored in one batch).
const READ_COUNT: usize = 128;

/// What every term of the exchange on this node is built from.
pub(super) struct ExchangeContext {
    pub(super) node: ClusterNode,
    pub(super) trading: TradingSettings,
    pub(super) prices: BTreeMap<String, f64>,
    pub(super) hub: Arc<Hub>,
    pub(super) store: Arc<dyn TradingStore>,
    /// How long before a command's deadline the exchange stops starting it.
    pub(super) guard: Duration,
    /// Where this node's sessions find the exchange while a term runs it.
    pub(super) local: Arc<LocalSlot>,
}

/// Runs the exchange for as long as `ticket` holds.
pub(super) async fn run_term(context: Arc<ExchangeContext>, ticket: LeaseTicket) {
    let token = ticket.token();
    match start_exchange(&context, &ticket).await {
        Ok((exchange, relay)) => {
            tracing::info!(
                token,
                node = context.node.node_id(),
                "this node runs the exchange"
            );
            context.node.metrics().add_counter(
                "tickgate_cluster_exchange_takeovers_total",
                "Times this node took the exchange's lease and rebuilt the exchange.",
                "",
                1.0,
            );
            // From now on this node's own sessions reach the exchange in-process.
            context.local.install(LocalExchange {
                handle: exchange.clone(),
                ticket: ticket.clone(),
            });
            // A failed Redis call (a timeout, a dropped connection) does not end the term:
            // the lease decides that. Reading starts again with a take-over, so commands read
            // but not acknowledged before the failure are answered from their stored replies.
            let pause = context.node.config().renew_interval();
            while !ticket.is_lost() {
                match consume(&context, &exchange, &relay, &ticket).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "the exchange's command stream failed; reading again");
                        context.node.metrics().add_counter(
                            "tickgate_cluster_exchange_read_failures_total",
                            "Times the exchange's reading of the command stream failed and paused for a renewal interval.",
                            "",
                            1.0,
                        );
                        tokio::select! {
                            _ = ticket.lost().cancelled() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, token, "could not start the exchange; lease given up");
        }
    }
    ticket.mark_lost();
    context.local.remove(token);
}

async fn start_exchange(
    context: &ExchangeContext,
    ticket: &LeaseTicket,
) -> Result<(ExchangeHandle, Arc<Relay>), StoreError> {
    let fence = Fence {
        name: EXCHANGE_LEASE.into(),
        token: ticket.token(),
    };
    // The fence is claimed before the state is read: from this commit on the store refuses
    // every batch of a former exchange, so what the rebuild reads is final.
    context
        .store
        .commit(TradingBatch {
            fence: Some(fence.clone()),
            ..TradingBatch::default()
        })
        .await?;
    let trading = &context.trading;
    let mut engine = Engine::new(
        engine_settings(trading, &context.prices),
        context.hub.universe().clone(),
    );
    let update_log = UpdateLogSettings {
        retention: trading.updates_retention,
        prune_interval: Duration::from_secs(3600).min(trading.updates_retention),
        max_resume_updates: trading.max_resume_updates,
    };
    let persistence = persist::rebuild_async(
        &mut engine,
        Arc::clone(&context.store),
        trading.closed_orders_kept,
    )
    .await?
    .with_update_log(update_log)
    .with_lease(LeaseFence {
        fence,
        stop: ticket.lost().clone(),
    });
    let relay = Arc::new(Relay::start(context.node.clone(), ticket.clone()));
    // The exchange follows the node's hub from here on (the queue is registered now), so a
    // quote that arrives after the read below reaches the engine after the one read.
    let (exchange, tasks) = ExchangeHandle::new(
        engine,
        Some(Arc::clone(&context.hub)),
        trading.command_queue,
        trading.book_channel_capacity,
        trading.user_channel_capacity,
        ticket.lost().clone(),
    );
    // The rebuilt books stand at the opening prices; the actor's first step moves them to the
    // market's latest quotes and announces every book as a snapshot, before anything else:
    // the nodes' copies followed the former exchange's deltas (or none).
    let quotes = latest_quotes(&context.node, context.hub.universe().names()).await;
    tasks
        .with_persistence(Arc::new(persistence))
        .with_outlet(relay.clone())
        .with_term_opening(quotes)
        .spawn();
    Ok((exchange, relay))
}

/// The latest quote of each of `symbols` that the feeds keep in Redis (the `q:<symbol>`
/// fields of the latest-values hash, which every published quote updates), in one command
/// bounded by the response timeout. Nothing (the books stay at the opening prices until each
/// symbol's next quote, with a warning) when Redis does not answer in time or holds none.
async fn latest_quotes(node: &ClusterNode, symbols: &[String]) -> Vec<MarketInput> {
    if symbols.is_empty() {
        return Vec::new();
    }
    let mut command = redis::cmd("HMGET");
    command.arg(wire::latest_key());
    for symbol in symbols {
        command.arg(wire::latest_quote_field(symbol));
    }
    let mut connection = node.commands();
    let values: Vec<Option<Vec<u8>>> = match node.timed(command.query_async(&mut connection)).await
    {
        Ok(values) => values,
        Err(error) => {
            tracing::warn!(%error, "could not read the latest quotes; the books start from the opening prices");
            return Vec::new();
        }
    };
    let quotes: Vec<MarketInput> = values
        .iter()
        .filter_map(|value| {
            let (_, json) = wire::decode_latest(value.as_deref()?)?;
            let event: MarketEvent = serde_json::from_slice(&json).ok()?;
            MarketInput::from_event(&event)
                .filter(|input| matches!(input, MarketInput::Quote { .. }))
        })
        .collect();
    if quotes.is_empty() {
        tracing::warn!("no latest quote in Redis; the books start from the opening prices");
    } else if quotes.len() < symbols.len() {
        tracing::info!(
            quoted = quotes.len(),
            symbols = symbols.len(),
            "some symbols have no latest quote; their books start from the opening prices"
        );
    }
    quotes
}

/// Takes over the pending commands of every consumer, then reads new ones, until the lease
/// is lost. Blocking reads get a connection of their own: on the shared one they would hold
/// up lease renewals and publishing.
///
/// That connection has no response timeout of the client library's own (500 ms by default,
/// which a read blocking as long as there is nothing to read reached whenever the stream was
/// idle: the read failed, and the exchange stopped reading for a renewal interval before it
/// reconnected, so the first commands after a quiet half second waited up to two seconds).
/// Every call on it is bounded by `timed` instead, the blocking read by its block time plus
/// the response timeout.
async fn consume(
    context: &ExchangeContext,
    exchange: &ExchangeHandle,
    relay: &Relay,
    ticket: &LeaseTicket,
) -> Result<(), ClusterError> {
    let node = &context.node;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(node.config().response_timeout()))
        .set_response_timeout(None);
    let mut connection = node
        .timed(
            node.client()
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
    let created: Result<(), ClusterError> = node
        .timed(stream::create_group().query_async(&mut connection))
        .await;
    if let Err(error) = created
        && !error.to_string().contains("BUSYGROUP")
    {
        return Err(error);
    }
    take_over(context, exchange, relay, ticket, &mut connection, 0).await?;
    let mut running = FuturesOrdered::new();
    let result = read_loop(
        context,
        exchange,
        relay,
        ticket,
        &mut connection,
        &mut running,
    )
    .await;
    // Whatever was handed to the actor finishes and is answered before this returns: a
    // command still running must not be taken over (and run again) by the next read.
    while running.next().await.is_some() {}
    result
}

/// Reads new commands and runs them, reading again while the previous reads' commands are
/// still with the actor: what arrives during a store commit is read and queued behind it, so
/// the actor stores it in its next group commit without waiting for a Redis round trip. Each
/// read's commands are acknowledged through the relay once they ran and were answered.
async fn read_loop<'a>(
    context: &'a ExchangeContext,
    exchange: &'a ExchangeHandle,
    relay: &'a Relay,
    ticket: &'a LeaseTicket,
    connection: &mut redis::aio::MultiplexedConnection,
    running: &mut FuturesOrdered<BoxFuture<'a, ()>>,
) -> Result<(), ClusterError> {
    let node = &context.node;
    let limit = node.config().response_timeout();
    let consumer = node.node_id().to_owned();
    // Commands another consumer read but never acknowledged (a former exchange that woke up
    // after this one's take-over and was then fenced) are taken over again now and then.
    let reclaim_every = node.config().lease_ttl;
    let mut last_reclaim = tokio::time::Instant::now();
    let block = (limit / 2).max(Duration::from_millis(20));
    loop {
        if last_reclaim.elapsed() >= reclaim_every {
            // Only once nothing of this consumer is running, so nothing running is claimed.
            while running.next().await.is_some() {}
            last_reclaim = tokio::time::Instant::now();
            let min_idle = u64::try_from(reclaim_every.as_millis()).unwrap_or(u64::MAX);
            take_over(context, exchange, relay, ticket, connection, min_idle).await?;
        }
        let command = stream::read_new(&consumer, READ_COUNT, block.as_millis() as u64);
        let read = super::super::node::timed(
            block + limit,
            command.query_async::<Value>(&mut *connection),
        );
        tokio::pin!(read);
        let value = loop {
            tokio::select! {
                // In this order: a read's commands reach the actor (the first poll of their
                // future) before the next read can return, so they run in stream order.
                biased;
                _ = ticket.lost().cancelled() => return Ok(()),
                Some(()) = running.next(), if !running.is_empty() => {}
                value = &mut read => break value?,
            }
        };
        let entries = stream::read_reply(&value)?;
        if entries.is_empty() {
            continue;
        }
        let read_us = trace::now_us();
        let batch = entries.len();
        let (ids, work) = sort_entries(context, relay, entries, false).await;
        running.push_back(Box::pin(async move {
            execute(exchange, relay, work, read_us, batch).await;
            acknowledge(relay, ticket, ids);
        }));
    }
}

/// Has the relay acknowledge `ids` after the replies handed to it before (acknowledged
/// directly, the `XACK` could reach Redis before the relay published a reply, and a kill in
/// between lost that reply for good: the command no longer pending, nobody answers it, its
/// requester waits its whole timeout and finds the reply in the store). Nothing when the
/// lease is lost: they stay pending for the next exchange, which answers the ones that ran
/// from the store.
fn acknowledge(relay: &Relay, ticket: &LeaseTicket, ids: Vec<String>) {
    if !ticket.is_lost() {
        relay.acknowledge(ids);
    }
}

/// Claims every command pending (idle for `min_idle_ms` at least) for any consumer and runs
/// it as a re-delivery: its stored reply, if any, answers it.
async fn take_over(
    context: &ExchangeContext,
    exchange: &ExchangeHandle,
    relay: &Relay,
    ticket: &LeaseTicket,
    connection: &mut redis::aio::MultiplexedConnection,
    min_idle_ms: u64,
) -> Result<(), ClusterError> {
    let consumer = context.node.node_id().to_owned();
    let mut cursor = "0-0".to_owned();
    loop {
        if ticket.is_lost() {
            return Ok(());
        }
        let value: Value = context
            .node
            .timed(
                stream::claim(&consumer, min_idle_ms, &cursor, READ_COUNT).query_async(connection),
            )
            .await?;
        let (next, entries) = stream::claim_reply(&value)?;
        if !entries.is_empty() {
            tracing::info!(
                commands = entries.len(),
                "took over commands another consumer left pending"
            );
        }
        run_entries(context, exchange, relay, ticket, entries, true).await?;
        if next == "0-0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// Runs one read's commands together (their steps share one store batch), sends each reply,
/// then has the relay acknowledge them all after those replies, unless the lease was lost
/// meanwhile: then they stay pending for the next exchange, which answers the ones that ran
/// from the store.
async fn run_entries(
    context: &ExchangeContext,
    exchange: &ExchangeHandle,
    relay: &Relay,
    ticket: &LeaseTicket,
    entries: Vec<Entry>,
    redelivered: bool,
) -> Result<(), ClusterError> {
    if entries.is_empty() {
        return Ok(());
    }
    let read_us = trace::now_us();
    let batch = entries.len();
    let (ids, work) = sort_entries(context, relay, entries, redelivered).await;
    execute(exchange, relay, work, read_us, batch).await;
    acknowledge(relay, ticket, ids);
    Ok(())
}

/// Sorts one read's entries: an unreadable one is dropped, one with a stored reply or too
/// close to its deadline is answered at once. Returns the ids to acknowledge once the rest,
/// the commands to execute, have run.
async fn sort_entries(
    context: &ExchangeContext,
    relay: &Relay,
    entries: Vec<Entry>,
    redelivered: bool,
) -> (Vec<String>, Vec<TradingCommand>) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let guard_ms = i64::try_from(context.guard.as_millis()).unwrap_or(i64::MAX);
    let mut ids = Vec::with_capacity(entries.len());
    let mut work = Vec::new();
    for entry in entries {
        ids.push(entry.id.clone());
        let command = match entry.command {
            Ok(command) => command,
            Err(reason) => {
                tracing::warn!(id = %entry.id, %reason, "unreadable command dropped");
                continue;
            }
        };
        // Only a command delivered before can have run: look its reply up then.
        let stored = if redelivered && command.request.is_change() {
            match context.store.command_reply(&command.id).await {
                Ok(stored) => stored,
                Err(error) => {
                    // Not known whether it ran: leave it pending for a later term.
                    tracing::warn!(%error, "could not read a command's stored reply");
                    ids.pop();
                    continue;
                }
            }
        } else {
            None
        };
        match command::disposition(&command, stored.as_deref(), now_ms, guard_ms) {
            Disposition::Execute => work.push(command),
            Disposition::Answer(reply) => relay.reply(&command, &reply),
            Disposition::Expired => {
                tracing::debug!(id = %command.id, "command expired before it could run");
                relay.reply(
                    &command,
                    &TradingReply::error(&command::exchange_unavailable()),
                );
            }
        }
    }
    (ids, work)
}

/// Executes `work` (their steps share the actor's store batches) and sends each reply. The
/// commands reach the actor in order, on this future's first poll.
async fn execute(
    exchange: &ExchangeHandle,
    relay: &Relay,
    work: Vec<TradingCommand>,
    read_us: i64,
    batch: usize,
) {
    let traced = trace::enabled();
    futures::future::join_all(work.into_iter().map(|command| async move {
        let start = traced.then(trace::now_us);
        let reply = command::execute(exchange, command.clone()).await;
        let stamps = start.map(|start| ExchangeStamps {
            read: read_us,
            start,
            done: trace::now_us(),
            batch,
        });
        relay.reply_traced(&command, &reply, stamps);
    }))
    .await;
}
