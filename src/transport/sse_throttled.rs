//! The body of a throttled SSE market stream (`/v1/stream/market?max_rate=N`, docs/protocol.md
//! "Throttled streams"): the connection's queue drains into a [`hub::Throttle`], and what it
//! releases goes out as the hub's own frames, so nothing is encoded per client.
//!
//! Events leave a throttle out of sequence order across symbols, so their own `id:` lines
//! would move a client's `Last-Event-ID` past events still held. Each frame is therefore sent
//! without its `id:` line (a slice of the shared frame, no copy), and a write whose releases
//! moved the resume point ends with it: `id: <cursor>` alone, a block that sets the client's
//! last event id without dispatching an event. When the last event of a write is itself the
//! resume point its frame goes out whole instead. A resume after that id continues after it
//! (the events still held were above it); events sent while an older one was held may come
//! again after a resume, which for trades and quotes (the newest value wins) changes nothing.
//!
//! Usually the conflation is not the connection's own: the hub's shared throttle for the
//! stream's rate ([`hub::SharedThrottle`]) pushes the queue only what it lets out, and the
//! resume point is the stage's, read before each drain. Only when the hub runs its maximum of
//! shared throttles does the connection drain the raw feed into a throttle of its own.
//!
//! [`hub::Throttle`]: crate::hub::Throttle
//! [`hub::SharedThrottle`]: crate::hub::SharedThrottle

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::hub::entry::{SSE_HEARTBEAT, sse_close};
use crate::hub::{
    CloseReason, Coalescer, Delivery, Entry, Feed, Hub, MaxRate, Pacer, SharedThrottle,
    SubscriberQueue, Throttle,
};
use crate::metrics::{Metrics, Transport};

/// A throttled SSE connection: the queue, the throttle with its timer, and the id the client
/// holds.
pub(super) struct ThrottledSse {
    queue: Arc<SubscriberQueue>,
    spare: VecDeque<Delivery>,
    released: Vec<Arc<Entry>>,
    /// The connection's own throttle: it conflates the replay, and, without a shared stage,
    /// everything (its timer then ends the windows).
    pacer: Pacer,
    /// The hub's shared throttle that feeds the queue, if any.
    stage: Option<Arc<SharedThrottle>>,
    /// The coalescing window: a connection the server fell behind on writes its releases
    /// once per window, as an unthrottled one does.
    coalescer: Coalescer,
    initial: Option<Bytes>,
    finished: bool,
    /// The sequence of the last `id:` the client was sent.
    written: u64,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
    feed: Feed,
}

impl ThrottledSse {
    /// `opening` is the `retry:` line and the snapshot, if any; `replay` the events after the
    /// client's cursor, which go through the throttle like live ones; `cursor` the sequence
    /// the client holds once `opening` is written; `stage` the shared throttle the queue is
    /// registered with (`None`: the queue has the raw feed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        queue: Arc<SubscriberQueue>,
        stage: Option<Arc<SharedThrottle>>,
        rate: MaxRate,
        opening: Bytes,
        replay: Vec<Arc<Entry>>,
        cursor: u64,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        feed: Feed,
    ) -> ThrottledSse {
        let now = Instant::now();
        let mut connection = ThrottledSse {
            queue,
            spare: VecDeque::new(),
            released: Vec::new(),
            pacer: Pacer::new(Throttle::new(rate, now, cursor)),
            stage,
            coalescer: hub.new_coalescer(),
            initial: None,
            finished: false,
            written: cursor,
            metrics,
            hub,
            feed,
        };
        for entry in replay {
            connection.pacer.throttle.take(entry);
        }
        if connection.stage.is_some() {
            // The replay is conflated once (the newest trade and quote per symbol) and sent
            // at once; live events come from the stage.
            connection
                .pacer
                .throttle
                .release_all(&mut connection.released);
        } else {
            connection
                .pacer
                .throttle
                .release(now, &mut connection.released);
            connection.pacer.rearm(&connection.queue);
        }
        let cursor = connection.pacer.throttle.cursor();
        let mut out = BytesMut::from(opening.as_ref());
        connection.render_into(&mut out, cursor, false, None);
        connection.initial = Some(out.freeze());
        connection
    }

    /// Appends what was released (frames without their `id:` line), the new resume point if
    /// it moved, a heartbeat and the close, in that order.
    fn render_into(
        &mut self,
        out: &mut BytesMut,
        cursor: u64,
        heartbeat: bool,
        close: Option<CloseReason>,
    ) {
        let moved = cursor > self.written;
        let count = self.released.len();
        let last_is_cursor = moved
            && self
                .released
                .last()
                .is_some_and(|entry| entry.feed == Feed::Market && entry.seq == cursor);
        for (index, entry) in self.released.iter().enumerate() {
            if index + 1 == count && last_is_cursor {
                out.put_slice(&entry.sse);
            } else {
                out.put_slice(without_id(&entry.sse));
            }
        }
        if moved && !last_is_cursor {
            out.put_slice(b"id: ");
            out.put_slice(itoa::Buffer::new().format(self.hub.epoch()).as_bytes());
            out.put_u8(b'-');
            out.put_slice(itoa::Buffer::new().format(cursor).as_bytes());
            out.put_slice(b"\n\n");
        }
        if moved {
            self.written = cursor;
        }
        if heartbeat {
            out.put_slice(SSE_HEARTBEAT);
        }
        if let Some(reason) = close {
            self.finished = true;
            out.put_slice(&sse_close(reason, self.hub.cursor(self.feed)));
        }
        self.metrics.delivered(Transport::Sse, count as u64);
        self.count_replaced();
        self.released.clear();
    }

    /// Counts what was replaced in the throttle, or in the queue before it (see
    /// `SubscriberQueue`), since the last write.
    fn count_replaced(&mut self) {
        self.metrics.throttled.fetch_add(
            self.pacer.throttle.take_replaced() + self.queue.take_replaced(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Drains the queue into the throttle and releases what is due; the next chunk, if any.
    fn step(&mut self) -> Option<Bytes> {
        // The stage's resume point covers only what was pushed before it was stored: read it
        // before draining.
        let stage_cursor = self.stage.as_ref().map(|stage| stage.cursor());
        self.queue.drain_into(&mut self.spare);
        let mut heartbeat = false;
        let mut close = None;
        for item in self.spare.drain(..) {
            match item {
                Delivery::Event(entry) if stage_cursor.is_some() => self.released.push(entry),
                Delivery::Event(entry) => self.pacer.throttle.take(entry),
                Delivery::Heartbeat => heartbeat = true,
                Delivery::Close(reason) => {
                    close = Some(reason);
                    break;
                }
            }
        }
        self.spare.clear();
        if stage_cursor.is_some() {
            // The stage released these; nothing of the connection's own is held.
        } else if close.is_some() {
            // The stream ends: everything held goes out first, so the close's id (the feed's
            // head, for a shutdown) claims nothing that was not sent.
            self.pacer.throttle.release_all(&mut self.released);
        } else {
            self.pacer
                .throttle
                .release(Instant::now(), &mut self.released);
            self.pacer.rearm(&self.queue);
        }
        let cursor = stage_cursor.unwrap_or_else(|| self.pacer.throttle.cursor());
        // A lone event that is itself the resume point is the hub's frame as it is.
        if !heartbeat
            && close.is_none()
            && let [entry] = self.released.as_slice()
            && entry.feed == Feed::Market
            && entry.seq == cursor
            && entry.seq > self.written
        {
            let frame = entry.sse.clone();
            self.written = entry.seq;
            self.metrics.delivered(Transport::Sse, 1);
            self.count_replaced();
            self.released.clear();
            return Some(frame);
        }
        if self.released.is_empty() && !heartbeat && close.is_none() {
            return None;
        }
        let size: usize = self.released.iter().map(|entry| entry.sse.len()).sum();
        let mut out = BytesMut::with_capacity(size + 64);
        self.render_into(&mut out, cursor, heartbeat, close);
        Some(out.freeze())
    }
}

/// An SSE frame without its leading `id:` line (a slice, no copy). Notices have none.
fn without_id(frame: &Bytes) -> &[u8] {
    if frame.starts_with(b"id: ")
        && let Some(end) = frame.iter().position(|byte| *byte == b'\n')
    {
        return &frame[end + 1..];
    }
    frame
}

impl MessageBody for ThrottledSse {
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
        // The queue goes through the coalescing window; the throttle's timer is polled
        // beside it unless a hold runs (what is due then waits for the hold's end, whose
        // timer wakes the body). Whichever returns `Pending` has its waker registered; a
        // round that produced nothing goes again (see docs/ARCHITECTURE.md on
        // `poll_notified`).
        loop {
            if this.coalescer.poll_ready(&this.queue, cx).is_pending()
                && (this.coalescer.is_holding() || this.pacer.poll_due(cx).is_pending())
            {
                return Poll::Pending;
            }
            if let Some(chunk) = this.step() {
                this.coalescer.wrote(&this.queue);
                return Poll::Ready(Some(Ok(chunk)));
            }
        }
    }
}

impl Drop for ThrottledSse {
    fn drop(&mut self) {
        self.queue.mark_gone();
        self.metrics.connection_closed(Transport::Sse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Filter, HubSettings};
    use crate::market::{MarketEvent, SymbolUniverse, Trade};
    use std::task::Waker;
    use std::time::Duration;

    fn trade(symbol: &str, id: u64) -> MarketEvent {
        MarketEvent::Trade(Trade {
            symbol: symbol.into(),
            id,
            venue: "V".into(),
            price: 10.0,
            size: 1.0,
            time: chrono::DateTime::from_timestamp(1_700_000_000 + id as i64, 0)
                .unwrap_or_default(),
            conditions: vec![],
        })
    }

    fn poll(body: &mut ThrottledSse) -> Option<String> {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(body).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Poll::Ready(_) => Some("<end>".into()),
            Poll::Pending => None,
        }
    }

    /// A hub of five symbols with the given coalescing window, and a `max_rate=2` body on it.
    fn throttled(window: Duration) -> (Arc<Hub>, ThrottledSse) {
        let hub = Arc::new(Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT", "GOOG", "AMZN", "TSLA"]),
            HubSettings {
                coalesce_window: window,
                ..HubSettings::default()
            },
            Arc::new(Metrics::default()),
            7,
        ));
        let queue = hub.new_queue();
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        let rate = MaxRate::new(2).expect("valid");
        let body = ThrottledSse::new(
            queue,
            None,
            rate,
            Bytes::from_static(b"retry: 1\n\n"),
            Vec::new(),
            0,
            Arc::clone(hub.metrics()),
            Arc::clone(&hub),
            Feed::Market,
        );
        (hub, body)
    }

    #[tokio::test(start_paused = true)]
    async fn frames_lose_their_id_until_the_resume_point_moves_and_a_close_flushes_what_is_held() {
        // No coalescing window: the throttle's own rules, write by write.
        let (hub, mut body) = throttled(Duration::ZERO);
        assert_eq!(poll(&mut body).as_deref(), Some("retry: 1\n\n"));
        assert_eq!(poll(&mut body), None);
        hub.publish_event(trade("AAPL", 1)).expect("valid");
        let first = poll(&mut body).expect("the first trade at once");
        assert!(first.starts_with("id: 7-1\nevent: trade\n"), "{first}");
        // AAPL's window runs for half a second; MSFT is quiet.
        hub.publish_event(trade("AAPL", 2)).expect("valid");
        hub.publish_event(trade("AAPL", 3)).expect("valid");
        hub.publish_event(trade("MSFT", 4)).expect("valid");
        let msft = poll(&mut body).expect("MSFT at once");
        assert!(
            msft.starts_with("event: trade\n") && msft.contains("\"MSFT\""),
            "{msft}"
        );
        // Trade 2 was replaced by the held trade 3, so the resume point may pass 2 but not 3.
        assert!(msft.ends_with("\n\nid: 7-2\n\n"), "{msft}");
        assert_eq!(poll(&mut body), None);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(poll(&mut body), None, "the window has not ended");
        tokio::time::advance(Duration::from_millis(1)).await;
        let released = poll(&mut body).expect("the window ended");
        assert!(
            released.starts_with("event: trade\n") && released.contains("\"i\":3"),
            "{released}"
        );
        assert!(!released.contains("\"i\":2"), "trade 2 was replaced");
        assert!(released.ends_with("\nid: 7-4\n\n"), "{released}");
        // A close sends what is held first, then the shutdown status with the head as its id.
        hub.publish_event(trade("AAPL", 5)).expect("valid");
        assert_eq!(poll(&mut body), None, "held: AAPL's window runs again");
        hub.shut_down();
        let last = poll(&mut body).expect("the close");
        let trade_at = last.find("\"i\":5").expect("trade 5 flushed");
        let status_at = last
            .find("id: 7-5\nevent: status")
            .expect("shutdown status");
        assert!(trade_at < status_at, "{last}");
        assert_eq!(poll(&mut body).as_deref(), Some("<end>"));
        assert_eq!(
            hub.metrics()
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_throttled_stream_writes_its_releases_once_per_coalescing_window() {
        let window = Duration::from_millis(20);
        let (hub, mut body) = throttled(window);
        assert_eq!(poll(&mut body).as_deref(), Some("retry: 1\n\n"));
        // Two late wake-ups in a row (each finds two trades of quiet symbols, written at
        // once)...
        for pair in [[(1, "AAPL"), (10, "GOOG")], [(11, "AMZN"), (12, "TSLA")]] {
            for (n, symbol) in pair {
                hub.publish_event(trade(symbol, n)).expect("valid");
            }
            let both = poll(&mut body).expect("what a late wake-up finds goes out at once");
            for (n, _) in pair {
                assert!(both.contains(&format!("\"i\":{n}")), "{both}");
            }
        }
        // ...so the connection is behind: it holds the next write for one window, and the
        // quiet MSFT's first trade goes out with it.
        hub.publish_event(trade("AAPL", 2)).expect("valid");
        hub.publish_event(trade("AAPL", 3)).expect("valid");
        hub.publish_event(trade("MSFT", 4)).expect("valid");
        assert_eq!(poll(&mut body), None, "held by the coalescing window");
        tokio::time::advance(window - Duration::from_millis(1)).await;
        assert_eq!(poll(&mut body), None, "the hold has not ended");
        tokio::time::advance(Duration::from_millis(1)).await;
        let msft = poll(&mut body).expect("the hold ended");
        assert!(msft.contains("\"MSFT\""), "{msft}");
        assert!(
            !msft.contains("\"AAPL\""),
            "AAPL's rate window still runs: {msft}"
        );
        // That write carried two items (trade 3 replaced 2 in the queue), so the connection
        // keeps up again. AAPL's window ends at 500 ms; a hold running then would keep the
        // release until its own end.
        hub.publish_event(trade("AAPL", 5)).expect("valid");
        hub.publish_event(trade("AAPL", 6)).expect("valid");
        hub.publish_event(trade("AAPL", 7)).expect("valid");
        tokio::time::advance(window).await;
        assert_eq!(poll(&mut body), None, "AAPL is still in its rate window");
        tokio::time::advance(Duration::from_millis(459)).await;
        assert_eq!(poll(&mut body), None, "AAPL's window has not ended");
        tokio::time::advance(Duration::from_millis(1)).await;
        let released = poll(&mut body).expect("AAPL's window ended");
        assert!(
            released.contains("\"i\":7") && !released.contains("\"i\":3"),
            "the newest AAPL trade wins: {released}"
        );
        let sent = hub
            .metrics()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sent, 4, "trades 2, 3, 5 and 6 were replaced");
    }

    /// A hub of four symbols without a coalescing window, and a `max_rate=2` body fed by the
    /// hub's shared throttle.
    fn shared(hub: &Arc<Hub>, filter: Filter) -> ThrottledSse {
        let queue = hub.new_queue();
        let rate = MaxRate::new(2).expect("valid");
        let (subscribed, stage) = hub.subscribe_throttled(filter, rate, None, false, &queue);
        assert!(stage.is_some(), "a stage runs for the rate");
        ThrottledSse::new(
            queue,
            stage,
            rate,
            Bytes::from_static(b"retry: 1\n\n"),
            Vec::new(),
            subscribed.cursor.seq,
            Arc::clone(hub.metrics()),
            Arc::clone(hub),
            Feed::Market,
        )
    }

    /// Lets the stages' timer tasks run after the clock moved.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn streams_of_one_rate_share_a_stage_that_pushes_only_what_the_rate_lets_out() {
        let hub = Arc::new(Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT", "GOOG", "AMZN"]),
            HubSettings {
                coalesce_window: Duration::ZERO,
                ..HubSettings::default()
            },
            Arc::new(Metrics::default()),
            7,
        ));
        let mut everything = shared(&hub, Filter::everything());
        let aapl_only = Filter {
            symbols: crate::hub::SymbolFilter::from_ids([hub
                .universe()
                .id("AAPL")
                .expect("known")]),
            kinds: u8::MAX,
        };
        let mut aapl = shared(&hub, aapl_only);
        assert_eq!(hub.shared_throttle_count(), 1, "one stage for both");
        assert_eq!(poll(&mut everything).as_deref(), Some("retry: 1\n\n"));
        assert_eq!(poll(&mut aapl).as_deref(), Some("retry: 1\n\n"));
        hub.publish_event(trade("AAPL", 1)).expect("valid");
        for body in [&mut everything, &mut aapl] {
            let first = poll(body).expect("a quiet symbol's first trade at once");
            assert!(first.starts_with("id: 7-1\nevent: trade\n"), "{first}");
        }
        // AAPL's window runs: its next trades are conflated in the stage, and no queue holds
        // them; MSFT is quiet and goes only to the stream that follows it.
        for n in 2..=6 {
            hub.publish_event(trade("AAPL", n)).expect("valid");
        }
        assert!(
            aapl.queue.is_empty(),
            "nothing pushed while the window runs"
        );
        hub.publish_event(trade("MSFT", 7)).expect("valid");
        assert_eq!(poll(&mut aapl), None);
        let msft = poll(&mut everything).expect("MSFT at once");
        assert!(msft.contains("\"MSFT\""), "{msft}");
        // Trade 6 is held, so the resume point stops below it.
        assert!(msft.ends_with("\n\nid: 7-5\n\n"), "{msft}");
        tokio::time::advance(Duration::from_millis(499)).await;
        settle().await;
        assert_eq!(poll(&mut aapl), None, "the window has not ended");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        for body in [&mut everything, &mut aapl] {
            let released = poll(body).expect("the stage released AAPL at the window end");
            assert!(
                released.contains("\"i\":6") && !released.contains("\"i\":5"),
                "the newest trade wins: {released}"
            );
            assert_eq!(poll(body), None, "one release, one write");
        }
        assert_eq!(
            hub.metrics()
                .throttled
                .load(std::sync::atomic::Ordering::Relaxed),
            4,
            "trades 2 to 5 were replaced once, in the stage, not once per subscriber"
        );
        // A close flushes what the stage holds before the shutdown status.
        hub.publish_event(trade("AAPL", 8)).expect("valid");
        assert_eq!(poll(&mut aapl), None, "held: AAPL's window runs again");
        hub.shut_down();
        let last = poll(&mut aapl).expect("the close");
        let trade_at = last.find("\"i\":8").expect("trade 8 flushed");
        let status_at = last
            .find("id: 7-8\nevent: status")
            .expect("shutdown status");
        assert!(trade_at < status_at, "{last}");
        // The stage ends with its last subscriber.
        drop(everything);
        drop(aapl);
        assert_eq!(hub.shared_throttle_count(), 0, "shutdown retired the stage");
    }
}
