//! A node's subscription to the exchange: announcements and heartbeats on the events
//! channel, replies on the node's own channel, both on one connection (so a command's updates
//! come before its reply). Delivers to the node's mirror ([`super::remote`]), repairs trade
//! updates from the store by `seq`, and tells clients when trading becomes unavailable and
//! when it is back, and when the exchange halted trading on a store failure and resumed it.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::node::{ClusterError, timed};
use super::relay::{About, EventsMessage, LegacyReplyMessage, ReplyBatch};
use super::remote::{RemoteExchange, Shared};
use super::stream;
use super::trace;
use crate::trading::api::{OrderError, UserEvent};
use crate::trading::command::{TradingReply, TradingRequest};
use crate::trading::engine::Announcement;

/// Called with a trading status code (`trading_unavailable`, `trading_available`,
/// `trading_halted`, `trading_resumed`) and its message, for the node's sessions.
pub type TradingStatus = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// What the listener knows of the exchange.
struct Watch {
    /// The newest lease token heard from: messages of an older one are a former exchange's.
    token: u64,
    /// When the exchange was last heard (start-up counts: the wait for a first heartbeat
    /// starts there).
    last_heard: Instant,
    /// What clients were last told (`None`: nothing yet).
    available: Option<bool>,
    /// Whether clients were told the exchange halted trading (and not yet that it resumed).
    halted: bool,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            token: 0,
            last_heard: Instant::now(),
            available: None,
            halted: false,
        }
    }

    /// Tells the sessions that trading is unavailable, once per outage.
    fn unavailable(&mut self, status: &TradingStatus, message: &str) {
        if self.available != Some(false) {
            self.available = Some(false);
            status("trading_unavailable", message);
        }
    }
}

/// When a node says trading is unavailable: after `limit` without a message of the exchange
/// (which sends a heartbeat every `heartbeat`), counted only while the node itself was
/// listening.
#[derive(Debug, Clone, Copy)]
pub(super) struct SilenceRule {
    pub(super) limit: Duration,
    pub(super) heartbeat: Duration,
}

/// What a silence alarm means once everything already received has been read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The exchange was heard within the limit: nothing to say.
    Heard,
    /// The alarm went off at least a heartbeat late: this node was stalled itself (a busy
    /// machine, a paused process), so the silence is not the exchange's alone. It gets two
    /// more heartbeats' time, counted from now.
    Stalled { last_heard: Instant },
    /// The exchange has been silent for the limit: trading is unavailable.
    Silent,
}

impl SilenceRule {
    pub(super) fn verdict(&self, last_heard: Instant, due: Instant, now: Instant) -> Verdict {
        if now < last_heard + self.limit {
            Verdict::Heard
        } else if now.saturating_duration_since(due) >= self.heartbeat {
            Verdict::Stalled {
                last_heard: (now + self.heartbeat * 2)
                    .checked_sub(self.limit)
                    .unwrap_or(last_heard),
            }
        } else {
            Verdict::Silent
        }
    }
}

/// Keeps the subscription up until `shutdown`, reconnecting with backoff.
pub(super) async fn run_listener(
    shared: Arc<Shared>,
    status: TradingStatus,
    shutdown: CancellationToken,
) {
    let mut watch = Watch::new();
    let silence = shared.node.config().exchange_silence;
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match subscription(&shared, &status, &mut watch, first, &shutdown).await {
            Ok(()) => return,
            Err(error) => tracing::debug!(%error, "exchange subscription lost; reconnecting"),
        }
        // Without a subscription nothing of the exchange can be heard.
        if watch.last_heard.elapsed() >= silence {
            watch.unavailable(&status, &unavailable_message(&shared));
        }
        first = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The `trading_unavailable` message: what happens to the orders sent meanwhile.
fn unavailable_message(shared: &Shared) -> String {
    format!(
        "no exchange heard for {} ms (it may be failing over to another node); orders sent meanwhile wait and run once when it is back, or are answered 50310002 if none answers within {} s of their sending (retry with the same client_order_id)",
        shared.node.config().exchange_silence.as_millis(),
        shared.timeout.as_secs(),
    )
}

async fn subscription(
    shared: &Arc<Shared>,
    status: &TradingStatus,
    watch: &mut Watch,
    first: bool,
    shutdown: &CancellationToken,
) -> Result<(), ClusterError> {
    let config = shared.node.config();
    let limit = config.response_timeout();
    let pubsub = timed(limit, shared.node.client().get_async_pubsub()).await?;
    let (mut control, mut messages) = pubsub.split();
    let channels = vec![
        stream::events_channel(),
        stream::reply_channel(shared.node.node_id()),
    ];
    timed(limit, control.subscribe(&channels)).await?;
    // The node's copy of the books may be stale: it started from the opening books, or
    // deltas were published while it was not subscribed. The exchange announces every book
    // on the events channel (now subscribed, so in order with the deltas after it); without
    // an exchange the next one announces them when it takes over.
    tokio::spawn(request_books(Arc::clone(shared)));
    if !first {
        // Whatever was published while this node was not subscribed is in the store.
        let users: Vec<(String, u64)> = shared
            .users
            .lock()
            .iter()
            .filter_map(|(user, mirror)| Some((user.clone(), mirror.last_seq?)))
            .collect();
        for (user, last) in users {
            repair(shared, &user, last, u64::MAX).await;
        }
    }
    let rule = SilenceRule {
        limit: config.exchange_silence,
        heartbeat: config.exchange_heartbeat(),
    };
    // Goes off when the exchange may have been silent for the limit (it is moved on lazily:
    // at most once per limit while the exchange speaks).
    let alarm = tokio::time::sleep_until(watch.last_heard + rule.limit);
    tokio::pin!(alarm);
    let mut tick = tokio::time::interval(config.renew_interval().min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => on_message(shared, status, watch, message).await?,
            _ = &mut alarm, if watch.available != Some(false) => {
                let due = alarm.deadline();
                if Instant::now() < watch.last_heard + rule.limit {
                    alarm.as_mut().reset(watch.last_heard + rule.limit);
                    continue;
                }
                // What the exchange published before this PING reached Redis comes ahead of
                // its answer on this connection: read it all before judging the silence.
                let pinged = timed(limit, control.ping::<redis::Value>()).await;
                while let Some(message) = messages.next().now_or_never() {
                    on_message(shared, status, watch, message).await?;
                }
                pinged?;
                match rule.verdict(watch.last_heard, due, Instant::now()) {
                    Verdict::Heard => {}
                    Verdict::Stalled { last_heard } => {
                        tracing::debug!("exchange silence alarm late: this node was stalled; waiting two more heartbeats");
                        watch.last_heard = last_heard;
                    }
                    Verdict::Silent => watch.unavailable(status, &unavailable_message(shared)),
                }
                alarm.as_mut().reset(watch.last_heard + rule.limit);
            }
            _ = tick.tick() => {
                trace::flush();
                timed(limit, control.ping::<redis::Value>()).await?;
            }
        }
    }
}

/// One message of the subscription (`None`: it closed).
async fn on_message(
    shared: &Shared,
    status: &TradingStatus,
    watch: &mut Watch,
    message: Option<redis::Msg>,
) -> Result<(), ClusterError> {
    let Some(message) = message else {
        return Err(ClusterError::Reply(
            "the exchange subscription closed".into(),
        ));
    };
    let payload = message.get_payload_bytes();
    if message.get_channel_name() == stream::events_channel() {
        on_events(shared, status, watch, payload).await;
    } else {
        on_replies(shared, payload);
    }
    Ok(())
}

/// Asks the exchange to announce every book (`TradingRequest::AnnounceBooks`).
async fn request_books(shared: Arc<Shared>) {
    let remote = RemoteExchange { shared };
    let node = remote.shared.node.node_id().to_owned();
    let answer = remote.call(&node, TradingRequest::AnnounceBooks).await;
    if let Err(error) = answer.and_then(TradingReply::into_announced) {
        tracing::debug!(%error, "the exchange did not announce its books; the next exchange will");
    }
}

/// One message of the node's reply channel: a batch of replies, or one reply in the format
/// of the previous release (an exchange not yet upgraded). Each waiting requester gets its
/// reply; a reply nobody waits for any more is dropped.
pub(super) fn on_replies(shared: &Shared, payload: &[u8]) {
    let received_us = trace::now_us();
    match serde_json::from_slice::<ReplyBatch>(payload) {
        Ok(batch) => {
            for item in batch.replies {
                let reply = || {
                    serde_json::from_str::<TradingReply>(item.reply.get())
                        .unwrap_or_else(|error| TradingReply::error(&undecodable_reply(&error)))
                };
                answer(shared, &item.id, reply, item.trace, received_us);
            }
        }
        Err(batch_error) => match serde_json::from_slice::<LegacyReplyMessage>(payload) {
            Ok(message) => {
                let reply = || {
                    TradingReply::decode(&message.reply).unwrap_or_else(|e| TradingReply::error(&e))
                };
                answer(shared, &message.id, reply, message.trace, received_us);
            }
            Err(_) => tracing::warn!(error = %batch_error, "undecodable exchange reply ignored"),
        },
    }
}

fn undecodable_reply(error: &serde_json::Error) -> OrderError {
    OrderError::new(
        OrderError::INTERNAL,
        format!("the exchange's reply could not be read: {error}"),
    )
}

/// Hands the reply (decoded only if someone still waits) to the requester of command `id`.
fn answer(
    shared: &Shared,
    id: &str,
    reply: impl FnOnce() -> TradingReply,
    stamps: Option<trace::ExchangeStamps>,
    received_us: i64,
) {
    let Some(sender) = shared.pending.lock().remove(id) else {
        return;
    };
    let _ = sender.send((reply(), stamps.map(|stamps| (stamps, received_us))));
}

/// One message of the events channel: the headers are read first, and a body is decoded
/// only when this node needs it (see [`About`]).
async fn on_events(shared: &Shared, status: &TradingStatus, watch: &mut Watch, payload: &[u8]) {
    let message = match serde_json::from_slice::<EventsMessage>(payload) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(%error, "undecodable exchange message ignored");
            return;
        }
    };
    if message.token < watch.token {
        // A former exchange that has not learnt it lost the lease: never delivered.
        return;
    }
    let new_term = message.token > watch.token;
    watch.token = message.token;
    watch.last_heard = Instant::now();
    if watch.available != Some(true) {
        if watch.available.is_some() {
            status(
                "trading_available",
                "the exchange answers again; orders sent while it was unavailable are being answered",
            );
        }
        watch.available = Some(true);
    }
    if new_term && watch.halted {
        // The halted exchange lost its lease; the next one could claim it in the store, so
        // the store takes writes again and its predecessor will never say so.
        watch.halted = false;
        status(
            "trading_resumed",
            "trading resumed: another node runs the exchange and the store accepts writes",
        );
    }
    let mut bumped = Vec::new();
    for item in message.items {
        let body = item.body.get();
        match &item.about {
            // Nobody on this node watches the user: its updates and bumps concern no one here
            // (a mirror made later starts from the store, by `seq`).
            About::User(user) if !shared.users.lock().contains_key(user.as_ref()) => continue,
            // Every node keeps every book, but decodes a change only for its subscribers.
            About::Book(symbol) => {
                if let Some(mirror) = shared.books.get(symbol.as_ref()) {
                    mirror.lock().change(body);
                }
                continue;
            }
            About::User(_) | About::All => {}
        }
        let announcement = match serde_json::from_str::<Announcement>(body) {
            Ok(announcement) => announcement,
            Err(error) => {
                tracing::warn!(%error, "undecodable announcement ignored");
                continue;
            }
        };
        match announcement {
            Announcement::User { user, event } => deliver(shared, &user, event).await,
            Announcement::Portfolio { user } => bumped.push(user),
            Announcement::Book { snapshot, delta } => {
                // Sent under `About::Book`; decoded here only from a sender that did not say so.
                if let Some(mirror) = shared.books.get(&snapshot.symbol) {
                    let mut mirror = mirror.lock();
                    mirror.undecoded = None;
                    mirror.slot.apply(snapshot, delta);
                }
            }
            // The exchange halted trading on a store failure, or resumed it: told once per
            // change (a repeated message changes nothing).
            Announcement::Trading { halted, message } => {
                if halted != watch.halted {
                    watch.halted = halted;
                    let code = if halted {
                        "trading_halted"
                    } else {
                        "trading_resumed"
                    };
                    status(code, &message);
                }
            }
            // The exchange's whole book (a new term, or a node asked): the node's copy is
            // replaced and its subscribers get it as a fresh snapshot if it differs.
            Announcement::BookSnapshot { snapshot } => {
                if let Some(mirror) = shared.books.get(&snapshot.symbol) {
                    let mut mirror = mirror.lock();
                    // Compared with the newest change, not an older decoded one.
                    mirror.settle();
                    if mirror.slot.reset(snapshot) {
                        shared.node.metrics().add_counter(
                            "tickgate_cluster_book_resets_total",
                            "Order books a node replaced with the exchange's snapshot because its copy differed.",
                            "",
                            1.0,
                        );
                    }
                }
            }
        }
    }
    let users = shared.users.lock();
    for user in bumped {
        if let Some(mirror) = users.get(&user) {
            mirror.portfolio.send_modify(|count| *count += 1);
        }
    }
}

/// Delivers one trade update in `seq` order: an update already delivered is dropped, and one
/// after a gap first has the missing ones read from the store.
async fn deliver(shared: &Shared, user: &str, event: UserEvent) {
    let UserEvent::TradeUpdate(update) = &event;
    let seq = update.seq;
    let last = {
        let users = shared.users.lock();
        match users.get(user) {
            // Nobody on this node watches the user: nothing to deliver or keep in order.
            None => return,
            Some(mirror) => mirror.last_seq,
        }
    };
    match last {
        Some(last) if seq <= last => return,
        Some(last) if seq > last + 1 => repair(shared, user, last, seq - 1).await,
        _ => {}
    }
    shared.with_user(user, |mirror| {
        if mirror.last_seq.is_none_or(|last| seq > last) {
            mirror.last_seq = Some(seq);
            let _ = mirror.events.send(event);
        }
    });
}

/// Reads `user`'s updates after `after` (up to `up_to`) from the store and delivers them.
async fn repair(shared: &Shared, user: &str, after: u64, up_to: u64) {
    match shared.store.updates_between(user, after, up_to).await {
        Ok(updates) => {
            shared.node.metrics().add_counter(
                "tickgate_cluster_trade_update_repairs_total",
                "Trade updates a node read from the store because pub/sub lost them.",
                "",
                updates.len() as f64,
            );
            shared.with_user(user, |mirror| {
                for update in updates {
                    if mirror.last_seq.is_none_or(|last| update.seq > last) {
                        mirror.last_seq = Some(update.seq);
                        let _ = mirror.events.send(UserEvent::TradeUpdate(Box::new(update)));
                    }
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, user, "could not repair trade updates from the store");
        }
    }
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod tests;
