//! Orders and trade updates: the `order`, `cancel` and `replace` actions and the
//! `trade_updates` stream. Invariants kept here:
//! - One action is handled at a time and its reply is returned before any trading event is
//!   read again, so an `order_ack` always precedes the trade updates the order caused.
//! - A refused order gets its order-level code (40010001, 40310000, 40410000, 42210000,
//!   42210002 with the existing order) and creates nothing.
//! - Trade updates go out in the user's `seq` order, each at most once per connection, and
//!   none is skipped: a (re)subscription registers the live receiver before it asks the
//!   exchange for what was missed (`"trade_updates":{"since":N}`: a replay from the store or a
//!   reset), and live updates at or below what was sent are dropped. A receiver that lagged
//!   is repaired the same way instead of closing the session.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::ErrorCode;
use crate::metrics::Metrics;
use crate::trading::api::{
    AccountSnapshot, OrderError, ResetReason, Resume, TradeUpdate, TradingApi, UserEvent,
};

use super::WsSession;
use super::frames::{Output, array, close_codes, error_frame, order_error_frame, tagged};
use super::parse::{self, Action, check_keys};
use super::subscriptions::Subscriptions;

/// Most trade updates coalesced into one frame.
const MAX_BATCH: usize = 256;

/// The user's trade updates, while the session is subscribed to them.
#[derive(Default)]
pub(super) struct TradeUpdates {
    receiver: Option<broadcast::Receiver<UserEvent>>,
    /// The last `seq` this connection sent (or announced as its starting point): live
    /// updates at or below it were already sent or were part of a replay or reset.
    last_seq: u64,
}

/// `{"T":"trade_updates_reset",...}`: the state a resuming client must rebuild from. Open
/// orders, positions and the account (without positions) at exactly `seq`.
fn reset_object(snapshot: &AccountSnapshot) -> String {
    let mut account = serde_json::to_value(&snapshot.account).unwrap_or(Value::Null);
    if let Some(object) = account.as_object_mut() {
        object.remove("positions");
    }
    json!({
        "T": "trade_updates_reset",
        "reason": snapshot.reason,
        "since": snapshot.since,
        "seq": snapshot.seq,
        "orders": snapshot.orders,
        "positions": snapshot.account.positions,
        "account": account,
    })
    .to_string()
}

/// `{"T":"trade_updates_live",...}`: everything up to `seq` was sent; live updates follow.
fn live_object(since: Option<u64>, seq: u64, replayed: usize) -> String {
    json!({"T": "trade_updates_live", "since": since, "seq": seq, "replayed": replayed}).to_string()
}

/// Counts replayed updates (`cause`: `resume` or `lag`) in `/metrics`.
fn count_replayed(metrics: &Metrics, cause: &str, n: usize) {
    if n > 0 {
        metrics.add_counter(
            "tickgate_trade_updates_replayed_total",
            "Trade updates read back from the store for resuming or lagging sessions.",
            &format!("cause=\"{cause}\""),
            n as f64,
        );
    }
}

/// Counts a resume answered with a reset, by reason, in `/metrics`.
fn count_reset(metrics: &Metrics, snapshot: &AccountSnapshot) {
    let reason = match snapshot.reason {
        ResetReason::TooOld => "too_old",
        ResetReason::Ahead => "ahead",
    };
    metrics.add_counter(
        "tickgate_trade_update_resets_total",
        "Trade update resumes answered with a reset (the state) instead of a replay.",
        &format!("reason=\"{reason}\""),
        1.0,
    );
}

/// Trade updates as frames of at most [`MAX_BATCH`] messages.
fn push_updates(updates: &[TradeUpdate], out: &mut Vec<Output>) {
    for chunk in updates.chunks(MAX_BATCH) {
        let objects: Vec<String> = chunk.iter().map(|u| tagged("trade_update", u)).collect();
        out.push(Output::frame(array(&objects)));
    }
}

impl TradeUpdates {
    /// The next trade update; pending while not subscribed. Cancel-safe.
    /// Whether the session follows the user's trade updates.
    pub(super) fn is_open(&self) -> bool {
        self.receiver.is_some()
    }

    pub(super) async fn recv(&mut self) -> Result<UserEvent, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl WsSession {
    /// Starts, restarts (a `since` on an existing subscription) or stops the trade-update
    /// stream after a subscription change.
    pub(super) async fn update_trade_updates(
        &mut self,
        previous: &Subscriptions,
        trading: &Arc<dyn TradingApi>,
        user: &str,
        since: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        if self.subs.trade_updates && (!previous.trade_updates || since.is_some()) {
            // Live first, then the store: every update is in one or the other.
            if self.streams().trade_updates.receiver.is_none() {
                self.streams().trade_updates.receiver = Some(trading.user_events(user));
            }
            self.start_trade_updates(trading, user, since, out).await;
        } else if !self.subs.trade_updates
            && let Some(streams) = self.streams.as_deref_mut()
        {
            streams.trade_updates.receiver = None;
        }
    }

    /// With `since`: everything the user missed after it, or a reset; without: only where
    /// the sequence stands now. Ends with `trade_updates_live`. The live receiver must already
    /// be registered.
    async fn start_trade_updates(
        &mut self,
        trading: &Arc<dyn TradingApi>,
        user: &str,
        since: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        // Without `since`, "ahead of everything" answers with the current seq alone.
        let asked = since.unwrap_or(u64::MAX);
        match trading.updates_since(user, asked).await {
            Ok(Resume::Replay { seq, updates }) => {
                let replayed = updates.len();
                count_replayed(&self.deps.metrics, "resume", replayed);
                push_updates(&updates, out);
                self.streams().trade_updates.last_seq = seq;
                out.push(Output::frame(format!(
                    "[{}]",
                    live_object(since, seq, replayed)
                )));
            }
            Ok(Resume::Reset(snapshot)) => {
                let seq = snapshot.seq;
                if since.is_some() {
                    count_reset(&self.deps.metrics, &snapshot);
                    out.push(Output::frame(format!("[{}]", reset_object(&snapshot))));
                }
                self.streams().trade_updates.last_seq = seq;
                out.push(Output::frame(format!("[{}]", live_object(since, seq, 0))));
            }
            Err(error) => {
                tracing::error!(%error, user, "trade updates could not be resumed");
                out.push(error_frame(
                    None,
                    ErrorCode::StreamInternal,
                    &format!("trade updates could not be resumed: {}", error.message),
                ));
            }
        }
    }

    /// `order`, `cancel` or `replace`: the exchange's answer as an `order_ack` or an error.
    pub(super) async fn order_action(
        &mut self,
        action: Action,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        let allowed: &[&str] = match action {
            Action::Order => &["data"],
            Action::Cancel => &["order_id", "client_order_id"],
            _ => &["order_id", "client_order_id", "data"],
        };
        if let Err(refusal) = check_keys(map, action.name(), allowed) {
            out.push(error_frame(id, OrderError::INVALID, &refusal.msg));
            return;
        }
        let trading = &self.deps.trading;
        let user = self.auth.user().unwrap_or_default().to_owned();
        let result = match action {
            Action::Order => match parse::order_request(map) {
                Ok(request) => trading.submit(&user, request).await,
                Err(error) => Err(error),
            },
            Action::Cancel => match parse::target(map) {
                Ok(target) => trading.cancel(&user, target).await,
                Err(error) => Err(error),
            },
            _ => match parse::target(map).and_then(|t| Ok((t, parse::replace_request(map)?))) {
                Ok((target, patch)) => trading.replace(&user, target, patch).await,
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(order) => {
                let mut reply = json!({"T": "order_ack", "order": order});
                if let (Some(id), Some(object)) = (id, reply.as_object_mut()) {
                    object.insert("id".into(), id.clone());
                }
                out.push(Output::frame(format!("[{reply}]")));
            }
            Err(error) => out.push(order_error_frame(id, &error)),
        }
    }

    /// Frames `first` and whatever else is already queued (up to [`MAX_BATCH`]), skipping
    /// updates already sent; after a lag, reads the missed ones back.
    pub(super) async fn on_user_events(
        &mut self,
        first: Result<UserEvent, broadcast::error::RecvError>,
        out: &mut Vec<Output>,
    ) {
        let mut objects = Vec::new();
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(UserEvent::TradeUpdate(update)) => {
                    // At or below the mark: already sent in a replay or covered by a reset.
                    if update.seq > self.streams().trade_updates.last_seq {
                        self.streams().trade_updates.last_seq = update.seq;
                        objects.push(tagged("trade_update", update.as_ref()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    lagged = true;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.streams().trade_updates.receiver = None;
                    break;
                }
            }
            if objects.len() < MAX_BATCH
                && let Some(receiver) = &mut self.streams().trade_updates.receiver
            {
                next = match receiver.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                };
            }
        }
        if !objects.is_empty() {
            out.push(Output::frame(array(&objects)));
        }
        if lagged {
            self.repair_lag(out).await;
        }
    }

    /// The live receiver dropped updates this connection had not read: they are all stored,
    /// so they are read back after the last one sent, exactly as a resuming client would get
    /// them (or a reset, when too many were missed). The receiver is already past the gap.
    async fn repair_lag(&mut self, out: &mut Vec<Output>) {
        let trading = Arc::clone(&self.deps.trading);
        let user = self.auth.user().unwrap_or_default().to_owned();
        let since = self.streams().trade_updates.last_seq;
        match trading.updates_since(&user, since).await {
            Ok(Resume::Replay { seq, updates }) => {
                count_replayed(&self.deps.metrics, "lag", updates.len());
                push_updates(&updates, out);
                self.streams().trade_updates.last_seq = seq;
            }
            Ok(Resume::Reset(snapshot)) => {
                count_reset(&self.deps.metrics, &snapshot);
                self.streams().trade_updates.last_seq = snapshot.seq;
                out.push(Output::frame(format!("[{}]", reset_object(&snapshot))));
            }
            Err(error) => {
                tracing::error!(%error, user, "trade updates lost by a lagging session");
                out.push(error_frame(
                    None,
                    ErrorCode::SlowClient,
                    "slow client: trade updates could not be delivered; reconnect and resume with since",
                ));
                self.close(out, close_codes::POLICY, "slow client");
            }
        }
    }
}
