//! Orders and trade updates: the `order`, `cancel` and `replace` actions and the
//! `trade_updates` stream. Invariants kept here:
//! - One action is handled at a time and its reply is returned before any trading event is
//!   read again, so an `order_ack` always precedes the trade updates the order caused.
//! - A refused order gets its order-level code (40010001, 40310000, 40410000, 42210000) and
//!   creates nothing.
//! - Trade updates are never dropped silently: a session that lags behind the user's event
//!   broadcast gets error 407 and is closed, and reads `GET /v1/orders` after reconnecting.

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::error::ErrorCode;
use crate::trading::api::{OrderError, TradingApi, UserEvent};

use super::WsSession;
use super::frames::{Output, array, close_codes, error_frame, tagged};
use super::parse::{self, Action, check_keys};
use super::subscriptions::Subscriptions;

/// Most trade updates coalesced into one frame.
const MAX_BATCH: usize = 256;

/// The user's trade updates, while the session is subscribed to them.
#[derive(Default)]
pub(super) struct TradeUpdates {
    receiver: Option<broadcast::Receiver<UserEvent>>,
}

impl TradeUpdates {
    /// The next trade update; pending while not subscribed. Cancel-safe.
    pub(super) async fn recv(&mut self) -> Result<UserEvent, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl WsSession {
    /// Starts or stops the trade-update stream after a subscription change.
    pub(super) fn update_trade_updates(
        &mut self,
        previous: &Subscriptions,
        trading: &dyn TradingApi,
        user: &str,
    ) {
        if self.subs.trade_updates && !previous.trade_updates {
            self.trade_updates.receiver = Some(trading.user_events(user));
        } else if !self.subs.trade_updates {
            self.trade_updates.receiver = None;
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
            Err(error) => out.push(error_frame(id, error.code, &error.message)),
        }
    }

    /// Frames `first` and whatever else is already queued (up to [`MAX_BATCH`]).
    pub(super) fn on_user_events(
        &mut self,
        first: Result<UserEvent, broadcast::error::RecvError>,
        out: &mut Vec<Output>,
    ) {
        let mut objects = Vec::new();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(UserEvent::TradeUpdate(update)) => {
                    objects.push(tagged("trade_update", update.as_ref()));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if !objects.is_empty() {
                        out.push(Output::frame(array(&objects)));
                    }
                    out.push(error_frame(
                        None,
                        ErrorCode::SlowClient,
                        &format!(
                            "slow client: {missed} trade updates were dropped; reconnect and read GET /v1/orders"
                        ),
                    ));
                    self.close(out, close_codes::POLICY, "slow client");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.trade_updates.receiver = None;
                    break;
                }
            }
            if objects.len() < MAX_BATCH
                && let Some(receiver) = &mut self.trade_updates.receiver
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
    }
}
