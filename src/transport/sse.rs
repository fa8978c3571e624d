//! Public Server-Sent Events feeds (PROTOCOL.md §2): `/v1/stream/market`, `/v1/stream/news`
//! and `/v1/stream/alerts`.
//!
//! A connection is a [`SubscriberQueue`] plus a stream that drains it. Everything queued since
//! the last write goes out as one chunk; a lone event is written as the shared frame itself
//! (no copy). The connection owns no timer: heartbeats come from the hub's shared sweep.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ApiError, ErrorCode};
use crate::hub::{
    CloseReason, Cursor, Delivery, Entry, Feed, Filter, Subscribed, SubscriberQueue, SymbolFilter,
};
use crate::market::{EventKind, SymbolUniverse};
use crate::metrics::{Metrics, Transport};
use crate::server::AppState;

const HEARTBEAT_FRAME: &[u8] = b": hb\n\n";

/// Header names as constants: looking one up or inserting it by `&str` parses the name (and
/// allocates for names the `http` crate does not know) on every request.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Tells nginx-style proxies not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

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
            Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "symbols is required (a comma-separated list, or * for all)",
            ))
        } else {
            Ok(SymbolFilter::All)
        };
    };
    // Names already in upper case (the usual request) are borrowed, not copied.
    let mut names: Vec<Cow<'_, str>> = Vec::new();
    for name in raw
        .split(',')
        .map(|s| {
            let s = s.trim();
            if s.bytes().any(|b| b.is_ascii_lowercase()) {
                Cow::Owned(s.to_ascii_uppercase())
            } else {
                Cow::Borrowed(s)
            }
        })
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
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "symbols must name at least one symbol, or * for all",
        ));
    }
    if names.iter().any(|s| s == "*") {
        return Ok(SymbolFilter::All);
    }
    if names.len() > max_symbols {
        return Err(ApiError::new(
            ErrorCode::TooManySymbols,
            format!("too many symbols: at most {max_symbols} per subscription"),
        ));
    }
    let mut ids = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in &names {
        match universe.id(name) {
            Some(id) => ids.push(id),
            None => unknown.push(name.as_ref()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UnknownSymbol,
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
                return Err(ApiError::new(
                    ErrorCode::UnknownType,
                    format!("unknown type {name:?}; use trades, quotes, bars, statuses or *"),
                ));
            }
        }
    }
    if mask == 0 {
        return Err(ApiError::new(
            ErrorCode::UnknownType,
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
        .get(LAST_EVENT_ID)
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
    // Static names and values: a `&str` pair would be parsed, validated and copied into a new
    // allocation for every subscriber.
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((X_ACCEL_BUFFERING, HeaderValue::from_static("no")))
        .body(connection)
}

/// `retry:`, then either the snapshot (fresh connect or reset) or the replay, written into
/// one buffer of the right size: this runs once per new subscriber, so it avoids the
/// intermediate `format!` strings and vectors a frame-by-frame build would allocate.
fn initial_bytes(feed: Feed, subscribed: &Subscribed, retry_ms: u64) -> Bytes {
    let snapshot_len = subscribed.snapshot.as_ref().map_or(0, |entries| {
        SNAPSHOT_FRAME_OVERHEAD + entries.iter().map(|e| e.json.len() + 1).sum::<usize>()
    });
    let replay_len: usize = subscribed.replay.iter().map(|e| e.sse.len()).sum();
    let mut out = BytesMut::with_capacity(32 + snapshot_len + replay_len);
    out.put_slice(b"retry: ");
    put_u64(&mut out, retry_ms);
    out.put_slice(b"\n\n");
    if let Some(snapshot) = &subscribed.snapshot {
        put_snapshot_frame(&mut out, feed, subscribed, snapshot);
    }
    for entry in &subscribed.replay {
        out.put_slice(&entry.sse);
    }
    out.freeze()
}

/// Room for everything in a snapshot frame but the entries: the `id:`/`event:` lines, two
/// cursors, the reset reason and the group names.
const SNAPSHOT_FRAME_OVERHEAD: usize = 320;

fn put_u64(out: &mut BytesMut, value: u64) {
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Writes a cursor as its `Display` form, `<epoch>-<seq>`.
fn put_cursor(out: &mut BytesMut, cursor: Cursor) {
    put_u64(out, cursor.epoch);
    out.put_u8(b'-');
    put_u64(out, cursor.seq);
}

/// `event: snapshot` with `data: {"reset":..,"cursor":..,"trades":[..],"quotes":[..],...}`,
/// carrying the feed's current cursor as its id so a reconnect resumes after it.
fn put_snapshot_frame(
    out: &mut BytesMut,
    feed: Feed,
    subscribed: &Subscribed,
    entries: &[Arc<Entry>],
) {
    let groups: &[(&str, EventKind)] = match feed {
        Feed::Market => &[
            ("trades", EventKind::Trade),
            ("quotes", EventKind::Quote),
            ("bars", EventKind::Bar),
        ],
        Feed::News => &[("news", EventKind::News)],
        Feed::Alerts => &[("alerts", EventKind::Alert)],
    };
    out.put_slice(b"id: ");
    put_cursor(out, subscribed.cursor);
    out.put_slice(b"\nevent: snapshot\ndata: {\"reset\":");
    out.put_slice(if subscribed.reset.is_some() {
        b"true"
    } else {
        b"false"
    });
    if let Some(reason) = subscribed.reset {
        out.put_slice(b",\"reason\":");
        out.put_slice(
            serde_json::to_string(reason.message())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    out.put_slice(b",\"cursor\":\"");
    put_cursor(out, subscribed.cursor);
    out.put_u8(b'"');
    for (name, kind) in groups {
        out.put_slice(b",\"");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\":[");
        let mut first = true;
        for entry in entries.iter().filter(|e| e.kind == *kind) {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(&entry.json);
        }
        out.put_u8(b']');
    }
    out.put_slice(b"}\n\n");
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
        CloseReason::Reset => {
            let status = serde_json::json!({
                "T": "s",
                "S": "*",
                "sc": "reset",
                "sm": "the feed was reset; reconnect for a fresh snapshot",
                "t": chrono::Utc::now(),
            });
            Bytes::from(format!("retry: 100\nevent: status\ndata: {status}\n\n"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubSettings};
    use crate::market::{MarketEvent, Quote, Trade};

    fn hub() -> Hub {
        let hub = Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT"]),
            HubSettings::default(),
            Arc::new(Metrics::default()),
            7,
        );
        for (n, symbol) in ["AAPL", "MSFT", "AAPL"].into_iter().enumerate() {
            let time = chrono::DateTime::from_timestamp(1_800_000_000 + n as i64, 0);
            let trade = MarketEvent::Trade(Trade {
                symbol: symbol.into(),
                id: n as u64,
                venue: String::new(),
                price: 100.0 + n as f64,
                size: 1.0,
                time: time.unwrap_or_default(),
                conditions: vec![],
            });
            hub.publish_event(trade).expect("a valid trade");
        }
        let quote = MarketEvent::Quote(Quote {
            symbol: "AAPL".into(),
            bid_price: 99.0,
            bid_size: 1.0,
            bid_venue: String::new(),
            ask_price: 101.0,
            ask_size: 2.0,
            ask_venue: String::new(),
            time: chrono::DateTime::from_timestamp(1_800_000_010, 0).unwrap_or_default(),
        });
        hub.publish_event(quote).expect("a valid quote");
        hub
    }

    /// The frame as it was first written, with `format!`: the one-buffer writer must produce
    /// exactly these bytes.
    fn reference_initial_bytes(feed: Feed, subscribed: &Subscribed, retry_ms: u64) -> Vec<u8> {
        let mut out = format!("retry: {retry_ms}\n\n").into_bytes();
        if let Some(entries) = &subscribed.snapshot {
            let mut data = b"{\"reset\":".to_vec();
            data.extend_from_slice(if subscribed.reset.is_some() {
                b"true"
            } else {
                b"false"
            });
            if let Some(reason) = subscribed.reset {
                data.extend_from_slice(b",\"reason\":");
                data.extend_from_slice(serde_json::json!(reason.message()).to_string().as_bytes());
            }
            data.extend_from_slice(format!(",\"cursor\":\"{}\"", subscribed.cursor).as_bytes());
            let groups: &[(&str, EventKind)] = match feed {
                Feed::Market => &[
                    ("trades", EventKind::Trade),
                    ("quotes", EventKind::Quote),
                    ("bars", EventKind::Bar),
                ],
                Feed::News => &[("news", EventKind::News)],
                Feed::Alerts => &[("alerts", EventKind::Alert)],
            };
            for (name, kind) in groups {
                let items: Vec<&[u8]> = entries
                    .iter()
                    .filter(|e| e.kind == *kind)
                    .map(|e| e.json.as_ref())
                    .collect();
                data.extend_from_slice(format!(",\"{name}\":[").as_bytes());
                data.extend_from_slice(&items.join(&b','));
                data.push(b']');
            }
            data.push(b'}');
            out.extend_from_slice(
                format!("id: {}\nevent: snapshot\ndata: ", subscribed.cursor).as_bytes(),
            );
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\n\n");
        }
        for entry in &subscribed.replay {
            out.extend_from_slice(&entry.sse);
        }
        out
    }

    #[test]
    fn initial_bytes_match_the_reference_frames_for_snapshots_resets_and_replays() {
        let hub = hub();
        let everything = || Filter {
            symbols: SymbolFilter::All,
            kinds: EventKind::Trade.bit() | EventKind::Quote.bit() | EventKind::Bar.bit(),
        };
        let one_symbol = || Filter {
            symbols: SymbolFilter::from_ids([0]),
            kinds: EventKind::Trade.bit(),
        };
        let cases = [
            (everything(), None),
            (one_symbol(), None),
            // Another epoch: a reset with its reason and a snapshot.
            (everything(), Some(Cursor { epoch: 1, seq: 1 })),
            // A cursor in the window: a replay, no snapshot.
            (one_symbol(), Some(Cursor { epoch: 7, seq: 1 })),
        ];
        for (filter, resume) in cases {
            let queue = SubscriberQueue::new(16, Transport::Sse);
            let subscribed = hub.subscribe(Feed::Market, filter, resume, true, &queue);
            let written = initial_bytes(Feed::Market, &subscribed, 2500);
            let expected = reference_initial_bytes(Feed::Market, &subscribed, 2500);
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected),
                "resume {resume:?}"
            );
        }
    }

    #[test]
    fn symbol_names_are_matched_in_any_case_and_counted_once() {
        let universe = SymbolUniverse::new(["AAPL", "MSFT"]);
        let filter =
            parse_symbols(Some(" aapl,AAPL ,Msft"), &universe, 2, true).expect("two known symbols");
        assert_eq!(filter, SymbolFilter::from_ids([0, 1]));
        let unknown = parse_symbols(Some("AAPL,nope"), &universe, 2, true).unwrap_err();
        assert!(unknown.message.contains("NOPE"), "{}", unknown.message);
    }
}
