//! [`RemoteExchange`]: the exchange as every node of a cluster sees it. Requests become
//! commands in the shared stream and wait for the exchange's reply; trade updates, portfolio
//! bumps and book deltas arrive from the exchange over pub/sub and are handed to this node's
//! sessions through the same channels a local exchange would use.
//!
//! Pub/sub is lossy, so the node repairs: a user's trade updates are numbered, and a gap (or a
//! re-subscription) is filled from the store by `seq` before anything newer is delivered; a
//! reply that never came is looked up in the store (for state changes) when the wait ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{broadcast, oneshot, watch};

use super::super::node::ClusterNode;
use super::local::{self, LocalSlot};
use super::stream;
use super::trace::{self, ExchangeStamps, RequesterStamps};
use crate::store::TradingStore;
use crate::trading::api::{
    BookUpdate, Order, OrderError, OrderQuery, OrderRef, OrderRequest, Portfolio, ReplaceRequest,
    Resume, TradingApi, UserEvent,
};
use crate::trading::command::{self, TradingCommand, TradingReply, TradingRequest};
use crate::trading::engine::Announcement;
use crate::trading::exchange::BookSlot;

pub(super) struct UserMirror {
    pub(super) events: broadcast::Sender<UserEvent>,
    pub(super) portfolio: watch::Sender<u64>,
    /// The newest `seq` delivered to this node's sessions (`None`: none yet).
    pub(super) last_seq: Option<u64>,
}

/// The node's copy of one book: the exchange's own slot type, kept from its deltas, and the
/// newest change not decoded yet.
pub(super) struct BookMirror {
    pub(super) slot: BookSlot,
    /// The body (an [`Announcement::Book`]'s JSON) of the newest change that came while
    /// nobody on this node subscribed to the book: its delta concerned no one, and its
    /// snapshot is decoded only when someone subscribes ([`BookMirror::settle`], under the
    /// same lock as the delivery of deltas, so no delta falls between a subscriber's
    /// snapshot and its receiver).
    pub(super) undecoded: Option<Box<str>>,
}

impl BookMirror {
    pub(super) fn new(slot: BookSlot) -> BookMirror {
        BookMirror {
            slot,
            undecoded: None,
        }
    }

    /// A change announced by the exchange (`body`: the announcement's JSON): decoded and
    /// applied when the book has subscribers on this node, kept undecoded otherwise.
    pub(super) fn change(&mut self, body: &str) {
        if self.slot.updates.receiver_count() == 0 {
            self.undecoded = Some(body.into());
            return;
        }
        self.undecoded = None;
        if let Some((snapshot, delta)) = decode_book_change(body) {
            self.slot.apply(snapshot, delta);
        }
    }

    /// Decodes the change kept undecoded, if any: the snapshot becomes the book; its delta
    /// is not sent (it came before any current subscriber).
    pub(super) fn settle(&mut self) {
        if let Some(body) = self.undecoded.take()
            && let Some((snapshot, _)) = decode_book_change(&body)
        {
            self.slot.snapshot = snapshot;
        }
    }
}

fn decode_book_change(body: &str) -> Option<(BookUpdate, BookUpdate)> {
    match serde_json::from_str::<Announcement>(body) {
        Ok(Announcement::Book { snapshot, delta }) => Some((snapshot, delta)),
        Ok(_) => {
            tracing::warn!("a book's change that is not one ignored");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "undecodable book change ignored");
            None
        }
    }
}

/// A reply as the listener hands it to the waiting requester.
pub(super) type Delivered = (TradingReply, Option<(ExchangeStamps, i64)>);

/// The node's state shared by the API and the listener.
pub(super) struct Shared {
    pub(super) node: ClusterNode,
    pub(super) store: Arc<dyn TradingStore>,
    /// Waiting requesters by command id; a reply comes with the exchange's stage timestamps
    /// and the time it was received when stage timing is on (`super::trace`).
    pub(super) pending: Mutex<HashMap<String, oneshot::Sender<Delivered>>>,
    pub(super) users: Mutex<HashMap<String, UserMirror>>,
    pub(super) books: HashMap<String, Mutex<BookMirror>>,
    pub(super) user_channel_capacity: usize,
    /// How long a requester waits for a reply.
    pub(super) timeout: Duration,
    /// Makes command ids unique across restarts of a node with the same name.
    pub(super) started_ms: i64,
    pub(super) counter: AtomicU64,
    /// The exchange, while this node runs it: commands go to it in-process ([`local`]).
    pub(super) local: Arc<LocalSlot>,
    /// The runtime of the node's Redis connections and listener: a command's `XADD` runs
    /// there, so its answer does not wake the requesting session's thread (only the reply
    /// does).
    pub(super) runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(super) fn with_user<T>(&self, user: &str, f: impl FnOnce(&mut UserMirror) -> T) -> T {
        let mut users = self.users.lock();
        let mirror = users.entry(user.to_owned()).or_insert_with(|| UserMirror {
            events: broadcast::channel(self.user_channel_capacity).0,
            portfolio: watch::channel(0).0,
            last_seq: None,
        });
        f(mirror)
    }
}

/// Every node's [`TradingApi`] in cluster trading. Cheap to clone.
#[derive(Clone)]
pub struct RemoteExchange {
    pub(super) shared: Arc<Shared>,
}

/// Removes a pending reply when its requester stops waiting (answered, timed out, dropped).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().remove(&self.id);
    }
}

impl RemoteExchange {
    /// Sends `request` for `user` and waits for the exchange's reply, or answers 50310002
    /// when none came within the timeout (for a state change, after looking for a stored
    /// reply: the reply message may have been lost while the command ran).
    pub(super) fn call(
        &self,
        user: &str,
        request: TradingRequest,
    ) -> BoxFuture<'static, Result<TradingReply, OrderError>> {
        let shared = Arc::clone(&self.shared);
        let user = user.to_owned();
        Box::pin(async move {
            let call_us = trace::now_us();
            let number = shared.counter.fetch_add(1, Ordering::Relaxed);
            let id = format!("{}-{}-{number}", shared.node.node_id(), shared.started_ms);
            let timeout_ms = i64::try_from(shared.timeout.as_millis()).unwrap_or(i64::MAX);
            let command = TradingCommand {
                id: id.clone(),
                user,
                node: shared.node.node_id().to_owned(),
                deadline_ms: chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_add(timeout_ms),
                request,
            };
            let is_change = command.request.is_change();
            let op = command.request.name();
            if let Some(exchange) = shared.local.current() {
                let reply = local::call(exchange, command, shared.timeout, &shared.store).await;
                if trace::enabled() {
                    trace::record_local(shared.node.node_id(), op, call_us, trace::now_us());
                }
                return reply;
            }
            let (sender, answer) = oneshot::channel();
            shared.pending.lock().insert(id.clone(), sender);
            let _guard = PendingGuard {
                shared: &shared,
                id: id.clone(),
            };
            // On the connections' runtime, not awaited here: the session's thread (an actix
            // worker) is woken once per remote command, by its reply, instead of twice. The
            // outcome of the `XADD` matters only if no reply comes (or to stage timing).
            let add = match stream::add(&command) {
                Ok(add) => add,
                Err(error) => {
                    tracing::warn!(%error, "command not sent");
                    return Err(command::exchange_unavailable());
                }
            };
            let node = shared.node.clone();
            let added = shared.runtime.spawn(async move {
                let mut connection = node.commands();
                let added = node.timed(add.query_async::<String>(&mut connection)).await;
                if let Err(error) = &added {
                    // It may have been added all the same (a timeout): the wait decides.
                    tracing::debug!(%error, "command not confirmed by redis");
                }
                (added.is_ok(), trace::now_us())
            });
            if let Ok(Ok((reply, stamps))) = tokio::time::timeout(shared.timeout, answer).await {
                if let Some((exchange, received)) = stamps {
                    let added_us = added.await.map_or(received, |(_, at)| at);
                    let requester = RequesterStamps {
                        call: call_us,
                        added: added_us,
                        received,
                        woken: trace::now_us(),
                    };
                    trace::record(shared.node.node_id(), op, requester, exchange);
                }
                return Ok(reply);
            }
            let added = added.await.is_ok_and(|(added, _)| added);
            if is_change
                && added
                && let Ok(Some(stored)) = shared.store.command_reply(&id).await
            {
                return TradingReply::decode(&stored);
            }
            Err(command::exchange_unavailable())
        })
    }
}

impl TradingApi for RemoteExchange {
    fn submit(
        &self,
        user: &str,
        request: OrderRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let reply = self.call(user, TradingRequest::Submit { request });
        Box::pin(async move { reply.await?.into_order() })
    }

    fn cancel(
        &self,
        user: &str,
        target: OrderRef,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let reply = self.call(user, TradingRequest::Cancel { target });
        Box::pin(async move { reply.await?.into_order() })
    }

    fn replace(
        &self,
        user: &str,
        target: OrderRef,
        patch: ReplaceRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let reply = self.call(user, TradingRequest::Replace { target, patch });
        Box::pin(async move { reply.await?.into_order() })
    }

    fn portfolio(&self, user: &str) -> BoxFuture<'static, Result<Portfolio, OrderError>> {
        let reply = self.call(user, TradingRequest::Portfolio);
        Box::pin(async move { reply.await?.into_portfolio() })
    }

    fn orders(
        &self,
        user: &str,
        query: OrderQuery,
    ) -> BoxFuture<'static, Result<Vec<Order>, OrderError>> {
        let reply = self.call(user, TradingRequest::Orders { query });
        Box::pin(async move { reply.await?.into_orders() })
    }

    fn user_events(&self, user: &str) -> broadcast::Receiver<UserEvent> {
        self.shared
            .with_user(user, |mirror| mirror.events.subscribe())
    }

    fn updates_since(
        &self,
        user: &str,
        since: u64,
    ) -> BoxFuture<'static, Result<Resume, OrderError>> {
        let store = Arc::clone(&self.shared.store);
        let shared = Arc::clone(&self.shared);
        let reply = self.call(user, TradingRequest::UpdatesSince { since });
        let user = user.to_owned();
        Box::pin(async move {
            match reply.await {
                Ok(reply) => {
                    let resume = reply.into_resume()?;
                    // The mirror now knows where the user stands, so a live update lost after
                    // this point shows as a gap and is repaired from the store.
                    let seq = match &resume {
                        Resume::Replay { seq, .. } => *seq,
                        Resume::Reset(snapshot) => snapshot.seq,
                    };
                    shared.with_user(&user, |mirror| {
                        if mirror.last_seq.is_none() {
                            mirror.last_seq = Some(seq);
                        }
                    });
                    Ok(resume)
                }
                // Without an exchange the stored updates still answer a resume (they are the
                // truth; anything newer arrives live once the exchange is back). A reset needs
                // the exchange's state, so that case waits for it.
                Err(error) if error.code == OrderError::EXCHANGE_UNAVAILABLE => {
                    stored_resume(&*store, &user, since).await.ok_or(error)
                }
                Err(error) => Err(error),
            }
        })
    }

    fn order_by_client_id(
        &self,
        user: &str,
        client_order_id: &str,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        let store = Arc::clone(&self.shared.store);
        let reply = self.call(
            user,
            TradingRequest::OrderByClientId {
                client_order_id: client_order_id.to_owned(),
            },
        );
        let user = user.to_owned();
        let client_order_id = client_order_id.to_owned();
        Box::pin(async move {
            match reply.await {
                Ok(reply) => reply.into_order(),
                // Without an exchange the shared store still knows every stored order.
                Err(error) if error.code == OrderError::EXCHANGE_UNAVAILABLE => {
                    match store.order_by_client_id(&user, &client_order_id).await {
                        Ok(Some(order)) => Ok(order),
                        _ => Err(error),
                    }
                }
                Err(error) => Err(error),
            }
        })
    }

    fn portfolio_changes(&self, user: &str) -> watch::Receiver<u64> {
        self.shared
            .with_user(user, |mirror| mirror.portfolio.subscribe())
    }

    fn book(
        &self,
        symbol: &str,
    ) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError> {
        let mut mirror = crate::trading::exchange::book_slot(&self.shared.books, symbol)?.lock();
        mirror.settle();
        Ok((
            mirror.slot.snapshot.clone(),
            mirror.slot.updates.subscribe(),
        ))
    }
}

/// Updates most replayed from the store alone (without the exchange).
const STORED_RESUME_LIMIT: usize = 10_000;

/// A replay of `user`'s stored updates after `since`, when they continue `since` without a
/// gap; `None` when only the exchange can answer (a gap, too many, or the store failed).
async fn stored_resume(store: &dyn TradingStore, user: &str, since: u64) -> Option<Resume> {
    let updates = store.updates_between(user, since, u64::MAX).await.ok()?;
    if updates.len() > STORED_RESUME_LIMIT {
        return None;
    }
    let contiguous = updates
        .iter()
        .enumerate()
        .all(|(index, update)| update.seq == since + 1 + index as u64);
    if !contiguous {
        return None;
    }
    let seq = updates.last().map_or(since, |update| update.seq);
    Some(Resume::Replay { seq, updates })
}
