//! Public Server-Sent Events feeds (PROTOCOL.md §2): `/v1/stream/market`, `/v1/stream/news`
//! and `/v1/stream/alerts`.
//!
//! A connection is a [`SubscriberQueue`] plus a stream that drains it. Everything queued since
//! the last write goes out as one chunk; a lone event is written as the shared frame itself
//! (no copy). The connection owns no timer: heartbeats come from the hub's shared sweep.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ApiError, codes};
use crate::hub::{
    CloseReason, Cursor, Delivery, Entry, Feed, Filter, Subscribed, SubscriberQueue, SymbolFilter,
};
use crate::market::{EventKind, SymbolUniverse};
use crate::metrics::{Metrics, Transport};
use crate::server::AppState;

const HEARTBEAT_FRAME: &[u8] = b": hb\n\n";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stream/market", web::get().to(market_stream))
        .route("/v1/stream/news", web::get().to(news_stream))
        .route("/v1/stream/alerts", web::get().to(alerts_stream));
}

use crate::transport::params::{RawQuery, echo, query_params};

/// Parses `symbols=AAPL,MSFT` (or `*`). `required` makes an absent list an error.
pub fn parse_symbols(
    raw: Option<&str>,
    universe: &SymbolUniverse,
    max_symbols: usize,
    required: bool,
) -> Result<SymbolFilter, ApiError> {
    let Some(raw) = raw else {
        return if required {
            Err(ApiError::bad_request(
                codes::INVALID_PARAMETER,
                "symbols is required (a comma-separated list, or * for all)",
            ))
        } else {
            Ok(SymbolFilter::All)
        };
    };
    let mut names: Vec<String> = Vec::new();
    for name in raw
        .split(',')
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
    {
        // `AAPL,aapl` is one symbol, counted once against the limit.
        if !names.contains(&name) {
            names.push(name);
        }
        if names.len() > max_symbols {
            break;
        }
    }
    if names.is_empty() {
        return Err(ApiError::bad_request(
            codes::INVALID_PARAMETER,
            "symbols must name at least one symbol, or * for all",
        ));
    }
    if names.iter().any(|s| s == "*") {
        return Ok(SymbolFilter::All);
    }
    if names.len() > max_symbols {
        return Err(ApiError::bad_request(
            codes::TOO_MANY_SYMBOLS,
            format!("too many symbols: at most {max_symbols} per subscription"),
        ));
    }
    let mut ids = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in &names {
        match universe.id(name) {
            Some(id) => ids.push(id),
            None => unknown.push(name.as_str()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(
            codes::UNKNOWN_SYMBOL,
            format!(
                "unknown symbol(s): {}{}",
                unknown
                    .iter()
                    .take(10)
                    .map(|s| echo(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                if unknown.len() > 10 {
                    format!(" and {} more", unknown.len() - 10)
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(SymbolFilter::from_ids(ids))
}

/// Parses `types=trades,quotes,bars` into a kind mask (all market kinds when absent).
pub fn parse_types(raw: Option<&str>) -> Result<u8, ApiError> {
    let market_kinds = [EventKind::Trade, EventKind::Quote, EventKind::Bar];
    let Some(raw) = raw else {
        return Ok(market_kinds.iter().fold(0, |m, k| m | k.bit()));
    };
    let mut mask = 0u8;
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "*" {
            return Ok(market_kinds.iter().fold(0, |m, k| m | k.bit()));
        }
        match EventKind::from_plural(name) {
            Some(
                kind @ (EventKind::Trade | EventKind::Quote | EventKind::Bar | EventKind::Status),
            ) => mask |= kind.bit(),
            _ => {
                return Err(ApiError::bad_request(
                    codes::UNKNOWN_TYPE,
                    format!("unknown type {name:?}; use trades, quotes, bars, statuses or *"),
                ));
            }
        }
    }
    if mask == 0 {
        return Err(ApiError::bad_request(
            codes::UNKNOWN_TYPE,
            "types must name at least one of trades, quotes, bars, statuses",
        ));
    }
    Ok(mask)
}

/// The resume cursor: the `Last-Event-ID` header wins over `?last_event_id=`. A cursor that
/// does not parse is treated as foreign, which yields an explicit reset rather than an error
/// (a browser would retry a 4xx forever with the same header).
fn resume_cursor(request: &HttpRequest, query: &HashMap<String, String>) -> Option<Cursor> {
    let header = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = header.or_else(|| query.get("last_event_id").cloned())?;
    if raw.trim().is_empty() {
        return None;
    }
    Some(raw.parse().unwrap_or(Cursor { epoch: 0, seq: 0 }))
}

async fn market_stream(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_params(query.into_inner(), &["symbols", "types", "last_event_id"])?;
    let symbols = parse_symbols(
        query.get("symbols").map(String::as_str),
        state.universe(),
        state.settings.market.max_symbols_per_subscription,
        true,
    )?;
    let kinds = parse_types(query.get("types").map(String::as_str))?;
    let filter = Filter { symbols, kinds };
    Ok(open_stream(&request, &query, &state, Feed::Market, filter))
}

async fn news_stream(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_params(query.into_inner(), &["symbols", "last_event_id"])?;
    let symbols = parse_symbols(
        query.get("symbols").map(String::as_str),
        state.universe(),
        state.settings.market.max_symbols_per_subscription,
        false,
    )?;
    let filter = Filter {
        symbols,
        kinds: EventKind::News.bit(),
    };
    Ok(open_stream(&request, &query, &state, Feed::News, filter))
}

async fn alerts_stream(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query_params(query.into_inner(), &["last_event_id"])?;
    let filter = Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Alert.bit(),
    };
    Ok(open_stream(&request, &query, &state, Feed::Alerts, filter))
}

fn open_stream(
    request: &HttpRequest,
    query: &HashMap<String, String>,
    state: &AppState,
    feed: Feed,
    filter: Filter,
) -> HttpResponse {
    let resume = resume_cursor(request, query);
    let queue = SubscriberQueue::new(state.settings.hub.subscriber_queue_capacity, Transport::Sse);
    let subscribed = state
        .hub
        .subscribe(feed, filter, resume, feed == Feed::Market, &queue);
    let initial = initial_bytes(
        feed,
        &subscribed,
        state.settings.hub.sse_retry.as_millis() as u64,
    );
    state.metrics.delivered(
        Transport::Sse,
        subscribed.replay.len() as u64 + u64::from(subscribed.snapshot.is_some()),
    );
    state.metrics.connection_opened(Transport::Sse);
    let connection = SseConnection {
        queue,
        spare: VecDeque::new(),
        initial: Some(initial),
        finished: false,
        metrics: Arc::clone(&state.metrics),
    };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .body(connection)
}

/// `retry:`, then either the snapshot (fresh connect or reset) or the replay.
fn initial_bytes(feed: Feed, subscribed: &Subscribed, retry_ms: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    out.put_slice(format!("retry: {retry_ms}\n\n").as_bytes());
    if let Some(snapshot) = &subscribed.snapshot {
        out.put_slice(&snapshot_frame(feed, subscribed, snapshot));
    }
    for entry in &subscribed.replay {
        out.put_slice(&entry.sse);
    }
    out.freeze()
}

/// `event: snapshot` with `data: {"reset":..,"cursor":..,"trades":[..],"quotes":[..],...}`,
/// carrying the feed's current cursor as its id so a reconnect resumes after it.
fn snapshot_frame(feed: Feed, subscribed: &Subscribed, entries: &[Arc<Entry>]) -> Vec<u8> {
    let groups: &[(&str, EventKind)] = match feed {
        Feed::Market => &[
            ("trades", EventKind::Trade),
            ("quotes", EventKind::Quote),
            ("bars", EventKind::Bar),
        ],
        Feed::News => &[("news", EventKind::News)],
        Feed::Alerts => &[("alerts", EventKind::Alert)],
    };
    let mut data =
        Vec::with_capacity(256 + entries.iter().map(|e| e.json.len() + 1).sum::<usize>());
    data.extend_from_slice(b"{\"reset\":");
    data.extend_from_slice(if subscribed.reset.is_some() {
        b"true"
    } else {
        b"false"
    });
    if let Some(reason) = subscribed.reset {
        data.extend_from_slice(b",\"reason\":");
        data.extend_from_slice(
            serde_json::to_string(reason.message())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    data.extend_from_slice(format!(",\"cursor\":\"{}\"", subscribed.cursor).as_bytes());
    for (name, kind) in groups {
        data.extend_from_slice(format!(",\"{name}\":[").as_bytes());
        let mut first = true;
        for entry in entries.iter().filter(|e| e.kind == *kind) {
            if !first {
                data.push(b',');
            }
            first = false;
            data.extend_from_slice(&entry.json);
        }
        data.push(b']');
    }
    data.push(b'}');
    let mut frame = Vec::with_capacity(data.len() + 64);
    frame.extend_from_slice(
        format!("id: {}\nevent: snapshot\ndata: ", subscribed.cursor).as_bytes(),
    );
    frame.extend_from_slice(&data);
    frame.extend_from_slice(b"\n\n");
    frame
}

/// The final message for a queue the hub closed.
pub fn close_frame(reason: CloseReason) -> Bytes {
    match reason {
        CloseReason::SlowClient => Bytes::from_static(
            b"event: error\ndata: {\"T\":\"error\",\"code\":407,\"msg\":\"slow client: could not keep up; reconnect to resume\"}\n\n",
        ),
        CloseReason::Shutdown => {
            let status = serde_json::json!({
                "T": "s",
                "S": "*",
                "sc": "shutdown",
                "sm": "server restarting; reconnect to resume",
                "t": chrono::Utc::now(),
            });
            Bytes::from(format!("retry: 1000\nevent: status\ndata: {status}\n\n"))
        }
    }
}

struct SseConnection {
    queue: Arc<SubscriberQueue>,
    spare: VecDeque<Delivery>,
    initial: Option<Bytes>,
    finished: bool,
    metrics: Arc<Metrics>,
}

/// The connection is the response body itself: a hand-written stream rather than an async
/// block, so each delivery costs one poll and no future is built per chunk.
impl MessageBody for SseConnection {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self.get_mut();
        if let Some(initial) = this.initial.take() {
            return Poll::Ready(Some(Ok(initial)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        // Wait first, then drain: every push leaves a wake-up pending, so this never sleeps
        // on a non-empty queue, and the poll right after a write costs no lock.
        loop {
            if this.queue.poll_notified(cx).is_pending() {
                return Poll::Pending;
            }
            this.queue.drain_into(&mut this.spare);
            if !this.spare.is_empty() {
                return Poll::Ready(Some(Ok(this.render())));
            }
        }
    }
}

impl SseConnection {
    /// Coalesces everything drained into one chunk.
    fn render(&mut self) -> Bytes {
        let mut delivered = 0u64;
        let chunk = if self.spare.len() == 1 {
            match &self.spare[0] {
                Delivery::Event(entry) => {
                    delivered = 1;
                    entry.sse.clone()
                }
                Delivery::Heartbeat => Bytes::from_static(HEARTBEAT_FRAME),
                Delivery::Close(reason) => {
                    self.finished = true;
                    close_frame(*reason)
                }
            }
        } else {
            let size: usize = self
                .spare
                .iter()
                .map(|d| match d {
                    Delivery::Event(e) => e.sse.len(),
                    _ => 256,
                })
                .sum();
            let mut out = BytesMut::with_capacity(size);
            for item in &self.spare {
                match item {
                    Delivery::Event(entry) => {
                        delivered += 1;
                        out.put_slice(&entry.sse);
                    }
                    Delivery::Heartbeat => out.put_slice(HEARTBEAT_FRAME),
                    Delivery::Close(reason) => {
                        self.finished = true;
                        out.put_slice(&close_frame(*reason));
                        break;
                    }
                }
            }
            out.freeze()
        };
        self.spare.clear();
        self.metrics.delivered(Transport::Sse, delivered);
        chunk
    }
}

impl Drop for SseConnection {
    fn drop(&mut self) {
        self.queue.mark_gone();
        self.metrics.connection_closed(Transport::Sse);
    }
}
