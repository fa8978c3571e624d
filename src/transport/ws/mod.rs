//! `GET /v1/stream`: the actix glue of the authenticated WebSocket (docs/websocket.md), and
//! Alpaca's streams on the same session (`GET /v2/{iex,sip,test}` and `GET /stream`, with a
//! dialect from `transport::alpaca` in front; docs/alpaca.md). It checks
//! `Origin` and reads an upgrade credential (`Authorization: Bearer` or `?ticket=`), then runs
//! one loop per connection that feeds socket frames and session wake-ups into [`WsSession`]
//! (`session`, socket-free and clock-free) and writes what the session returns. The loop
//! (`connection`, a hand-written future) runs inside the connection's body
//! ([`wire::WsBody`]), not in a task of its own, and the body serves market data itself
//! ([`wire::FastPath`]).
//!
//! Upgrades do not run as actix-web responses: actix-http hands every request asking for
//! `Upgrade: websocket` to [`upgrade::UpgradeFactory`]'s service with the socket, which runs
//! the request through the application (these routes, so every check and error response is
//! the same) and, when a route here answers 101, takes the socket over (`upgrade::Driver`):
//! no request payload channel, no HTTP/1 dispatcher buffers for the life of the connection.
//! Only this module, `upgrade` and `wire` know about actix.
//!
//! Pings and the idle timeout need no timer of their own: the hub's keep-alive sweep pushes a
//! tick into every WebSocket queue once per `ws.ping_interval`, busy or not, and when the
//! fast path drains one with a ping due it closes a peer that sent nothing (not even a pong)
//! for `ws.idle_timeout`, else pings it. Data deliveries do not read the clock.
//!
//! Invariants kept here: a browser origin not in `server.allowed_origins` (nor the gateway's
//! own) is refused before the upgrade; while the loop is inside an action, market data waits
//! (`Wire::busy`), so a reply precedes the data it starts, except during an order, cancel or
//! replace, which starts no market data and may wait a failover's seconds for the exchange
//! (its trade updates still follow its `order_ack`); the session leaves the hub before
//! the close frame goes out; the connection gauge falls however the connection ends.

mod connection;
pub mod session;
mod upgrade;
pub mod wire;

pub use upgrade::UpgradeFactory;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::auth::{AuthError, Identity};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Transport;
use crate::routes::params::{Bearer, RawQuery, bearer, query_params};
use crate::state::AppState;
use crate::transport::alpaca::stream::{DataDialect, Encoding, TradingDialect, WireFrame};
use connection::{ClosedGuard, Connection};
use session::{MarketEncoding, SessionDeps, WsSession};
use wire::{FastPath, Inbound, InboundLimits, Wire, WsBody, put_binary, put_text};

fn put_wire_frame(outbox: &mut bytes::BytesMut, frame: WireFrame) {
    match frame {
        WireFrame::Text(text) => put_text(outbox, &text),
        WireFrame::Binary(bytes) => put_binary(outbox, &bytes),
    }
}

/// tickgate's own stream.
const NATIVE_PATH: &str = "/v1/stream";
/// Alpaca's trading stream.
const ALPACA_TRADING_PATH: &str = "/stream";
/// Every stock feed name Alpaca has: all serve the same tickgate market.
const ALPACA_DATA_PATHS: [&str; 3] = ["/v2/iex", "/v2/sip", "/v2/test"];

/// Whether `path` is one of the WebSocket routes (the only paths an upgrade is served at).
fn is_stream_path(path: &str) -> bool {
    path == NATIVE_PATH || path == ALPACA_TRADING_PATH || ALPACA_DATA_PATHS.contains(&path)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(NATIVE_PATH, web::get().to(stream))
        .route(ALPACA_TRADING_PATH, web::get().to(alpaca_trading_stream));
    for path in ALPACA_DATA_PATHS {
        cfg.route(path, web::get().to(alpaca_data_stream));
    }
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
    serve(&request, &state, response, credential, Dialect::Native)
}

/// The upgrade response, if `request` is a WebSocket upgrade at all. A request that did not
/// come through the upgrade hook (a plain GET, or one actix-http read as a request with a
/// body, e.g. a chunked one) has no socket to take over and is refused the same way.
fn handshake(request: &HttpRequest) -> Result<actix_http::ResponseBuilder, ApiError> {
    let refused = || {
        ApiError::new(
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key)",
        )
    };
    if !request.extensions().contains::<upgrade::ThroughHook>() {
        return Err(refused());
    }
    actix_http::ws::handshake(request.head()).map_err(|_| refused())
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
        &request,
        &state,
        response,
        credential,
        Dialect::AlpacaData(DataDialect { encoding }),
    )
}

/// `GET /stream`: Alpaca's trading stream (trade updates), JSON.
async fn alpaca_trading_stream(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&request, &state)?;
    query_params(query.into_inner(), &[])?;
    let response = handshake(&request)?;
    let credential = upgrade_api_key(&request, &state);
    serve(
        &request,
        &state,
        response,
        credential,
        Dialect::AlpacaTrading(TradingDialect),
    )
}

/// Prepares one connection in `dialect`: the 101 response carries it (a response extension,
/// [`upgrade::Upgraded`]) to the upgrade service, which writes the response and runs it on
/// the socket.
fn serve(
    request: &HttpRequest,
    state: &AppState,
    response: actix_http::ResponseBuilder,
    credential: Option<Result<Identity, AuthError>>,
    dialect: Dialect,
) -> Result<HttpResponse, ApiError> {
    let ws = &state.settings.ws;
    // Until the session authenticates, a message over the small pre-authentication limit
    // ends the connection; afterwards larger ones are dropped as they stream in, up to the
    // frame limit (see `connection::authenticated_limits`).
    let preauth = InboundLimits {
        keep: ws.max_preauth_message_bytes,
        hard: ws.max_preauth_message_bytes,
        fragment_timeout: ws.fragment_timeout,
    };
    let inbound = Inbound::new(wire::Source::Detached, preauth);
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
        Arc::clone(&state.settings),
        state.shutdown.clone(),
        ClosedGuard(Arc::clone(&state.metrics)),
    );
    connection.start(&wire, credential);
    let body = WsBody::new(wire, Some(fast), connection);
    let mut response = response;
    let mut response = HttpResponse::from(response.finish().map_into_boxed_body());
    response
        .extensions_mut()
        .insert(upgrade::Upgraded(Box::new(body)));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::mem::{size_of, size_of_val};
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    /// What every idle WebSocket holds besides its task and socket, pinned so it does not
    /// creep back (issue 17: idle WebSocket memory at or below SSE's). The body holds the
    /// connection's loop inline and is boxed once, so the body's size is heap per connection
    /// (the session is part of it); the market state is shared with the body through an `Rc`.
    ///
    /// Budgets, in the test profile: before issue 17 the loop was an `async` future of about
    /// 3,000 bytes; then 1,520 with a 728-byte session; then 1,096 with a 344-byte session,
    /// boxed on its own beside a 184-byte body. Since the loop is a hand-written future
    /// (`Connection`), the session, the decoder and the loop's few fields are all an idle
    /// connection holds, and the body (fast path, waker and the loop inline) is one
    /// allocation. The session's `wait` future is built only while a trading stream is open.
    /// Fourth pass: session 304 → 248 (the action bucket keeps only what changes; the auth
    /// state names the user through its connection slot instead of a second copy), loop
    /// 528 → 424 (the decoder's fragment state boxed while a fragmented message is open, no
    /// shutdown waiter, no wire pointer), body 696 → 648 with the wire (64 B) inline instead
    /// of behind its own `Rc`.
    /// Fifth pass: the connection owns its socket (actix-http's upgrade hook, `upgrade.rs`).
    /// The decoder reads the socket itself, so the request payload channel actix-http kept
    /// per connection (248 B in two blocks) is gone; the decoder's source is one pointer
    /// (112 → 96 B), the loop 424 → 408 B, the body 648 → 632 B. The body is boxed once,
    /// by the route, and moved into the driver, which the dispatcher holds inline in place
    /// of its own state: so the driver must stay small (it sizes every connection's task,
    /// SSE's too).
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
            Inbound::new(wire::Source::Detached, limits),
            Dialect::Native,
            Arc::new(crate::settings::Settings::default()),
            tokio_util::sync::CancellationToken::new(),
            ClosedGuard(metrics),
        );
        // Unit tests feed the decoder through a test-only source (`Source::Chunks`), which
        // makes it larger than in the server, where the source is one pointer.
        let test_only =
            size_of::<wire::Source>() - size_of::<Option<std::rc::Rc<tokio::net::TcpStream>>>();
        let connection_bytes = size_of_val(&connection) - test_only;
        let fast = FastPath::new(
            market,
            Duration::from_secs(15),
            Duration::from_secs(60),
            false,
            crate::hub::coalesce::Coalescer::new(Duration::from_millis(20)),
        );
        let body = WsBody::new(wire, Some(fast), connection);
        let body_bytes = size_of_val(&body) - test_only;
        let upgrade_bytes = size_of::<upgrade::UpgradeFuture>();
        eprintln!(
            "session {session_bytes} B, its wait (trading streams only) {wait_bytes} B, \
             connection loop {connection_bytes} B, body with the loop {body_bytes} B, \
             market state {} B, wire {} B, inbound {} B, the upgrade as the dispatcher \
             holds it {upgrade_bytes} B",
            size_of::<session::MarketState>(),
            size_of::<Wire>(),
            size_of::<Inbound>() - test_only,
        );
        assert!(
            session_bytes <= 248,
            "session {session_bytes} B, budget 248"
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
            upgrade_bytes <= UPGRADE_BUDGET,
            "upgrade future {upgrade_bytes} B, budget {UPGRADE_BUDGET}"
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
        /// A loop that counts its polls and never ends.
        struct Counted(Rc<Cell<u32>>);
        impl wire::ConnectionLoop for Counted {
            fn poll_loop(&mut self, _: &mut Context<'_>, _: &Wire) -> Poll<()> {
                self.0.set(self.0.get() + 1);
                Poll::Pending
            }
        }
        let run = Counted(Rc::clone(&polls));
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

    const CONNECTION_BUDGET: usize = 408;
    const BODY_BUDGET: usize = 632;
    /// What the dispatcher holds inline for an upgraded connection: the driver (socket
    /// handle, boxed body, unsent chunk, linger timer). Its own state is 560 bytes (debug
    /// build, 2026-12-06), so this adds nothing to a connection's task while it stays below.
    const UPGRADE_BUDGET: usize = 64;
}
