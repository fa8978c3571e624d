//! The authenticated WebSocket session (docs/websocket.md) as a state machine without sockets
//! and without a clock of its own: inputs are client text messages, hub deliveries, trading
//! events and timers (tokio's, so tests pause time); outputs are the text frames (each a JSON
//! array of `T`-tagged objects) and the close the transport must send. `transport::ws` is the
//! thin actix glue around it; tests drive it directly.
//!
//! [`WsSession`] owns one part per concern, each in its own file: `auth` (who the session is),
//! `rate` (the action budget), `subscriptions` (what it asked for), `market` (hub data, shared
//! with the transport's fast path), `orders` (actions and trade updates), `portfolio`, and
//! `books`. `parse` reads client messages and `frames` writes replies. A new action is a
//! variant of `parse::Action` plus a handler in its concern's file, dispatched in
//! [`WsSession::on_text`].
//!
//! Rules kept here:
//! - Every client message gets either its effect or a specific `error`, except messages
//!   dropped by the rate limit after the first of their run; only auth failures, auth
//!   timeout, the connection limit, token expiry, a slow client, a sustained flood (430), an
//!   unfinished fragmented message (431) and a message over the hard size limit end the
//!   session.
//! - One action is handled at a time and its reply is returned before any trading event is
//!   read again, so an `order_ack` always precedes the trade updates the order caused.
//! - Market data reuses the hub's encoded JSON (`Entry.json`): frames are concatenations.
//! - Order-book `seq` rises by exactly one per symbol for the life of the connection; when
//!   deltas were lost (lag) the client gets a fresh snapshot instead of a gap.
//! - Trade updates go out in the user's `seq` order, each at most once per connection, none
//!   skipped (resume with `since`, lag repaired from the store; see `orders`).
//! - A session ends when its credential does unless the client refreshed it in place (see
//!   `auth`).

mod auth;
mod books;
mod frames;
mod market;
mod orders;
mod parse;
mod portfolio;
mod rate;
mod subscriptions;
#[cfg(test)]
pub(super) mod tests;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::auth::api_keys::ApiKeys;
use crate::auth::{AuthError, AuthService, Identity};
use crate::error::ErrorCode;
use crate::hub::{CloseReason, Delivery, Hub, SubscriberQueue};
use crate::metrics::Metrics;
use crate::trading::api::{TradingApi, UserEvent};

pub use books::BookMessage;
pub use frames::{Output, close_codes, closing};
pub use market::{MarketEncoding, MarketState, SharedMarket};
pub use parse::is_order_action;

use auth::AuthState;
use books::Books;
use frames::{CONNECTED_FRAME, error_frame};
use market::MarketFeeds;
use orders::TradeUpdates;
use parse::{Action, request_id};
use portfolio::PortfolioStream;
use rate::{BucketLimits, TokenBucket, Verdict};
use subscriptions::Subscriptions;

/// Limits of every session, from `[ws]` and `[market]` settings.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub auth_timeout: Duration,
    pub max_message_bytes: usize,
    pub actions_per_second: f64,
    pub action_burst: u32,
    /// Dropped messages beyond the refill after which the session is closed (430).
    pub max_dropped_actions: u32,
    /// Minimum time between two portfolio messages.
    pub portfolio_interval: Duration,
    /// Most distinct explicit symbols over all subscriptions (error 405 beyond).
    pub max_symbols: usize,
    /// A deadline further away than this is not armed as a timer yet (see
    /// [`WsSession::poll_wait`]): the transport polls the session at least this often anyway
    /// (on the keep-alive sweep's tick), and arms the timer once the deadline comes within
    /// reach. An idle authenticated connection then holds no timer for most of its token's
    /// life. `None`: every deadline is armed at once.
    pub timer_horizon: Option<Duration>,
}

/// What every session of the server shares: the gateway's services and the limits, built
/// once (`AppState::ws_sessions`) so a connection carries one pointer instead of six.
#[derive(Clone)]
pub struct SessionShared {
    pub hub: Arc<Hub>,
    pub auth: Arc<AuthService>,
    /// API key pairs, accepted by `auth` as `key` and `secret`.
    pub api_keys: Arc<ApiKeys>,
    pub trading: Arc<dyn TradingApi>,
    pub metrics: Arc<Metrics>,
    pub limits: SessionLimits,
}

/// What a session needs from the rest of the gateway: the shared part (reached through
/// `Deref`, so `deps.hub` reads as before) and what is the connection's own.
#[derive(Clone)]
pub struct SessionDeps {
    pub shared: Arc<SessionShared>,
    /// The client's address (loopback-only key pairs check it).
    pub peer: Option<std::net::IpAddr>,
    /// How market data is framed: tickgate's JSON, or the Alpaca stream's MessagePack.
    pub market_encoding: MarketEncoding,
}

impl std::ops::Deref for SessionDeps {
    type Target = SessionShared;

    fn deref(&self) -> &SessionShared {
        &self.shared
    }
}

/// Something the session was woken for; pass it back to [`WsSession::on_wake`].
#[derive(Debug)]
pub enum Wake {
    Hub,
    UserEvent(Result<UserEvent, broadcast::error::RecvError>),
    PortfolioChanged(bool),
    PortfolioDue,
    Book(BookMessage),
    /// A throttled order book's window ended with merged deltas waiting.
    BooksDue,
    AuthDeadline,
    TokenExpired,
}

/// One client connection's state: one part per concern.
pub struct WsSession {
    deps: SessionDeps,
    auth: AuthState,
    rate: TokenBucket,
    subs: Subscriptions,
    market: MarketFeeds,
    /// Trade updates, the portfolio stream and order books: created on the first action
    /// that needs one of them, so a market-data session (most idle connections) carries a
    /// null pointer instead of their ~180 bytes (issue 17: idle WebSocket memory).
    streams: Option<Box<Streams>>,
    /// The sleep for the nearest of the session's deadlines (see [`WsSession::poll_wait`]);
    /// boxed, and only while a deadline exists, so a session without one carries a null
    /// pointer. Kept and reset between deadlines rather than allocated per wait.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    closed: bool,
}

/// The parts of a session that only trading and order-book clients use.
struct Streams {
    trade_updates: TradeUpdates,
    portfolio: PortfolioStream,
    books: Books,
}

/// The session's timers, all served by one sleep (see [`WsSession::wait`]).
#[derive(Debug, Clone, Copy)]
enum Timer {
    MarketDue,
    PortfolioDue,
    BooksDue,
    AuthDeadline,
    TokenExpired,
}

impl Timer {
    fn wake(self) -> Wake {
        match self {
            Timer::MarketDue => Wake::Hub,
            Timer::PortfolioDue => Wake::PortfolioDue,
            Timer::BooksDue => Wake::BooksDue,
            Timer::AuthDeadline => Wake::AuthDeadline,
            Timer::TokenExpired => Wake::TokenExpired,
        }
    }
}

/// Sleeps until the timer's deadline; pending forever without one.
async fn sleep_until_timer(timer: Option<(Instant, Timer)>) -> Wake {
    match timer {
        Some((deadline, timer)) => {
            tokio::time::sleep_until(deadline).await;
            timer.wake()
        }
        None => std::future::pending().await,
    }
}

/// Waits on the trading streams (trade updates, portfolio changes, order books). Boxed by
/// the caller and only while one of them is open, so a market-data session's waiting state
/// holds a pointer instead of three receivers' futures.
async fn trading_wake(
    trade_updates: &mut TradeUpdates,
    portfolio: &mut PortfolioStream,
    books: &mut Books,
) -> Wake {
    tokio::select! {
        biased;
        event = trade_updates.recv() => Wake::UserEvent(event),
        ok = portfolio.changed() => Wake::PortfolioChanged(ok),
        Some(message) = books.recv() => Wake::Book(message),
        else => std::future::pending().await,
    }
}

/// The boxed future, or pending forever.
async fn boxed_or_pending<F: std::future::Future>(
    future: Option<std::pin::Pin<Box<F>>>,
) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

impl SessionLimits {
    pub fn from_settings(settings: &crate::settings::Settings) -> SessionLimits {
        let ws = &settings.ws;
        SessionLimits {
            auth_timeout: ws.auth_timeout,
            max_message_bytes: ws.max_message_bytes,
            actions_per_second: ws.actions_per_second,
            action_burst: ws.action_burst,
            max_dropped_actions: ws.max_dropped_actions,
            portfolio_interval: Duration::from_secs_f64(1.0 / ws.portfolio_max_per_second),
            max_symbols: settings.market.max_symbols_per_subscription,
            // The keep-alive sweep reaches every connection once per ping interval; twice
            // that leaves room for a late tick.
            timer_horizon: Some(ws.ping_interval.saturating_mul(2)),
        }
    }
}

impl SessionLimits {
    /// The action bucket's shape, which every session shares.
    fn bucket(&self) -> BucketLimits {
        BucketLimits::new(
            self.actions_per_second,
            self.action_burst,
            self.max_dropped_actions,
        )
    }
}

impl WsSession {
    pub fn new(deps: SessionDeps) -> WsSession {
        let limits = &deps.limits;
        WsSession {
            auth: AuthState::new(Instant::now() + limits.auth_timeout),
            rate: TokenBucket::new(limits.bucket()),
            subs: Subscriptions::default(),
            market: MarketFeeds::new(
                deps.hub.new_queue(),
                Arc::clone(&deps.metrics),
                deps.market_encoding,
                (deps.market_encoding == MarketEncoding::MsgPack)
                    .then(|| deps.hub.msgpack_client()),
            ),
            streams: None,
            timer: None,
            closed: false,
            deps,
        }
    }

    /// The trading and order-book streams, created on first use.
    fn streams(&mut self) -> &mut Streams {
        let interval = self.deps.limits.portfolio_interval;
        self.streams.get_or_insert_with(|| {
            Box::new(Streams {
                trade_updates: TradeUpdates::default(),
                portfolio: PortfolioStream::new(interval),
                books: Books::default(),
            })
        })
    }

    /// The queue the hub (and its keep-alive sweep) pushes into; wake-ups surface as
    /// [`Wake::Hub`].
    pub fn queue(&self) -> &Arc<SubscriberQueue> {
        &self.market.queue
    }

    /// Hands market-data delivery to the transport: from now on [`WsSession::wait`] no longer
    /// watches the hub queue, and the caller drains it through the returned state (see
    /// `wire::WsBody`), pinging on those wake-ups as the loop otherwise would.
    pub fn market(&mut self) -> SharedMarket {
        self.market.in_transport = true;
        Rc::clone(&self.market.shared)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn user(&self) -> Option<&str> {
        self.auth.user()
    }

    /// The greeting, then (when the upgrade carried a credential) its outcome.
    pub fn start(&mut self, upgrade_auth: Option<Result<Identity, AuthError>>) -> Vec<Output> {
        let mut out = vec![Output::Frame(Bytes::from_static(CONNECTED_FRAME))];
        if let Some(result) = upgrade_auth {
            self.finish_auth(None, result, &mut out);
        }
        out
    }

    fn close(&mut self, out: &mut Vec<Output>, code: u16, reason: &str) {
        self.closed = true;
        out.push(Output::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    /// The server is stopping. The connection hears the shutdown token before the hub's
    /// close reaches its queue, so the session flushes what is queued and, when it receives
    /// market data, ends with the shutdown status itself; then it closes with 1012.
    pub fn on_shutdown(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        if self.market.any_registered() {
            self.deliver(vec![Delivery::Close(CloseReason::Shutdown)], &mut out);
        } else {
            self.close(&mut out, close_codes::RESTART, "server restarting");
        }
        out
    }

    /// A message too large to handle (`len` bytes, or more) that was skipped.
    pub fn on_oversize(&mut self, len: u64) -> Vec<Output> {
        if let Some(dropped) = self.over_rate(None) {
            return dropped;
        }
        self.oversize_error(len)
    }

    fn oversize_error(&self, len: u64) -> Vec<Output> {
        vec![error_frame(
            None,
            ErrorCode::InvalidSyntax,
            &format!(
                "message too large: {len} bytes, at most {} allowed",
                self.deps.limits.max_message_bytes
            ),
        )]
    }

    /// A message beyond the limit that ends the connection (`ws.max_frame_bytes`, or
    /// `ws.max_preauth_message_bytes` before authentication): the session ends (close 1009)
    /// after saying why.
    pub fn on_frame_overflow(&mut self, limit: usize) -> Vec<Output> {
        let when = if self.auth.is_authenticated() {
            ""
        } else {
            " before authentication"
        };
        let mut out = vec![error_frame(
            None,
            ErrorCode::InvalidSyntax,
            &format!("message too large: messages over {limit} bytes{when} end the connection"),
        )];
        self.close(&mut out, close_codes::TOO_BIG, "message too large");
        out
    }

    /// A fragmented message left unfinished for `ws.fragment_timeout`: the session ends.
    pub fn on_fragment_timeout(&mut self) -> Vec<Output> {
        let mut out = vec![error_frame(
            None,
            ErrorCode::FragmentTimeout,
            "fragmented message not finished in time",
        )];
        self.close(&mut out, close_codes::POLICY, "fragmented message timeout");
        out
    }

    /// A binary frame: the protocol is JSON text only.
    pub fn on_binary(&mut self) -> Vec<Output> {
        if let Some(dropped) = self.over_rate(None) {
            return dropped;
        }
        vec![error_frame(
            None,
            ErrorCode::InvalidSyntax,
            "binary frames are not supported: send JSON text frames",
        )]
    }

    /// Draws the message from the action budget: `None` to handle it, else what to answer
    /// instead (the 408 for the first drop of a run, nothing for the rest, the close once
    /// the flood is sustained). Every client message counts, text or not, so no kind of
    /// message gets a reply per dropped message.
    pub fn over_rate(&mut self, text: Option<&str>) -> Option<Vec<Output>> {
        match self.rate.check(self.deps.limits.bucket()) {
            Verdict::Allow => None,
            Verdict::DropSilently => Some(Vec::new()),
            Verdict::DropAndAnswer => Some(vec![error_frame(
                text.and_then(|text| request_id(text, self.deps.limits.max_message_bytes))
                    .as_ref(),
                ErrorCode::StreamRateLimited,
                "rate limited: too many actions; this and further messages are dropped \
                 without reply until you slow down, and a sustained flood closes the \
                 connection",
            )]),
            Verdict::Close => {
                let mut out = vec![error_frame(
                    None,
                    ErrorCode::RateLimitAbuse,
                    "closed: messages kept coming far over the rate limit",
                )];
                self.close(&mut out, close_codes::POLICY, "rate limit exceeded");
                Some(out)
            }
        }
    }

    /// One client text message.
    pub async fn on_text(&mut self, text: &str) -> Vec<Output> {
        if self.closed {
            return Vec::new();
        }
        // A message that arrives with (or after) the expiry is not processed, even if the
        // timer has not been served yet.
        if self.auth.token_expired() {
            let mut out = Vec::new();
            self.end_expired(&mut out);
            return out;
        }
        if let Some(dropped) = self.over_rate(Some(text)) {
            return dropped;
        }
        if text.len() > self.deps.limits.max_message_bytes {
            return self.oversize_error(text.len() as u64);
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                return vec![error_frame(
                    None,
                    ErrorCode::InvalidSyntax,
                    &format!("invalid JSON: {error}"),
                )];
            }
        };
        let Value::Object(map) = value else {
            return vec![error_frame(
                None,
                ErrorCode::InvalidSyntax,
                "a message must be a JSON object with an \"action\"",
            )];
        };
        let id = map.get("id").cloned();
        if let Some(bad) = &id
            && !(bad.is_string() || bad.is_number())
        {
            return vec![error_frame(
                None,
                ErrorCode::InvalidSyntax,
                "id must be a string or a number",
            )];
        }
        let id = id.as_ref();
        let action = match map.get("action") {
            Some(Value::String(action)) => Action::parse(action),
            Some(_) => {
                return vec![error_frame(
                    id,
                    ErrorCode::InvalidSyntax,
                    "action must be a string",
                )];
            }
            None => {
                return vec![error_frame(
                    id,
                    ErrorCode::InvalidSyntax,
                    "action is required",
                )];
            }
        };
        let action = match action {
            Ok(action) => action,
            Err(refusal) => return vec![error_frame(id, refusal.code, &refusal.msg)],
        };
        let mut out = Vec::new();
        if action.needs_identity() && !self.auth.is_authenticated() {
            out.push(error_frame(
                id,
                ErrorCode::NotAuthenticated,
                "not authenticated: send {\"action\":\"auth\",\"token\":...} first",
            ));
            return out;
        }
        match action {
            Action::Auth => self.auth_action(id, &map, &mut out),
            Action::Subscribe => self.subscribe_action(id, &map, true, &mut out).await,
            Action::Unsubscribe => self.subscribe_action(id, &map, false, &mut out).await,
            Action::Resync => self.resync_action(id, &map, &mut out),
            Action::Order | Action::Cancel | Action::Replace => {
                self.order_action(action, id, &map, &mut out).await;
            }
        }
        out
    }

    /// The earliest of the session's deadlines (throttled market data or book deltas due,
    /// portfolio message due, authentication deadline, token expiry) and which it is; on a
    /// tie the first in the order below, as the others come due again on the next wait.
    fn next_timer(&self) -> Option<(Instant, Timer)> {
        // Throttled market data waiting for its window, when the loop serves the hub queue
        // itself (the transport's fast path watches its own otherwise).
        let market_due = (!self.market.in_transport)
            .then(|| self.market.shared.borrow().next_release())
            .flatten();
        [
            (market_due, Timer::MarketDue),
            (
                self.streams.as_ref().and_then(|s| s.portfolio.due()),
                Timer::PortfolioDue,
            ),
            (
                self.streams.as_ref().and_then(|s| s.books.next_release()),
                Timer::BooksDue,
            ),
            (self.auth.pending_deadline(), Timer::AuthDeadline),
            (self.auth.token_deadline(), Timer::TokenExpired),
        ]
        .into_iter()
        .filter_map(|(deadline, timer)| deadline.map(|deadline| (deadline, timer)))
        .min_by_key(|(deadline, _)| *deadline)
    }

    /// Waits for the next thing the session must react to besides client messages.
    /// Cancel-safe: the glue selects on it together with the socket.
    ///
    /// The WebSocket transport uses this only while a trading stream is open (inside one
    /// boxed wait); otherwise it polls [`WsSession::poll_wait`] in place, which this also
    /// does then. It is kept small all the same: one sleep for the nearest deadline rather
    /// than one per timer, and the trading streams' receivers only as a boxed future while
    /// one is open (`size_of` pinned in the tests).
    pub async fn wait(&mut self) -> Wake {
        if !self.waits_on_streams() {
            return std::future::poll_fn(|cx| self.poll_wait(cx)).await;
        }
        self.timer = None;
        let timer = self.next_timer();
        let trading = self
            .streams
            .as_deref_mut()
            .filter(|s| s.trade_updates.is_open() || s.portfolio.is_open() || s.books.is_open())
            .map(|s| {
                Box::pin(trading_wake(
                    &mut s.trade_updates,
                    &mut s.portfolio,
                    &mut s.books,
                ))
            });
        // Biased: the hub's queue (market data, the hot path) is checked first, without the
        // random start that costs a thread-local RNG draw per wake-up.
        tokio::select! {
            biased;
            _ = self.market.queue.notified(), if !self.market.in_transport => Wake::Hub,
            wake = boxed_or_pending(trading) => wake,
            wake = sleep_until_timer(timer) => wake,
        }
    }

    /// Whether a trading stream (trade updates, portfolio, order books) is open: then only
    /// [`WsSession::wait`] can wait for everything, since those streams' receivers have no
    /// poll form and need a future of their own; otherwise [`WsSession::poll_wait`] does.
    pub fn waits_on_streams(&self) -> bool {
        self.streams.as_deref().is_some_and(|s| {
            s.trade_updates.is_open() || s.portfolio.is_open() || s.books.is_open()
        })
    }

    /// The poll form of [`WsSession::wait`] for a session with no trading stream open (see
    /// [`WsSession::waits_on_streams`]; such streams are not watched here): the hub queue
    /// when the loop serves it, and the nearest deadline. The connection's loop polls this in
    /// place, so an idle connection holds no waiting future at all, only the session's boxed
    /// sleep while a deadline is within [`SessionLimits::timer_horizon`] (the caller must
    /// poll again within that horizon, which the WebSocket transport does on every
    /// keep-alive tick). Cancel-safe: nothing is lost between polls.
    pub fn poll_wait(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Wake> {
        use std::task::Poll;
        if !self.market.in_transport && self.market.queue.poll_notified(cx).is_ready() {
            return Poll::Ready(Wake::Hub);
        }
        let Some((deadline, timer)) = self.next_timer() else {
            // No deadline: the sleep's allocation goes too.
            self.timer = None;
            return Poll::Pending;
        };
        if let Some(horizon) = self.deps.limits.timer_horizon
            && deadline > Instant::now() + horizon
        {
            // Out of reach: the transport polls again before it comes within reach.
            self.timer = None;
            return Poll::Pending;
        }
        let sleep = match &mut self.timer {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            empty => empty.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match std::future::Future::poll(sleep.as_mut(), cx) {
            Poll::Ready(()) => Poll::Ready(timer.wake()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reacts to what [`WsSession::wait`] returned.
    pub async fn on_wake(&mut self, wake: Wake) -> Vec<Output> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        match wake {
            Wake::Hub => self.deliver(Vec::new(), &mut out),
            Wake::AuthDeadline => self.on_auth_deadline(&mut out),
            Wake::TokenExpired => {
                if self.auth.token_expired() {
                    self.end_expired(&mut out);
                }
            }
            Wake::UserEvent(first) => self.on_user_events(first, &mut out).await,
            Wake::PortfolioChanged(ok) => self.streams().portfolio.on_changed(ok),
            Wake::PortfolioDue => self.on_portfolio_due(&mut out).await,
            Wake::Book(first) => self.on_book_messages(first, &mut out),
            Wake::BooksDue => self.on_books_due(&mut out),
        }
        out
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        self.market.queue.mark_gone();
        for feed in self.market.registered_feeds() {
            self.deps.hub.unsubscribe(feed, &self.market.queue);
        }
        if self.subs.trades_anything() {
            self.deps.hub.unlisten_trading(&self.market.queue);
        }
        // The book forwarders stop when `books` drops.
    }
}
