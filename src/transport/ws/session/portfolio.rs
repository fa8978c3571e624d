//! The `portfolio` stream: the user's cash, equity and positions, sent on every subscribe that
//! asks for it (also when already subscribed: a client that resubscribes has the state at
//! once) and then whenever the exchange reports a change. Invariant kept here: at most one portfolio
//! message per `ws.portfolio_max_per_second` interval; changes in between only mark the
//! portfolio dirty, and one message carries them all when the interval has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ErrorCode;
use crate::trading::api::TradingApi;

use super::WsSession;
use super::frames::{Output, error_frame, tagged};
use super::subscriptions::Subscriptions;

/// The throttled portfolio stream of one session.
pub(super) struct PortfolioStream {
    /// The exchange's change counter, while subscribed.
    changes: Option<watch::Receiver<u64>>,
    /// A change arrived since the last message.
    dirty: bool,
    last_sent: Option<Instant>,
    /// Minimum time between two portfolio messages.
    interval: Duration,
}

impl PortfolioStream {
    pub(super) fn new(interval: Duration) -> PortfolioStream {
        PortfolioStream {
            changes: None,
            dirty: false,
            last_sent: None,
            interval,
        }
    }

    /// Whether the session follows the exchange's portfolio changes.
    pub(super) fn is_open(&self) -> bool {
        self.changes.is_some()
    }

    /// Waits for a change: `true` for one, `false` when the exchange dropped the stream.
    /// Pending while not subscribed. Cancel-safe.
    pub(super) async fn changed(&mut self) -> bool {
        match &mut self.changes {
            Some(receiver) => receiver.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    }

    /// When a throttled portfolio message is due.
    pub(super) fn due(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |last| last + self.interval),
        )
    }

    /// What a [`PortfolioStream::changed`] result means for the stream.
    pub(super) fn on_changed(&mut self, ok: bool) {
        if ok {
            self.dirty = true;
        } else {
            self.changes = None;
        }
    }
}

impl WsSession {
    /// Starts or stops the portfolio stream after a subscription change; a new subscription,
    /// or a repeated one (`requested`), gets the current portfolio at once.
    pub(super) async fn update_portfolio(
        &mut self,
        previous: &Subscriptions,
        requested: bool,
        trading: &Arc<dyn TradingApi>,
        user: &str,
        out: &mut Vec<Output>,
    ) {
        if self.subs.portfolio && previous.portfolio && requested {
            self.streams().portfolio.dirty = false;
            self.push_portfolio(trading, user, out).await;
        } else if self.subs.portfolio && !previous.portfolio {
            let mut changes = trading.portfolio_changes(user);
            changes.borrow_and_update();
            self.streams().portfolio.changes = Some(changes);
            self.streams().portfolio.dirty = false;
            self.push_portfolio(trading, user, out).await;
        } else if !self.subs.portfolio
            && let Some(streams) = self.streams.as_deref_mut()
        {
            streams.portfolio.changes = None;
            streams.portfolio.dirty = false;
        }
    }

    /// The throttle interval has passed with a change pending.
    pub(super) async fn on_portfolio_due(&mut self, out: &mut Vec<Output>) {
        self.streams().portfolio.dirty = false;
        if self.subs.portfolio {
            let trading = Arc::clone(&self.deps.trading);
            let user = self.auth.user().unwrap_or_default().to_owned();
            self.push_portfolio(&trading, &user, out).await;
        }
    }

    async fn push_portfolio(
        &mut self,
        trading: &Arc<dyn TradingApi>,
        user: &str,
        out: &mut Vec<Output>,
    ) {
        self.streams().portfolio.last_sent = Some(Instant::now());
        match trading.portfolio(user).await {
            Ok(portfolio) => out.push(Output::frame(format!(
                "[{}]",
                tagged("portfolio", &portfolio)
            ))),
            Err(error) => {
                tracing::error!(error = %error, "portfolio unavailable");
                out.push(error_frame(
                    None,
                    ErrorCode::StreamInternal,
                    "portfolio unavailable",
                ));
            }
        }
    }
}
