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
    let authenticated = InboundLimits {
        keep: ws.max_message_bytes,
        hard: ws.max_frame_bytes,
        fragment_timeout: ws.fragment_timeout,
    };
    let mut inbound = Inbound::new(body.into_inner(), preauth);
    let wire = Wire::new();
    let market_encoding = match dialect {
        Dialect::AlpacaData(DataDialect {
            encoding: Encoding::MsgPack,
        }) => MarketEncoding::MsgPack,
        _ => MarketEncoding::Json,
    };
    let deps = SessionDeps {
        hub: Arc::clone(&state.hub),
        auth: Arc::clone(&state.auth),
        api_keys: Arc::clone(&state.api_keys),
        peer: request.peer_addr().map(|address| address.ip()),
        market_encoding,
        trading: Arc::clone(&state.trading),
        metrics: Arc::clone(&state.metrics),
        limits: Arc::clone(&state.ws_session_limits),
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
    let mut connection = Connection {
        session,
        dialect,
        wire: Rc::clone(&wire),
        authenticated_limits: authenticated,
        shutdown: state.shutdown.clone(),
        _closed: ClosedGuard(Arc::clone(&state.metrics)),
    };
    let close = connection.start(&mut inbound, credential);
    // The loop's future itself, not wrapped in an `async move` block: a wrapper would keep
    // its own copy of everything it moves into the loop (about 1 KB per connection).
    let body = WsBody::new(wire, Some(fast), connection.run(inbound, close));
    let mut response = response;
    let response = response
        .message_body(body)
        .map_err(|error| ApiError::internal(&error))?;
    Ok(HttpResponse::from(response.map_into_boxed_body()))
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

/// Everything but market data: client frames, trading events, timers, shutdown. Market data
/// and the pings that ride on hub wake-ups are served by the body (`wire::FastPath`).
struct Connection {
    session: WsSession,
    dialect: Dialect,
    /// Shared with the body: the outbox, when the client was last heard, the busy flag.
    wire: Rc<Wire>,
    /// The inbound limits once the session has authenticated.
    authenticated_limits: InboundLimits,
    shutdown: tokio_util::sync::CancellationToken,
    _closed: ClosedGuard,
}

impl Connection {
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

    async fn on_message(&mut self, message: bytes::Bytes, binary: bool) -> Vec<Output> {
        if binary && matches!(self.dialect, Dialect::Native) {
            return self.session.on_binary();
        }
        match self.inbound(&message, binary) {
            Ok(text) => {
                self.wire.busy.set(true);
                let outputs = Box::pin(self.session.on_text(&text)).await;
                self.wire.busy.set(false);
                outputs
            }
            // A message the dialect refused still draws from the action budget, so a flood
            // of them gets no reply per message either.
            Err(reply) => self.session.over_rate(None).unwrap_or(reply),
        }
    }

    /// Once the session has authenticated, the inbound limits become the full ones.
    fn raise_limits(&self, inbound: &mut Inbound) {
        if self.session.user().is_some() && inbound.limits() != self.authenticated_limits {
            inbound.set_limits(self.authenticated_limits);
        }
    }

    /// Greets the client and applies the upgrade's credential. Synchronous, and called
    /// before the loop's future is built, so the credential is not kept in that future for
    /// the connection's life. Returns the close to send if the session ended already.
    fn start(
        &mut self,
        inbound: &mut Inbound,
        credential: Option<Result<Identity, AuthError>>,
    ) -> Option<(u16, String)> {
        let start = self.session.start(credential);
        let close = self.write(start);
        if self.session.user().is_some() {
            inbound.set_limits(self.authenticated_limits);
        }
        close
    }

    /// The connection's loop. Its future is what every connection holds while idle (boxed
    /// in the response body), so its state is kept small (the size is pinned in the tests):
    /// - an `async move` block in a plain function, not an `async fn`: an `async fn` moves
    ///   its arguments from the future's captured state into locals of its own, and both
    ///   stay in the state, so the connection and its inbound decoder would be held twice
    ///   (rust-lang/rust#62958; 900 bytes per connection here);
    /// - the select only says what happened and is over before anything is handled, so the
    ///   waiting futures and the handling's own await state share bytes instead of adding up.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice in the future (see above)"
    )]
    fn run(
        mut self,
        mut inbound: Inbound,
        mut close: Option<(u16, String)>,
    ) -> impl Future<Output = ()> + 'static {
        async move {
            // Client messages handled since the loop last gave the worker back.
            let mut handled = 0u32;
            // One shutdown waiter for the connection's life, not one registered and dropped per
            // wake-up.
            let shutdown = self.shutdown.clone().cancelled_owned();
            tokio::pin!(shutdown);
            while close.is_none() {
                // Fairness: a client that keeps its socket full (a flood of small messages) would
                // otherwise keep this loop, and the worker thread it shares with other
                // connections, busy for as long as bytes keep arriving.
                if handled >= MESSAGES_PER_TURN {
                    handled = 0;
                    tokio::task::yield_now().await;
                }
                let event = tokio::select! {
                    biased;
                    wake = self.session.wait() => Event::Wake(wake),
                    message = inbound.recv() => Event::Message(message),
                    _ = &mut shutdown => Event::Shutdown,
                };
                // The event is consumed here, before anything is awaited: a value matched on
                // stays in the future's state across every await inside its match arms, and
                // would so sit in every idle connection's loop too. What takes time runs as
                // one boxed future, awaited after the match.
                let step = match event {
                    Event::Wake(wake) => {
                        self.wire.busy.set(true);
                        Step::Wake(Box::pin(self.session.on_wake(wake)))
                    }
                    Event::Message(None) => break,
                    Event::Message(Some(message)) => {
                        handled += 1;
                        // std's clock: tokio's (built with test-util) costs a runtime lookup.
                        self.wire.last_heard.set(Instant::now());
                        match message {
                            // Boxed, like `on_wake` above: the order path's await state is large
                            // and would otherwise sit in every idle connection's loop. Market data
                            // waits meanwhile (`busy`), so replies precede the data they start.
                            Incoming::Text(text) => {
                                Step::Message(Box::pin(self.on_message(text.into_bytes(), false)))
                            }
                            Incoming::Binary(bytes) => {
                                Step::Message(Box::pin(self.on_message(bytes, true)))
                            }
                            Incoming::Ping(payload) => {
                                put_pong(&mut self.wire.outbox.borrow_mut(), &payload);
                                continue;
                            }
                            Incoming::Pong => continue,
                            Incoming::Close => {
                                close = Some((close_codes::NORMAL, "bye".to_owned()));
                                break;
                            }
                            Incoming::TooLarge(len) => Step::Done(self.session.on_oversize(len)),
                            Incoming::Overflow(limit) => {
                                Step::Done(self.session.on_frame_overflow(limit))
                            }
                            Incoming::FragmentTimeout => {
                                Step::Done(self.session.on_fragment_timeout())
                            }
                            Incoming::Invalid(error) => {
                                tracing::debug!(%error, "websocket protocol error");
                                close = Some((close_codes::PROTOCOL, error));
                                break;
                            }
                        }
                    }
                    Event::Shutdown => Step::Done(self.session.on_shutdown()),
                };
                let (woken, message) = (
                    matches!(step, Step::Wake(_)),
                    matches!(step, Step::Message(_)),
                );
                // Consumed by the call, so the session's borrow ends with the await.
                let outputs = step.outputs().await;
                if woken {
                    self.wire.busy.set(false);
                }
                if message {
                    self.raise_limits(&mut inbound);
                }
                close = self.write(outputs);
            }
            // The session leaves the hub before the close goes out.
            let Connection { session, wire, .. } = self;
            drop(session);
            if let Some((code, reason)) = close {
                put_close(&mut wire.outbox.borrow_mut(), code, &reason);
            }
        }
    }
}

/// What the loop does with an event: outputs ready at once, or a boxed handling to await.
enum Step<'a> {
    Done(Vec<Output>),
    /// A session wake-up (market data waits meanwhile: `Wire::busy`).
    Wake(Pin<Box<dyn Future<Output = Vec<Output>> + 'a>>),
    /// A client message; the inbound limits may rise after it (authentication).
    Message(Pin<Box<dyn Future<Output = Vec<Output>> + 'a>>),
}

impl Step<'_> {
    async fn outputs(self) -> Vec<Output> {
        match self {
            Step::Done(outputs) => outputs,
            Step::Wake(handling) | Step::Message(handling) => handling.await,
        }
    }
}

/// What the connection's loop woke up for.
enum Event {
    Wake(session::Wake),
    /// A client message, or `None` once the peer has gone.
    Message(Option<Incoming>),
    Shutdown,
}

#[cfg(test)]
mod tests {
    use std::mem::{size_of, size_of_val};
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    /// What every idle WebSocket holds besides actix-http's own connection state, pinned so
    /// it does not creep back (issue 17: idle WebSocket memory at or below SSE's). The loop's
    /// future is boxed once in the response body, so its size is heap per connection (the
    /// session is part of it); the market state is shared with the body through an `Rc`.
    ///
    /// Budgets, in the test profile: before issue 17 the loop was about 3,000 bytes (a
    /// 720-byte `wait` with three sleeps and three receivers' futures, and the connection
    /// held twice by the `async fn`); then 1,520 with a 728-byte session and a 240-byte
    /// wait; now 1,096 with a 344-byte session (trading and book streams boxed on first use,
    /// limits shared, the market-data symbol sets shared with the 96-byte market state
    /// instead of copied into it, and the loop's event consumed before its handling is
    /// awaited). The body is the loop's box pointer, the fast path (with
    /// its coalescer) and the loop's waker.
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
        let connection = Connection {
            session,
            dialect: Dialect::Native,
            wire: Rc::clone(&wire),
            authenticated_limits: limits,
            shutdown: tokio_util::sync::CancellationToken::new(),
            _closed: ClosedGuard(metrics),
        };
        let run = connection.run(Inbound::new(actix_web::dev::Payload::None, limits), None);
        let run_bytes = size_of_val(&run);
        let fast = FastPath::new(
            market,
            Duration::from_secs(15),
            Duration::from_secs(60),
            false,
            crate::hub::coalesce::Coalescer::new(Duration::from_millis(20)),
        );
        let body = WsBody::new(wire, Some(fast), run);
        let body_bytes = size_of_val(&body);
        eprintln!(
            "session {session_bytes} B, its wait {wait_bytes} B, connection loop {run_bytes} B, \
             body {body_bytes} B, market state {} B, wire {} B, inbound {} B",
            size_of::<session::MarketState>(),
            size_of::<Wire>(),
            size_of::<Inbound>(),
        );
        assert!(
            session_bytes <= 344,
            "session {session_bytes} B, budget 344"
        );
        assert!(wait_bytes <= 240, "wait {wait_bytes} B, budget 240");
        assert!(
            run_bytes <= 1_096,
            "connection loop {run_bytes} B, budget 1,096 (the session plus {} B)",
            run_bytes.saturating_sub(session_bytes)
        );
        // 128 B before the coalescing window; its state (`Coalescer`) lives in the fast path.
        assert!(body_bytes <= 184, "body {body_bytes} B, budget 184");
        assert!(
            size_of::<session::MarketState>() <= 96,
            "market state {} B, budget 96",
            size_of::<session::MarketState>()
        );
    }
}
