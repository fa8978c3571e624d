//! `GET /v1/stream`: the actix glue of the authenticated WebSocket (PROTOCOL.md §3). It checks
//! `Origin` and reads an upgrade credential (`Authorization: Bearer` or `?ticket=`), then runs
//! one loop per connection that feeds socket frames and session wake-ups into [`WsSession`]
//! and writes what the session returns.
//!
//! actix-ws neither answers pings nor times out silent peers, so this loop does both without a
//! timer of its own: the hub's keep-alive sweep wakes every WebSocket queue once per
//! `ws.ping_interval`, and on a wake-up with a ping due the loop closes a peer that sent
//! nothing (not even a pong) for `ws.idle_timeout`, else pings it. Data wake-ups run the same
//! check, so a busy connection (whose queue the sweep skips) is pinged too.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{StatusCode, header};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Message, ProtocolError};
use futures::{FutureExt, Sink};

use crate::auth::{AuthError, Identity};
use crate::error::{ApiError, codes};
use crate::metrics::Transport;
use crate::server::AppState;
use crate::trading::api::TradingApi;
use crate::transport::params::{Bearer, RawQuery, bearer, query_params};
use crate::transport::ws_session::{
    Output, SessionDeps, SessionLimits, Wake, WsSession, close_codes,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stream", web::get().to(stream));
}

/// The simulated exchange.
fn trading(state: &AppState) -> Option<Arc<dyn TradingApi>> {
    Some(Arc::clone(&state.trading))
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

async fn stream(
    request: HttpRequest,
    body: web::Payload,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !origin_allowed(&request, &state.settings.server.allowed_origins) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::FORBIDDEN,
            "origin not allowed: add it to server.allowed_origins",
        ));
    }
    let query = query_params(query.into_inner(), &["ticket"])?;
    let credential = upgrade_credential(&request, &query, &state)?;
    let (response, socket, messages) = actix_ws::handle(&request, body).map_err(|_| {
        ApiError::bad_request(
            codes::BAD_REQUEST,
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        )
    })?;
    let ws = &state.settings.ws;
    let messages = messages
        .max_frame_size(ws.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(ws.max_frame_bytes);
    let deps = SessionDeps {
        hub: Arc::clone(&state.hub),
        auth: Arc::clone(&state.auth),
        trading: trading(&state),
        metrics: Arc::clone(&state.metrics),
        limits: SessionLimits {
            auth_timeout: ws.auth_timeout,
            max_message_bytes: ws.max_message_bytes,
            actions_per_second: ws.actions_per_second,
            action_burst: ws.action_burst,
            portfolio_interval: std::time::Duration::from_secs_f64(
                1.0 / ws.portfolio_max_per_second,
            ),
            max_symbols: state.settings.market.max_symbols_per_subscription,
            queue_capacity: state.settings.hub.subscriber_queue_capacity,
        },
    };
    let connection = Connection {
        session: WsSession::new(deps),
        socket,
        // A little under the sweep's period, so sweep jitter never skips a ping.
        ping_every: ws.ping_interval.mul_f64(0.75),
        max_frame_bytes: ws.max_frame_bytes,
        idle_timeout: ws.idle_timeout,
        shutdown: state.shutdown.clone(),
        metrics: Arc::clone(&state.metrics),
    };
    state.hub.keep_alive(connection.session.queue());
    state.metrics.connection_opened(Transport::WebSocket);
    actix_web::rt::spawn(connection.run(messages, credential));
    Ok(response)
}

struct Connection {
    session: WsSession,
    socket: actix_ws::Session,
    ping_every: std::time::Duration,
    max_frame_bytes: usize,
    idle_timeout: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
}

fn close_reason(code: u16, reason: &str) -> CloseReason {
    let code = match code {
        close_codes::NORMAL => CloseCode::Normal,
        close_codes::GOING_AWAY => CloseCode::Away,
        close_codes::POLICY => CloseCode::Policy,
        close_codes::TOO_BIG => CloseCode::Size,
        close_codes::RESTART => CloseCode::Restart,
        other => CloseCode::Other(other),
    };
    CloseReason {
        code,
        description: Some(reason.to_owned()),
    }
}

impl Connection {
    /// Queues one message on the socket. actix-ws forwards frames through a bounded channel,
    /// so the send is immediate unless the peer stopped reading and the channel filled; only
    /// then is a deadline armed (the idle timeout), so the hot path sets no timer per frame.
    /// The hub's bounded subscriber queue caps memory meanwhile (slow-client policy).
    async fn send(&mut self, message: Message) -> Result<(), ()> {
        let ready = match std::future::poll_fn(|cx| Pin::new(&mut self.socket).poll_ready(cx))
            .now_or_never()
        {
            Some(ready) => ready,
            None => {
                let wait = std::future::poll_fn(|cx| Pin::new(&mut self.socket).poll_ready(cx));
                match tokio::time::timeout(self.idle_timeout, wait).await {
                    Ok(ready) => ready,
                    Err(_) => {
                        tracing::debug!("websocket peer stopped reading; closing");
                        return Err(());
                    }
                }
            }
        };
        ready.map_err(|_| ())?;
        Pin::new(&mut self.socket)
            .start_send(message)
            .map_err(|_| ())
    }

    /// Writes outputs; returns the close to send if the session ended.
    async fn write(&mut self, outputs: Vec<Output>) -> Result<Option<CloseReason>, ()> {
        for output in outputs {
            match output {
                Output::Frame(text) => self.send(Message::Text(text)).await?,
                Output::Close { code, reason } => return Ok(Some(close_reason(code, &reason))),
            }
        }
        Ok(None)
    }

    async fn run(
        mut self,
        mut messages: actix_ws::AggregatedMessageStream,
        credential: Option<Result<Identity, AuthError>>,
    ) {
        let start = self.session.start(credential);
        let mut close = match self.write(start).await {
            Ok(close) => close,
            // `finish` is boxed (it runs once): inline, its state (a second copy of the
            // connection) would enlarge every connection's task by about 1 KB.
            Err(()) => return Box::pin(self.finish(None)).await,
        };
        // std's clock: tokio's (built with test-util) costs a runtime lookup per read, and
        // this one is read on every wake-up.
        let mut last_heard = Instant::now();
        let mut last_ping = last_heard;
        // One shutdown waiter for the connection's life, not one registered and dropped per
        // wake-up.
        let shutdown = self.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        while close.is_none() {
            let outputs = tokio::select! {
                message = messages.recv() => {
                    let Some(message) = message else { break };
                    last_heard = Instant::now();
                    match message {
                        Ok(AggregatedMessage::Text(text)) => self.session.on_text(&text).await,
                        Ok(AggregatedMessage::Binary(_)) => self.session.on_binary(),
                        Ok(AggregatedMessage::Ping(payload)) => {
                            if self.send(Message::Pong(payload)).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Ok(AggregatedMessage::Pong(_)) => continue,
                        Ok(AggregatedMessage::Close(_)) => {
                            close = Some(close_reason(close_codes::NORMAL, "bye"));
                            break;
                        }
                        Err(ProtocolError::Overflow) => {
                            // The rest of an oversize frame cannot be skipped reliably, so
                            // this one limit ends the connection (smaller ones do not).
                            self.session.on_frame_overflow(self.max_frame_bytes)
                        }
                        Err(error) => {
                            tracing::debug!(error = %error, "websocket protocol error");
                            break;
                        }
                    }
                }
                wake = self.session.wait() => {
                    if matches!(wake, Wake::Hub) {
                        let now = Instant::now();
                        if now.duration_since(last_ping) >= self.ping_every {
                            if now.duration_since(last_heard) > self.idle_timeout {
                                close = Some(close_reason(close_codes::GOING_AWAY, "idle timeout"));
                                break;
                            }
                            if self.send(Message::Ping(Bytes::from_static(b"tickgate"))).await.is_err() {
                                break;
                            }
                            last_ping = now;
                        }
                    }
                    self.session.on_wake(wake).await
                }
                _ = &mut shutdown => self.session.on_shutdown(),
            };
            match self.write(outputs).await {
                Ok(next) => close = next,
                Err(()) => break,
            }
        }
        Box::pin(self.finish(close)).await;
    }

    async fn finish(self, close: Option<CloseReason>) {
        let Connection {
            session,
            socket,
            metrics,
            ..
        } = self;
        drop(session);
        let _ = socket.close(close).await;
        metrics.connection_closed(Transport::WebSocket);
    }
}
