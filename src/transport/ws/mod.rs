//! `GET /v1/stream`: the actix glue of the authenticated WebSocket (docs/websocket.md), and
//! Alpaca's streams on the same session (`GET /v2/{iex,sip,test}` and `GET /stream`, with a
//! dialect from `transport::alpaca` in front; docs/alpaca.md). It checks
//! `Origin` and reads an upgrade credential (`Authorization: Bearer` or `?ticket=`), then runs
//! one loop per connection that feeds socket frames and session wake-ups into [`WsSession`]
//! (`session`, socket-free and clock-free) and writes what the session returns. The loop runs
//! inside the response body ([`wire::WsBody`]), not in a task of its own, and the body serves
//! market data itself ([`wire::FastPath`]). Only this module and `wire` know about actix.
//!
//! Pings and the idle timeout need no timer of their own: the hub's keep-alive sweep pushes a
//! tick into every WebSocket queue once per `ws.ping_interval`, busy or not, and when the
//! fast path drains one with a ping due it closes a peer that sent nothing (not even a pong)
//! for `ws.idle_timeout`, else pings it. Data deliveries do not read the clock.
//!
//! Invariants kept here: a browser origin not in `server.allowed_origins` (nor the gateway's
//! own) is refused before the upgrade; while the loop is inside an action, market data waits
//! (`Wire::busy`), so a reply precedes the data it starts; the session leaves the hub before
//! the close frame goes out; the connection gauge falls however the connection ends.

pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::{AuthError, Identity};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Transport;
use crate::routes::params::{Bearer, RawQuery, bearer, query_params};
use crate::state::AppState;
use crate::transport::alpaca::stream::{DataDialect, Encoding, TradingDialect, WireFrame};
use session::{MarketEncoding, Output, SessionDeps, WsSession, close_codes};
use wire::{
    FastPath, Inbound, InboundLimits, Incoming, Wire, WsBody, put_binary, put_close, put_pong,
    put_text,
};

fn put_wire_frame(outbox: &mut bytes::BytesMut, frame: WireFrame) {
    match frame {
        WireFrame::Text(text) => put_text(outbox, &text),
        WireFrame::Binary(bytes) => put_binary(outbox, &bytes),
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stream", web::get().to(stream))
        .route("/stream", web::get().to(alpaca_trading_stream))
        // Every stock feed name Alpaca has serves the same tickgate market.
        .route("/v2/iex", web::get().to(alpaca_data_stream))
        .route("/v2/sip", web::get().to(alpaca_data_stream))
        .route("/v2/test", web::get().to(alpaca_data_stream));
}

/// What a connection speaks: tickgate's protocol, or an Alpaca dialect of it
/// (`transport::alpaca::stream`).
#[derive(Debug, Clone, Copy)]
enum Dialect {
    Native,
    AlpacaData(DataDialect),
    AlpacaTrading(TradingDialect),
}

/// Whether a browser page from `origin` may open the socket. No `Origin` header means a
/// non-browser client, which cross-site WebSocket hijacking cannot involve.
fn origin_allowed(request: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    // The gateway's own pages (same scheme-less host and port as the request) are always
    // allowed, so the dashboard works on whatever address the gateway is bound to.
    let same_origin = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
        });
    same_origin
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// The credential on the upgrade request, if any, verified.
fn upgrade_credential(
    request: &HttpRequest,
    query: &HashMap<String, String>,
    state: &AppState,
) -> Result<Option<Result<Identity, AuthError>>, ApiError> {
    match bearer(request) {
        Bearer::Token(token) => return Ok(Some(state.auth.verify_token(token))),
        Bearer::Malformed => {
            return Err(ApiError::unauthorized(
                "Authorization must be \"Bearer <token>\"",
            ));
        }
        Bearer::Absent => {}
    }
    Ok(query
        .get("ticket")
        .map(|ticket| state.auth.verify_url_ticket(ticket)))
}

fn check_origin(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    if origin_allowed(request, &state.settings.server.allowed_origins) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "origin not allowed: add it to server.allowed_origins",
        ))
    }
}

async fn stream(
    request: HttpRequest,
    body: web::Payload,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&request, &state)?;
    let query = query_params(query.into_inner(), &["ticket"])?;
    // The handshake is checked before the credential: redeeming a ticket spends it, so a
    // request that cannot become a WebSocket (a plain GET, a prefetch, a crawler) must be
    // refused while the ticket is still good.
    let response = handshake(&request)?;
    let credential = upgrade_credential(&request, &query, &state)?;
    serve(request, body, &state, response, credential, Dialect::Native)
}

/// The upgrade response, if `request` is a WebSocket upgrade at all.
fn handshake(request: &HttpRequest) -> Result<actix_http::ResponseBuilder, ApiError> {
    actix_http::ws::handshake(request.head()).map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key)",
        )
    })
}

/// An API key pair on the upgrade request (`APCA-API-KEY-ID`/`APCA-API-SECRET-KEY`), which
/// Alpaca's streams accept instead of an auth message.
fn upgrade_api_key(request: &HttpRequest, state: &AppState) -> Option<Result<Identity, AuthError>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let (key, secret) = (
        header(crate::routes::api_keys::KEY_ID_HEADER)?,
        header(crate::routes::api_keys::SECRET_HEADER)?,
    );
    let peer = request.peer_addr().map(|address| address.ip());
    Some(
        state
            .api_keys
            .verify(key, secret, peer)
            .map_err(|_| AuthError::BadApiKey),
    )
}

/// `GET /v2/{iex,sip,test}`: Alpaca's stock data stream. MessagePack unless the upgrade says
/// `Content-Type: application/json`.
async fn alpaca_data_stream(
    request: HttpRequest,
    body: web::Payload,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&request, &state)?;
    query_params(query.into_inner(), &[])?;
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().starts_with("application/json"));
    let encoding = if json {
        Encoding::Json
    } else {
        Encoding::MsgPack
    };
    let response = handshake(&request)?;
    let credential = upgrade_api_key(&request, &state);
    serve(
        request,
        body,
        &state,
        response,
        credential,
        Dialect::AlpacaData(DataDialect { encoding }),
    )
}

/// `GET /stream`: Alpaca's trading stream (trade updates), JSON.
async fn alpaca_trading_stream(
    request: HttpRequest,
    body: web::Payload,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&request, &state)?;
    query_params(query.into_inner(), &[])?;
    let response = handshake(&request)?;
    let credential = upgrade_api_key(&request, &state);
    serve(
        request,
        body,
        &state,
        response,
        credential,
        Dialect::AlpacaTrading(TradingDialect),
    )
}

/// Upgrades and runs one connection in `dialect`.
fn serve(
    request: HttpRequest,
    body: web::Payload,
    state: &AppState,
    response: actix_http::ResponseBuilder,
    credential: Option<Result<Identity, AuthError>>,
    dialect: Dialect,
) -> Result<HttpResponse, ApiError> {
    let ws = &state.settings.ws;
    // Until the session authenticates, a message over the small pre-authentication limit
    // ends the connection; afterwards larger ones are dropped as they stream in, up to the
    // frame limit (see `Connection::run`).
    let preauth = InboundLimits {
        keep: ws.max_preauth_message_bytes,
        hard: ws.max_preauth_message_bytes,
        fragment_timeout: ws.fragment_timeout,
    };
    let inbound = Inbound::new(body.into_inner(), preauth);
    let wire = Wire::new();
    let market_encoding = match dialect {
        Dialect::AlpacaData(DataDialect {
            encoding: Encoding::MsgPack,
        }) => MarketEncoding::MsgPack,
        _ => MarketEncoding::Json,
    };
    let deps = SessionDeps {
        shared: Arc::clone(&state.ws_sessions),
        peer: request.peer_addr().map(|address| address.ip()),
        market_encoding,
    };
    let mut session = WsSession::new(deps);
    let fast = FastPath::new(
        session.market(),
        // A little under the sweep's period, so sweep jitter never skips a ping.
        ws.ping_interval.mul_f64(0.75),
        ws.idle_timeout,
        market_encoding == MarketEncoding::MsgPack,
        state.hub.new_coalescer(),
    );
    state.hub.keep_alive(session.queue());
    state.metrics.connection_opened(Transport::WebSocket);
    let mut connection = Connection::new(
        session,
        inbound,
        dialect,
        Rc::clone(&wire),
        Arc::clone(&state.settings),
        state.shutdown.clone(),
        ClosedGuard(Arc::clone(&state.metrics)),
    );
    connection.start(credential);
    let body = WsBody::new(wire, Some(fast), connection);
    let mut response = response;
    let response = response
        .message_body(body)
        .map_err(|error| ApiError::internal(&error))?;
    Ok(HttpResponse::from(response.map_into_boxed_body()))
}

/// The inbound limits once a session has authenticated: messages over
/// `ws.max_message_bytes` are dropped as they stream in, up to the frame limit.
fn authenticated_limits(settings: &crate::settings::Settings) -> InboundLimits {
    InboundLimits {
        keep: settings.ws.max_message_bytes,
        hard: settings.ws.max_frame_bytes,
        fragment_timeout: settings.ws.fragment_timeout,
    }
}

/// Client messages one connection handles before it lets the worker serve others.
const MESSAGES_PER_TURN: u32 = 16;

/// Counts the connection as closed however it ends: a returned loop, or a body dropped by
/// the dispatcher because the peer went away.
struct ClosedGuard(Arc<crate::metrics::Metrics>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.connection_closed(Transport::WebSocket);
    }
}

/// What a handling or a wait that runs as a future of its own takes along and gives back:
/// the session, and the decoder (a wait on the trading streams reads the socket too).
struct Core {
    session: WsSession,
    inbound: Inbound,
}

/// Boxed work the connection is in the middle of. The future owns the [`Core`] while it
/// runs and hands it back with its result, so nothing borrows the connection across a poll.
enum Pending {
    /// A session action, or the handling of a wake-up; market data waits meanwhile
    /// (`Wire::busy`), so a reply precedes the data it starts.
    Step(Pin<Box<dyn Future<Output = (Core, Vec<Output>)>>>, StepKind),
    /// A wait on the trading streams (their receivers have no poll form), the socket and
    /// shutdown, as one `select`.
    Wait(Pin<Box<dyn Future<Output = (Core, Event)>>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    Wake,
    /// A client message: the inbound limits may rise after it (authentication).
    Message,
}

/// Everything but market data: client frames, trading events, timers, shutdown. Market data
/// and the pings that ride on hub wake-ups are served by the body (`wire::FastPath`).
///
/// The connection's loop, written as a `Future` by hand and held inline in the response
/// body ([`WsBody`]), so an idle connection's whole loop state is this struct (its size is
/// pinned in the tests): no `async` state machine keeping the session, the select's
/// futures and the await slots of every branch side by side. While idle it polls the
/// session ([`WsSession::poll_wait`]), the decoder and the shutdown waiter in place; what
/// takes time (an action, a wake-up's handling, a wait on the trading streams) runs as one
/// boxed future that owns the session while it runs ([`Pending`]).
struct Connection {
    /// `None` only while a [`Pending`] future owns it.
    core: Option<Core>,
    pending: Option<Pending>,
    dialect: Dialect,
    /// Shared with the body: the outbox, when the client was last heard, the busy flag.
    wire: Rc<Wire>,
    /// The settings, for the inbound limits once the session has authenticated (a pointer
    /// rather than the limits themselves).
    settings: Arc<crate::settings::Settings>,
    shutdown: tokio_util::sync::CancellationToken,
    /// The shutdown waiter, registered once for the connection's life (boxed: it cannot
    /// move once polled).
    shutdown_waiter: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// The close to send once the loop ends; the loop ends when this is set.
    /// Boxed: set once, at the end.
    close: Option<Box<(u16, String)>>,
    /// The loop has ended (the close, if any, is in the outbox).
    ended: bool,
    /// Client messages handled since the loop last gave the worker back.
    handled: u32,
    _closed: ClosedGuard,
}

/// What the connection's loop woke up for.
enum Event {
    Wake(session::Wake),
    /// A client message, or `None` once the peer has gone.
    Message(Option<Incoming>),
    Shutdown,
}

impl Connection {
    fn new(
        session: WsSession,
        inbound: Inbound,
        dialect: Dialect,
        wire: Rc<Wire>,
        settings: Arc<crate::settings::Settings>,
        shutdown: tokio_util::sync::CancellationToken,
        closed: ClosedGuard,
    ) -> Connection {
        Connection {
            core: Some(Core { session, inbound }),
            pending: None,
            dialect,
            wire,
            settings,
            shutdown_waiter: Box::pin(shutdown.clone().cancelled_owned()),
            shutdown,
            close: None,
            ended: false,
            handled: 0,
            _closed: closed,
        }
    }

    /// Frames the outputs; returns the close to send if the session ended. No await: the
    /// frames wait in the outbox until the dispatcher takes them, and a peer that stops
    /// reading stops this loop too (see `WsBody`), leaving the hub's bounded queue to decide.
    fn write(&self, outputs: impl IntoIterator<Item = Output>) -> Option<(u16, String)> {
        let mut outbox = self.wire.outbox.borrow_mut();
        for output in outputs {
            match (output, self.dialect) {
                (Output::Frame(text), Dialect::Native) => put_text(&mut outbox, &text),
                (Output::Frame(text), Dialect::AlpacaData(dialect)) => {
                    put_wire_frame(&mut outbox, dialect.outbound(&text));
                }
                (Output::Frame(text), Dialect::AlpacaTrading(dialect)) => {
                    for frame in dialect.outbound(&text) {
                        put_wire_frame(&mut outbox, frame);
                    }
                }
                (Output::Binary(bytes), _) => put_binary(&mut outbox, &bytes),
                (Output::Close { code, reason }, _) => return Some((code, reason)),
            }
        }
        None
    }

    /// A client message, through the dialect: the session's action text, or the reply to a
    /// message the dialect refused.
    fn inbound<'a>(
        &self,
        message: &'a [u8],
        binary: bool,
    ) -> Result<std::borrow::Cow<'a, str>, Vec<Output>> {
        let refused = |code: u32, message: &str| {
            let object = serde_json::json!([{"T": "error", "code": code, "msg": message}]);
            vec![Output::Frame(object.to_string().into())]
        };
        match self.dialect {
            // Text frames are UTF-8 (checked by the wire); binary ones never get here.
            Dialect::Native | Dialect::AlpacaData(_) if !binary => {
                Ok(String::from_utf8_lossy(message))
            }
            Dialect::Native => Err(Vec::new()),
            Dialect::AlpacaData(dialect) => dialect
                .inbound_binary(message)
                .map(std::borrow::Cow::Owned)
                .map_err(|r| refused(r.code, &r.message)),
            Dialect::AlpacaTrading(dialect) => dialect
                .inbound(message)
                .map(std::borrow::Cow::Owned)
                .map_err(|r| {
                    let mut outbox = self.wire.outbox.borrow_mut();
                    put_wire_frame(&mut outbox, dialect.refused(&r));
                    Vec::new()
                }),
        }
    }

    /// Greets the client and applies the upgrade's credential, before the loop first runs,
    /// so the credential is not kept for the connection's life. Sets the close to send if
    /// the session ended already.
    fn start(&mut self, credential: Option<Result<Identity, AuthError>>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let start = core.session.start(credential);
        if core.session.user().is_some() {
            core.inbound
                .set_limits(authenticated_limits(&self.settings));
        }
        self.close = self.write(start).map(Box::new);
    }

    /// Runs `step` as the pending work, owning the core until it is done.
    fn run_step<F>(&mut self, mut core: Core, kind: StepKind, step: F)
    where
        F: for<'s> FnOnce(&'s mut WsSession) -> Pin<Box<dyn Future<Output = Vec<Output>> + 's>>
            + 'static,
    {
        self.wire.busy.set(true);
        let future = async move {
            let outputs = step(&mut core.session).await;
            (core, outputs)
        };
        self.pending = Some(Pending::Step(Box::pin(future), kind));
    }

    /// Acts on an event; the core is back in place (nothing is pending).
    fn handle(&mut self, event: Event) {
        let Some(mut core) = self.core.take() else {
            return;
        };
        let outputs = match event {
            Event::Wake(wake) => {
                return self.run_step(core, StepKind::Wake, move |session| {
                    Box::pin(session.on_wake(wake))
                });
            }
            Event::Message(None) => {
                // The peer has gone: no close frame.
                self.core = Some(core);
                self.ended = true;
                return;
            }
            Event::Message(Some(message)) => {
                self.handled += 1;
                // std's clock: tokio's (built with test-util) costs a runtime lookup.
                self.wire.last_heard.set(Instant::now());
                match message {
                    Incoming::Text(text) => {
                        return self.on_message(core, text.into_bytes(), false);
                    }
                    Incoming::Binary(bytes) => return self.on_message(core, bytes, true),
                    Incoming::Ping(payload) => {
                        put_pong(&mut self.wire.outbox.borrow_mut(), &payload);
                        Vec::new()
                    }
                    Incoming::Pong => Vec::new(),
                    Incoming::Close => {
                        self.close = Some(Box::new((close_codes::NORMAL, "bye".to_owned())));
                        Vec::new()
                    }
                    Incoming::TooLarge(len) => core.session.on_oversize(len),
                    Incoming::Overflow(limit) => core.session.on_frame_overflow(limit),
                    Incoming::FragmentTimeout => core.session.on_fragment_timeout(),
                    Incoming::Invalid(error) => {
                        tracing::debug!(%error, "websocket protocol error");
                        self.close = Some(Box::new((close_codes::PROTOCOL, error)));
                        Vec::new()
                    }
                }
            }
            Event::Shutdown => core.session.on_shutdown(),
        };
        self.core = Some(core);
        if let Some(close) = self.write(outputs) {
            self.close = Some(Box::new(close));
        }
    }

    /// A client text or binary message: synchronous answers at once, an action as a step.
    fn on_message(&mut self, mut core: Core, message: bytes::Bytes, binary: bool) {
        if binary && matches!(self.dialect, Dialect::Native) {
            let outputs = core.session.on_binary();
            self.core = Some(core);
            self.close = self.write(outputs).map(Box::new);
            return;
        }
        match self.inbound(&message, binary) {
            Ok(text) => {
                // Owned by the step; a client message is small and its handling (a parse, an
                // order) costs far more than this copy.
                let text = text.into_owned();
                self.run_step(core, StepKind::Message, move |session| {
                    Box::pin(async move { session.on_text(&text).await })
                });
            }
            // A message the dialect refused still draws from the action budget, so a flood
            // of them gets no reply per message either.
            Err(reply) => {
                let outputs = core.session.over_rate(None).unwrap_or(reply);
                self.core = Some(core);
                self.close = self.write(outputs).map(Box::new);
            }
        }
    }

    /// A step has finished: its outputs go out, and after a client message the inbound
    /// limits become the full ones once the session has authenticated.
    fn finish_step(&mut self, mut core: Core, kind: StepKind, outputs: Vec<Output>) {
        self.wire.busy.set(false);
        if kind == StepKind::Message
            && core.session.user().is_some()
            && core.inbound.limits() != authenticated_limits(&self.settings)
        {
            core.inbound
                .set_limits(authenticated_limits(&self.settings));
        }
        self.core = Some(core);
        self.close = self.write(outputs).map(Box::new);
    }

    /// The next event of an idle connection, polled in place: the session first (the hub's
    /// queue when the loop serves it, then its deadlines), then the socket, then shutdown,
    /// the order the loop always checked them in.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let Some(core) = self.core.as_mut() else {
            return Poll::Pending;
        };
        if let Poll::Ready(wake) = core.session.poll_wait(cx) {
            return Poll::Ready(Event::Wake(wake));
        }
        if let Poll::Ready(message) = core.inbound.poll_recv(cx) {
            return Poll::Ready(Event::Message(message));
        }
        if self.shutdown_waiter.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Shutdown);
        }
        Poll::Pending
    }

    /// A wait that needs futures of its own (a trading stream is open): one boxed `select`
    /// over the session, the socket and shutdown, owning the core until one of them fires.
    fn wait_on_streams(&mut self, mut core: Core) {
        let shutdown = self.shutdown.clone();
        let wait = async move {
            let event = tokio::select! {
                biased;
                wake = core.session.wait() => Event::Wake(wake),
                message = core.inbound.recv() => Event::Message(message),
                () = shutdown.cancelled() => Event::Shutdown,
            };
            (core, event)
        };
        self.pending = Some(Pending::Wait(Box::pin(wait)));
    }

    /// The loop has ended: the session leaves the hub before the close goes out.
    fn end(&mut self) {
        self.ended = true;
        self.pending = None;
        self.core = None;
        if let Some(close) = self.close.take() {
            let (code, reason) = *close;
            put_close(&mut self.wire.outbox.borrow_mut(), code, &reason);
        }
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.ended || (this.close.is_some() && this.pending.is_none()) {
                if this.core.is_some() || this.close.is_some() {
                    this.end();
                }
                return Poll::Ready(());
            }
            match this.pending.as_mut() {
                Some(Pending::Step(step, kind)) => {
                    let kind = *kind;
                    let Poll::Ready((core, outputs)) = step.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.pending = None;
                    this.finish_step(core, kind, outputs);
                    continue;
                }
                Some(Pending::Wait(wait)) => {
                    let Poll::Ready((core, event)) = wait.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.pending = None;
                    this.core = Some(core);
                    this.handle(event);
                    continue;
                }
                None => {}
            }
            // Fairness: a client that keeps its socket full (a flood of small messages) would
            // otherwise keep this loop, and the worker thread it shares with other
            // connections, busy for as long as bytes keep arriving.
            if this.handled >= MESSAGES_PER_TURN {
                this.handled = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(core) = this.core.take_if(|core| core.session.waits_on_streams()) {
                this.wait_on_streams(core);
                continue;
            }
            let Poll::Ready(event) = this.poll_event(cx) else {
                return Poll::Pending;
            };
            this.handle(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{size_of, size_of_val};
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    /// What every idle WebSocket holds besides actix-http's own connection state, pinned so
    /// it does not creep back (issue 17: idle WebSocket memory at or below SSE's). The
    /// response body holds the connection's loop inline and actix boxes the body once, so
    /// the body's size is heap per connection (the session is part of it); the market state
    /// is shared with the body through an `Rc`.
    ///
    /// Budgets, in the test profile: before issue 17 the loop was an `async` future of about
    /// 3,000 bytes; then 1,520 with a 728-byte session; then 1,096 with a 344-byte session,
    /// boxed on its own beside a 184-byte body. Since the loop is a hand-written future
    /// (`Connection`), the session, the decoder and the loop's few fields are all an idle
    /// connection holds, and the body (fast path, waker and the loop inline) is one
    /// allocation. The session's `wait` future is built only while a trading stream is open.
    #[tokio::test]
    async fn an_idle_connection_holds_no_more_state_than_its_budget() {
        let (mut session, _hub) = session::tests::authenticated_session();
        let market = session.market();
        let wait = session.wait();
        let wait_bytes = size_of_val(&wait);
        drop(wait);
        let session_bytes = size_of_val(&session);
        let limits = InboundLimits {
            keep: 1024,
            hard: 4096,
            fragment_timeout: Duration::from_secs(1),
        };
        let metrics = Arc::new(Metrics::default());
        metrics.connection_opened(Transport::WebSocket);
        let wire = Wire::new();
        let connection = Connection::new(
            session,
            Inbound::new(actix_web::dev::Payload::None, limits),
            Dialect::Native,
            Rc::clone(&wire),
            Arc::new(crate::settings::Settings::default()),
            tokio_util::sync::CancellationToken::new(),
            ClosedGuard(metrics),
        );
        let connection_bytes = size_of_val(&connection);
        let fast = FastPath::new(
            market,
            Duration::from_secs(15),
            Duration::from_secs(60),
            false,
            crate::hub::coalesce::Coalescer::new(Duration::from_millis(20)),
        );
        let body = WsBody::new(wire, Some(fast), connection);
        let body_bytes = size_of_val(&body);
        eprintln!(
            "session {session_bytes} B, its wait (trading streams only) {wait_bytes} B, \
             connection loop {connection_bytes} B, body with the loop {body_bytes} B, \
             market state {} B, wire {} B, inbound {} B",
            size_of::<session::MarketState>(),
            size_of::<Wire>(),
            size_of::<Inbound>(),
        );
        assert!(
            session_bytes <= 304,
            "session {session_bytes} B, budget 304"
        );
        assert!(wait_bytes <= 248, "wait {wait_bytes} B, budget 248");
        assert!(
            connection_bytes <= CONNECTION_BUDGET,
            "connection loop {connection_bytes} B, budget {CONNECTION_BUDGET} (the session \
             plus {} B)",
            connection_bytes.saturating_sub(session_bytes)
        );
        assert!(
            body_bytes <= BODY_BUDGET,
            "body {body_bytes} B, budget {BODY_BUDGET}"
        );
        assert!(
            size_of::<session::MarketState>() <= 96,
            "market state {} B, budget 96",
            size_of::<session::MarketState>()
        );
    }

    /// A deadline beyond the session's timer horizon is not armed (no timer while idle); the
    /// keep-alive tick the fast path drains makes the body poll the loop once, which is when
    /// the session arms a deadline that has come within reach.
    #[tokio::test]
    async fn a_keep_alive_tick_polls_the_loop_once_and_nothing_else_does() {
        use actix_web::body::MessageBody;
        use std::cell::Cell;

        let (mut session, _hub) = session::tests::authenticated_session();
        let market = session.market();
        let queue = Arc::clone(session.queue());
        let polls = Rc::new(Cell::new(0u32));
        let counted = Rc::clone(&polls);
        let run = std::future::poll_fn(move |_| {
            counted.set(counted.get() + 1);
            Poll::<()>::Pending
        });
        let fast = FastPath::new(
            market,
            Duration::from_secs(15),
            Duration::from_secs(60),
            false,
            crate::hub::coalesce::Coalescer::new(Duration::from_millis(20)),
        );
        let mut body = WsBody::new(Wire::new(), Some(fast), run);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "the loop runs once at the start");
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "nothing woke the loop");
        queue.push_keepalive();
        // The first poll drains the tick (no ping due yet) and asks for another; that one
        // runs the loop.
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(polls.get(), 2, "the tick polled the loop");
        assert!(Pin::new(&mut body).poll_next(&mut cx).is_pending());
        assert_eq!(polls.get(), 2, "once");
        drop(session);
    }

    const CONNECTION_BUDGET: usize = 528;
    const BODY_BUDGET: usize = 696;
}
