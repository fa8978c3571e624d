//! Public Server-Sent Events feeds (docs/protocol.md, "Server-Sent Events"): `/v1/stream/market`, `/v1/stream/news`
//! and `/v1/stream/alerts`.
//!
//! A connection is a [`SubscriberQueue`] plus a stream that drains it. Everything queued since
//! the last write goes out as one chunk; a lone event is written as the shared frame itself
//! (no copy). Heartbeats come from the hub's shared sweep; the only timer a connection may
//! own is its coalescing window's ([`Coalescer`]), once it falls behind its stream.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{BufMut, Bytes, BytesMut};

use super::sse_throttled::ThrottledSse;
use crate::error::{ApiError, ErrorCode};
use crate::hub::entry::{SSE_HEARTBEAT, sse_close, sse_opening};
use crate::hub::{
    Coalescer, Cursor, Delivery, Feed, Filter, Hub, MaxRate, SubscriberQueue, SymbolFilter,
};
use crate::market::EventKind;
use crate::metrics::{Metrics, Transport};
use crate::state::AppState;

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

use crate::routes::params::{RawQuery, parse_symbols, parse_types, query_params};

/// The resume cursor: the `Last-Event-ID` header wins over `?last_event_id=`. A cursor that
/// does not parse is treated as foreign, which yields an explicit reset rather than an error
/// (a browser would retry a 4xx forever with the same header).
fn resume_cursor(request: &HttpRequest, query: &HashMap<String, String>) -> Option<Cursor> {
    // A header that is not visible ASCII (a mangled or foreign id) is still a cursor this
    // feed cannot honour: the reset below, not a silent fresh start.
    let header = request.headers().get(LAST_EVENT_ID).map(|v| {
        v.to_str()
            .map_or_else(|_| "not-a-cursor".to_owned(), str::to_owned)
    });
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
    let query = query_params(
        query.into_inner(),
        &["symbols", "types", "last_event_id", "max_rate"],
    )?;
    let max_rate = query
        .get("max_rate")
        .map(|raw| MaxRate::parse(raw))
        .transpose()
        .map_err(|invalid| ApiError::new(ErrorCode::InvalidParameter, invalid.to_string()))?;
    let symbols = parse_symbols(
        query.get("symbols").map(String::as_str),
        state.universe(),
        state.settings.market.max_symbols_per_subscription,
        true,
    )?;
    let kinds = parse_types(query.get("types").map(String::as_str))?;
    let filter = Filter { symbols, kinds };
    Ok(open_stream(
        &request,
        &query,
        &state,
        Feed::Market,
        filter,
        max_rate,
    ))
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
    Ok(open_stream(
        &request,
        &query,
        &state,
        Feed::News,
        filter,
        None,
    ))
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
    Ok(open_stream(
        &request,
        &query,
        &state,
        Feed::Alerts,
        filter,
        None,
    ))
}

fn open_stream(
    request: &HttpRequest,
    query: &HashMap<String, String>,
    state: &AppState,
    feed: Feed,
    filter: Filter,
    max_rate: Option<MaxRate>,
) -> HttpResponse {
    let resume = resume_cursor(request, query);
    let queue = state.hub.new_queue();
    let (mut subscribed, stage) = match max_rate {
        Some(rate) if feed == Feed::Market => state
            .hub
            .subscribe_throttled(filter, rate, resume, true, &queue),
        _ => (
            state
                .hub
                .subscribe(feed, filter, resume, feed == Feed::Market, &queue),
            None,
        ),
    };
    // A throttled stream sends its replay through the throttle, not in the opening.
    let replay = match max_rate {
        Some(_) => std::mem::take(&mut subscribed.replay),
        None => Vec::new(),
    };
    let initial = sse_opening(
        feed,
        &subscribed,
        state.settings.hub.sse_retry.as_millis() as u64,
    );
    state.metrics.delivered(
        Transport::Sse,
        subscribed.replay.len() as u64 + u64::from(subscribed.snapshot.is_some()),
    );
    state.metrics.connection_opened(Transport::Sse);
    let response = || {
        // Static names and values: a `&str` pair would be parsed, validated and copied into a
        // new allocation for every subscriber.
        let mut response = HttpResponse::Ok();
        response
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header((X_ACCEL_BUFFERING, HeaderValue::from_static("no")));
        response
    };
    if let Some(rate) = max_rate {
        // The client holds the snapshot's cursor, or the one it resumed from.
        let cursor = match (&subscribed.snapshot, resume) {
            (None, Some(resume)) => resume.seq,
            _ => subscribed.cursor.seq,
        };
        return response().body(ThrottledSse::new(
            queue,
            stage,
            rate,
            initial,
            replay,
            cursor,
            Arc::clone(&state.metrics),
            Arc::clone(&state.hub),
            feed,
        ));
    }
    let connection = SseConnection {
        coalescer: state.hub.new_coalescer(),
        queue,
        spare: VecDeque::new(),
        initial: Some(initial),
        finished: false,
        metrics: Arc::clone(&state.metrics),
        hub: Arc::clone(&state.hub),
        feed,
    };
    response().body(connection)
}

struct SseConnection {
    queue: Arc<SubscriberQueue>,
    /// Decides when to drain: at once, or at the end of a coalescing window.
    coalescer: Coalescer,
    spare: VecDeque<Delivery>,
    initial: Option<Bytes>,
    finished: bool,
    metrics: Arc<Metrics>,
    /// For the final head the shutdown status carries as its id.
    hub: Arc<Hub>,
    feed: Feed,
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
        // on a non-empty queue, and the poll right after a write costs no lock. A connection
        // behind its stream waits out its coalescing window before draining.
        loop {
            if this.coalescer.poll_ready(&this.queue, cx).is_pending() {
                return Poll::Pending;
            }
            this.queue.drain_into(&mut this.spare);
            if !this.spare.is_empty() {
                let chunk = this.render();
                this.coalescer.wrote(&this.queue);
                return Poll::Ready(Some(Ok(chunk)));
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
                Delivery::Heartbeat => Bytes::from_static(SSE_HEARTBEAT),
                Delivery::Close(reason) => {
                    self.finished = true;
                    sse_close(*reason, self.hub.cursor(self.feed))
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
                    Delivery::Heartbeat => out.put_slice(SSE_HEARTBEAT),
                    Delivery::Close(reason) => {
                        self.finished = true;
                        out.put_slice(&sse_close(*reason, self.hub.cursor(self.feed)));
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
    //! The SSE body with its coalescing window, polled directly on tokio's paused clock: each
    //! chunk it returns is one write to the socket.
    use super::*;
    use crate::hub::HubSettings;
    use crate::market::{MarketEvent, SymbolUniverse, Trade};
    use std::time::Duration;
    use tokio::time::Instant;

    fn hub(capacity: usize, window: Duration) -> Arc<Hub> {
        Arc::new(Hub::new(
            SymbolUniverse::new(["AAPL"]),
            HubSettings {
                subscriber_queue_capacity: capacity,
                coalesce_window: window,
                ..HubSettings::default()
            },
            Arc::new(Metrics::default()),
            7,
        ))
    }

    fn publish(hub: &Hub, id: u64) {
        let trade = MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id,
            venue: String::new(),
            price: 100.0,
            size: 1.0,
            time: chrono::DateTime::from_timestamp(1_800_000_000 + id as i64, 0)
                .unwrap_or_default(),
            conditions: vec![],
        });
        hub.publish_event(trade).expect("a valid trade");
    }

    /// A connection following AAPL trades, its opening chunk already taken.
    async fn connection(hub: &Arc<Hub>) -> SseConnection {
        let queue = hub.new_queue();
        let filter = Filter {
            symbols: SymbolFilter::All,
            kinds: EventKind::Trade.bit(),
        };
        hub.subscribe(Feed::Market, filter, None, false, &queue);
        let mut connection = SseConnection {
            coalescer: hub.new_coalescer(),
            queue,
            spare: VecDeque::new(),
            initial: Some(Bytes::from_static(b"retry: 1000\n\n")),
            finished: false,
            metrics: Arc::clone(hub.metrics()),
            hub: Arc::clone(hub),
            feed: Feed::Market,
        };
        next_chunk(&mut connection).await;
        connection
    }

    async fn next_chunk(connection: &mut SseConnection) -> String {
        let chunk = std::future::poll_fn(|cx| Pin::new(&mut *connection).poll_next(cx)).await;
        match chunk {
            Some(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            None => String::new(),
        }
    }

    /// The trade ids of the `trade` events in one chunk, in order.
    fn ids(chunk: &str) -> Vec<u64> {
        chunk
            .split("\n\n")
            .filter_map(|frame| frame.split("data: ").nth(1))
            .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
            .filter_map(|data| data["i"].as_u64())
            .collect()
    }

    /// Publishes `ids` at once (the connection finds them all at its next wake-up, as one
    /// that fell behind does) and returns the chunk it writes.
    async fn late_chunk(hub: &Hub, connection: &mut SseConnection, ids: &[u64]) -> String {
        for &id in ids {
            publish(hub, id);
        }
        next_chunk(connection).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_the_connection_falls_behind_of_is_written_one_chunk_per_window_in_order() {
        let window = Duration::from_millis(20);
        let hub = hub(1024, window);
        let mut connection = connection(&hub).await;

        let start = Instant::now();
        publish(&hub, 1);
        assert_eq!(ids(&next_chunk(&mut connection).await), vec![1]);
        // Two late wake-ups in a row: each finds two events and writes them at once...
        assert_eq!(
            ids(&late_chunk(&hub, &mut connection, &[2, 3]).await),
            vec![2, 3]
        );
        assert_eq!(
            ids(&late_chunk(&hub, &mut connection, &[4, 5]).await),
            vec![4, 5]
        );
        assert_eq!(
            Instant::now(),
            start,
            "what a late wake-up finds waits for nothing"
        );
        // ...and the connection is now behind: what follows within the window shares one
        // chunk, written at the window's end.
        for id in 6..=9 {
            publish(&hub, id);
            let held = futures::poll!(std::future::poll_fn(|cx| {
                Pin::new(&mut connection).poll_next(cx)
            }));
            assert!(held.is_pending(), "event {id} was not held");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(ids(&next_chunk(&mut connection).await), vec![6, 7, 8, 9]);
        assert!(Instant::now() - start <= window + Duration::from_millis(1));
        assert_eq!(
            hub.metrics()
                .delivered_sse
                .load(std::sync::atomic::Ordering::Relaxed),
            9
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_a_hundred_events_a_second_the_connection_keeps_up_with_is_never_held() {
        let hub = hub(1024, Duration::from_millis(20));
        let mut connection = connection(&hub).await;
        let start = Instant::now();
        // Gaps of 2 and 18 ms in turn, each event written before the next comes.
        for id in 1..=40u64 {
            publish(&hub, id);
            assert_eq!(ids(&next_chunk(&mut connection).await), vec![id]);
            let expected = (id - 1) / 2 * 20 + (id - 1) % 2 * 2;
            assert_eq!(Instant::now() - start, Duration::from_millis(expected));
            let gap = if id % 2 == 1 { 2 } else { 18 };
            tokio::time::advance(Duration::from_millis(gap)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_hold_writes_the_held_events_and_the_status_at_once() {
        let hub = hub(1024, Duration::from_secs(10));
        let mut connection = connection(&hub).await;
        assert_eq!(
            ids(&late_chunk(&hub, &mut connection, &[1, 2]).await),
            vec![1, 2]
        );
        assert_eq!(
            ids(&late_chunk(&hub, &mut connection, &[3, 4]).await),
            vec![3, 4]
        );
        // Two late wake-ups in a row: the connection now holds for ten seconds.
        publish(&hub, 5);
        let held = futures::poll!(std::future::poll_fn(|cx| {
            Pin::new(&mut connection).poll_next(cx)
        }));
        assert!(held.is_pending());
        hub.shut_down();
        let chunk = tokio::time::timeout(Duration::from_secs(1), next_chunk(&mut connection))
            .await
            .expect("the close did not wait for the window");
        assert_eq!(ids(&chunk), vec![5], "{chunk}");
        assert!(chunk.contains("\"sc\":\"shutdown\""), "{chunk}");
        assert_eq!(next_chunk(&mut connection).await, "", "the stream ends");
    }
}
