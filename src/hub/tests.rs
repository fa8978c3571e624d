//! Unit tests of the hub: publish, resume, conflation, sweeps.

use super::*;
use crate::market::{Quote, Trade};
use tokio_util::sync::CancellationToken;

fn hub(window: usize, capacity: usize) -> Hub {
    Hub::new(
        SymbolUniverse::new(["AAPL", "MSFT"]),
        HubSettings {
            replay_window: window,
            subscriber_queue_capacity: capacity,
            ..HubSettings::default()
        },
        Arc::new(Metrics::default()),
        7,
    )
}

fn trade(symbol: &str, id: u64, price: f64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: symbol.into(),
        id,
        venue: "SIM".into(),
        price,
        size: 100.0,
        time: DateTime::from_timestamp(1_700_000_000 + id as i64, 0).unwrap_or_default(),
        conditions: vec![],
    })
}

fn quote(symbol: &str, second: i64) -> MarketEvent {
    MarketEvent::Quote(Quote {
        symbol: symbol.into(),
        bid_price: 10.0,
        bid_size: 1.0,
        bid_venue: String::new(),
        ask_price: 10.01,
        ask_size: 1.0,
        ask_venue: String::new(),
        time: DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap_or_default(),
    })
}

fn drain(queue: &SubscriberQueue) -> Vec<Delivery> {
    let mut out = VecDeque::new();
    queue.drain_into(&mut out);
    out.into_iter().collect()
}

#[tokio::test]
async fn a_push_wakes_the_waiting_connection_and_a_push_before_waiting_is_kept() {
    let hub = Arc::new(hub(10, 10));
    let queue = SubscriberQueue::with_capacity(10);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    // Pushed before anyone waits: the next wait returns at once.
    hub.publish_event(trade("AAPL", 1, 10.0)).expect("valid");
    tokio::time::timeout(Duration::from_secs(5), queue.notified())
        .await
        .expect("a kept wake-up");
    assert_eq!(drain(&queue).len(), 1);
    // Waiting first: a later push wakes the waiter.
    let waiter = tokio::spawn({
        let queue = Arc::clone(&queue);
        async move { queue.notified().await }
    });
    tokio::task::yield_now().await;
    hub.publish_event(trade("AAPL", 2, 10.0)).expect("valid");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the push")
        .expect("waiter ran");
    assert_eq!(drain(&queue).len(), 1);
}

#[test]
fn symbol_filter_is_sized_to_its_highest_id_and_answers_for_any_id() {
    let filter = SymbolFilter::from_ids([1, 70]);
    let SymbolFilter::Some(bits) = &filter else {
        panic!("a list of ids is not All");
    };
    assert_eq!(bits.len(), 2);
    assert!(filter.contains(1) && filter.contains(70));
    assert!(!filter.contains(0) && !filter.contains(71));
    assert!(
        !filter.contains(4095),
        "ids beyond the bitmap are not contained"
    );
    assert!(!SymbolFilter::from_ids([]).contains(0));
}

#[test]
fn sse_frame_is_built_once_with_cursor_and_json_slice() {
    let hub = hub(10, 10);
    let published = hub
        .publish_event(trade("AAPL", 1, 10.0))
        .expect("valid trade");
    let text = std::str::from_utf8(&published.entry.sse).unwrap_or_default();
    assert!(text.starts_with("id: 7-1\nevent: trade\ndata: {\"T\":\"t\""));
    assert!(text.ends_with("}\n\n"));
    assert_eq!(published.entry.json.first(), Some(&b'{'));
    // The JSON is a view into the same allocation, not a copy.
    let sse_range = published.entry.sse.as_ptr_range();
    assert!(sse_range.contains(&published.entry.json.as_ptr()));
    // The WebSocket frame is the JSON in brackets, built once next to the SSE frame.
    let mut expected = b"[".to_vec();
    expected.extend_from_slice(&published.entry.json);
    expected.push(b']');
    assert_eq!(published.entry.ws.as_ref(), expected.as_slice());
    assert_eq!(published.entry.ws.as_ptr(), sse_range.end);
}

#[test]
fn the_keepalive_sweep_wakes_unsubscribed_queues_and_forgets_gone_ones() {
    let hub = hub(10, 10);
    let live = SubscriberQueue::with_capacity(10);
    let gone = SubscriberQueue::with_capacity(10);
    hub.keep_alive(&live);
    hub.keep_alive(&gone);
    gone.mark_gone();
    hub.keepalive_sweep();
    let mut items = VecDeque::new();
    live.drain_into(&mut items);
    assert!(matches!(items.pop_front(), Some(Delivery::Heartbeat)));
    assert!(items.is_empty());
    assert!(gone.is_empty(), "a gone queue gets nothing");
    assert_eq!(hub.keepalive.lock().len(), 1, "the gone queue is forgotten");
}

/// A WebSocket hears of a shutdown through its keep-alive queue (it holds no waiter on the
/// shutdown token), so `shut_down` must wake queues that follow no feed too.
#[test]
fn shutting_down_wakes_every_keepalive_queue_even_without_a_subscription() {
    let hub = hub(10, 10);
    let unsubscribed = SubscriberQueue::with_capacity(10);
    hub.keep_alive(&unsubscribed);
    assert!(unsubscribed.is_empty());
    hub.shut_down();
    let mut items = VecDeque::new();
    unsubscribed.drain_into(&mut items);
    assert!(
        matches!(items.pop_front(), Some(Delivery::Heartbeat)),
        "{items:?}"
    );
    assert!(hub.is_shut_down());
}

fn heartbeats(queue: &SubscriberQueue) -> usize {
    drain(queue)
        .iter()
        .filter(|d| matches!(d, Delivery::Heartbeat))
        .count()
}

/// `rounds` queues per slice, each on the alerts feed and in the keep-alive sweep.
fn swept_queues(hub: &Hub, rounds: usize) -> Vec<Arc<SubscriberQueue>> {
    let queues: Vec<_> = (0..rounds * usize::from(SWEEP_SLICES))
        .map(|_| SubscriberQueue::with_capacity(10))
        .collect();
    for queue in &queues {
        hub.subscribe(Feed::Alerts, Filter::everything(), None, false, queue);
        hub.keep_alive(queue);
    }
    queues
}

#[test]
fn a_sweep_tick_reaches_only_its_own_slice_and_a_full_round_reaches_everyone_once() {
    let hub = hub(10, 10);
    let queues = swept_queues(&hub, 3);
    assert!(queues.iter().all(|queue| queue.slice() < SWEEP_SLICES));
    let target = queues[0].slice();
    hub.heartbeat_sweep_slice(Some(target));
    hub.keepalive_sweep_slice(Some(target));
    for queue in &queues {
        let expected = if queue.slice() == target { 2 } else { 0 };
        assert_eq!(heartbeats(queue), expected, "slice {}", queue.slice());
    }
    for slice in 0..SWEEP_SLICES {
        hub.heartbeat_sweep_slice(Some(slice));
    }
    assert!(queues.iter().all(|q| heartbeats(q) == 1));
}

#[test]
fn gone_registrations_get_nothing_and_are_forgotten_on_slice_zeros_tick() {
    let hub = hub(10, 10);
    let queues = swept_queues(&hub, 2);
    for queue in &queues {
        queue.mark_gone();
    }
    let registered = || {
        (
            hub.feeds[Feed::Alerts.index()].lock().subscribers.len(),
            hub.keepalive.lock().len(),
        )
    };
    for slice in 1..SWEEP_SLICES {
        hub.heartbeat_sweep_slice(Some(slice));
        hub.keepalive_sweep_slice(Some(slice));
    }
    assert!(
        queues.iter().all(|q| q.is_empty()),
        "a gone queue gets nothing"
    );
    assert_eq!(registered(), (queues.len(), queues.len()));
    hub.heartbeat_sweep_slice(Some(0));
    hub.keepalive_sweep_slice(Some(0));
    assert_eq!(registered(), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_running_sweep_spreads_one_interval_over_its_slices() {
    let settings = HubSettings {
        heartbeat_interval: Duration::from_millis(1600),
        ..HubSettings::default()
    };
    let hub = Arc::new(Hub::new(
        SymbolUniverse::new(["AAPL"]),
        settings,
        Arc::new(Metrics::default()),
        7,
    ));
    let queues: Vec<_> = (0..4 * usize::from(SWEEP_SLICES))
        .map(|_| SubscriberQueue::with_capacity(10))
        .collect();
    for queue in &queues {
        hub.subscribe(Feed::News, Filter::everything(), None, false, queue);
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&hub).run_heartbeats(shutdown.clone()));
    // One tick (100 ms): one slice.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let first: Vec<usize> = queues.iter().map(|q| heartbeats(q)).collect();
    let reached = first.iter().filter(|&&n| n == 1).count();
    assert!(reached > 0 && reached < queues.len(), "{reached} reached");
    // The rest of the interval: every other queue, and nobody twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (queue, before) in queues.iter().zip(first) {
        assert_eq!(before + heartbeats(queue), 1);
    }
    shutdown.cancel();
    task.await.expect("sweep ends on shutdown");
}

#[test]
fn the_keepalive_tick_is_queued_behind_pending_data_but_a_feed_heartbeat_is_not() {
    let hub = hub(10, 10);
    let queue = SubscriberQueue::with_capacity(10);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    hub.keep_alive(&queue);
    hub.publish_event(trade("AAPL", 1, 100.0))
        .expect("valid trade");
    // The SSE heartbeat sweep skips a busy queue; the WebSocket keep-alive does not, since
    // the connection reads its ping clock only when it drains a tick.
    hub.heartbeat_sweep();
    hub.keepalive_sweep();
    let mut items = VecDeque::new();
    queue.drain_into(&mut items);
    assert!(matches!(items.pop_front(), Some(Delivery::Event(_))));
    assert!(matches!(items.pop_front(), Some(Delivery::Heartbeat)));
    assert!(items.is_empty(), "one tick, no feed heartbeat");
}

#[test]
fn full_queue_conflates_price_data_then_disconnects() {
    let hub = hub(100, 4);
    let queue = SubscriberQueue::with_capacity(4);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    for id in 1..=6 {
        hub.publish_event(trade("AAPL", id, 10.0 + id as f64))
            .expect("valid");
    }
    // Conflation kept the newest AAPL trade only, plus what arrived after.
    let items = drain(&queue);
    assert!(items.len() <= 4, "queue stayed bounded: {}", items.len());
    assert!(hub.metrics().conflated.load(Ordering::Relaxed) >= 3);
    let last = items.last().expect("an item");
    assert!(matches!(last, Delivery::Event(e) if e.seq == 6));

    // Distinct symbols and kinds cannot be conflated away: the client is closed.
    let queue = SubscriberQueue::with_capacity(2);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    hub.publish_event(trade("AAPL", 10, 10.0)).expect("valid");
    hub.publish_event(quote("AAPL", 11)).expect("valid");
    hub.publish_event(trade("MSFT", 12, 10.0)).expect("valid");
    let items = drain(&queue);
    assert!(matches!(
        items.as_slice(),
        [Delivery::Close(CloseReason::SlowClient)]
    ));
    assert_eq!(
        hub.metrics()
            .slow_client_disconnects
            .load(Ordering::Relaxed),
        1
    );
}

#[test]
fn time_going_backwards_is_rejected_without_consuming_a_sequence_number() {
    let hub = hub(10, 10);
    hub.publish_event(trade("AAPL", 5, 10.0)).expect("valid");
    let error = hub.publish_event(trade("AAPL", 4, 10.0)).unwrap_err();
    assert!(matches!(
        error,
        PublishError::Invalid(InvalidEvent::TimeWentBackwards { .. })
    ));
    let next = hub.publish_event(trade("AAPL", 6, 10.0)).expect("valid");
    assert_eq!(next.entry.seq, 2);
}

#[test]
fn resume_reports_reset_for_foreign_epoch_old_cursor_and_future_cursor() {
    let hub = hub(3, 10);
    for id in 1..=6 {
        hub.publish_event(trade("AAPL", id, 10.0)).expect("valid");
    }
    let queue = SubscriberQueue::with_capacity(10);
    let check = |cursor: Cursor| {
        hub.subscribe(
            Feed::Market,
            Filter::everything(),
            Some(cursor),
            true,
            &queue,
        )
    };
    assert_eq!(
        check(Cursor { epoch: 1, seq: 5 }).reset,
        Some(ResetReason::EpochChanged)
    );
    assert_eq!(
        check(Cursor { epoch: 7, seq: 1 }).reset,
        Some(ResetReason::CursorTooOld)
    );
    assert_eq!(
        check(Cursor { epoch: 7, seq: 9 }).reset,
        Some(ResetReason::CursorAhead)
    );
    let ok = check(Cursor { epoch: 7, seq: 3 });
    assert_eq!(ok.reset, None);
    assert!(ok.snapshot.is_none());
    let seqs: Vec<u64> = ok.replay.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![4, 5, 6]);
}

fn big_news(id: u64) -> MarketEvent {
    MarketEvent::News(crate::market::News {
        id,
        headline: "H".repeat(1000),
        summary: "S".repeat(16_000),
        author: String::new(),
        source: String::new(),
        url: String::new(),
        symbols: vec!["AAPL".into()],
        created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        updated_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
    })
}

#[test]
fn the_replay_window_is_bounded_in_bytes_too_and_an_evicted_cursor_resets() {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(
        SymbolUniverse::new(["AAPL", "MSFT"]),
        HubSettings {
            replay_window: 1000,
            replay_window_bytes: 200_000,
            ..HubSettings::default()
        },
        Arc::clone(&metrics),
        7,
    );
    for id in 1..=40 {
        hub.publish_event(big_news(id)).expect("valid news");
    }
    let held = metrics.replay_window_bytes[1].load(Ordering::Relaxed);
    assert!(held <= 200_000 && held > 150_000, "{held} bytes held");
    let evicted = metrics.replay_evicted_budget[1].load(Ordering::Relaxed);
    assert!(evicted >= 30, "{evicted} evicted by budget");
    assert_eq!(metrics.replay_evicted_count[1].load(Ordering::Relaxed), 0);
    let queue = SubscriberQueue::with_capacity(10);
    let old = hub.subscribe(
        Feed::News,
        Filter::everything(),
        Some(Cursor { epoch: 7, seq: 2 }),
        false,
        &queue,
    );
    assert_eq!(old.reset, Some(ResetReason::CursorTooOld));
    let recent = hub.subscribe(
        Feed::News,
        Filter::everything(),
        Some(Cursor { epoch: 7, seq: 38 }),
        false,
        &queue,
    );
    assert_eq!(
        recent.replay.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![39, 40]
    );
    // A single entry larger than the whole budget is still kept (the newest always is).
    let tiny = Hub::new(
        SymbolUniverse::new(["AAPL"]),
        HubSettings {
            replay_window_bytes: 1000,
            ..HubSettings::default()
        },
        Arc::new(Metrics::default()),
        7,
    );
    tiny.publish_event(big_news(1)).expect("valid news");
    tiny.publish_event(big_news(2)).expect("valid news");
    let kept = tiny.subscribe(
        Feed::News,
        Filter::everything(),
        Some(Cursor { epoch: 7, seq: 1 }),
        false,
        &queue,
    );
    assert_eq!(kept.replay.len(), 1);
}

#[test]
fn sequenced_events_keep_their_given_numbers_and_the_publishers_bytes() {
    let hub = hub(10, 10);
    let queue = SubscriberQueue::with_capacity(10);
    hub.reset_feed(Feed::Market, 9, 41, false);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    let json = serde_json::to_vec(&trade("AAPL", 5, 10.0)).unwrap_or_default();
    let applied = hub.apply_sequenced(41, &json).expect("applied");
    assert_eq!(applied.entry.json.as_ref(), json.as_slice());
    assert!(applied.entry.sse.starts_with(b"id: 9-41\n"));
    // Time order was checked where the event was sequenced: an older one still applies.
    let older = serde_json::to_vec(&trade("AAPL", 4, 10.0)).unwrap_or_default();
    assert_eq!(
        hub.apply_sequenced(42, &older).expect("applied").entry.seq,
        42
    );
    assert_eq!(hub.cursor(Feed::Market), Cursor { epoch: 9, seq: 42 });
    assert_eq!(drain(&queue).len(), 2);
    assert!(hub.apply_sequenced(43, b"not json").is_err());
}

#[test]
fn a_reset_closes_subscribers_and_their_old_cursor_then_gets_an_explicit_reset() {
    let hub = hub(10, 10);
    for id in 1..=3 {
        hub.publish_event(trade("AAPL", id, 10.0)).expect("valid");
    }
    let queue = SubscriberQueue::with_capacity(10);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    // The same epoch, but the log continues at 20: 4..=19 were never seen here.
    hub.reset_feed(Feed::Market, 7, 20, true);
    assert!(matches!(
        drain(&queue).as_slice(),
        [Delivery::Close(CloseReason::Reset)]
    ));
    assert_eq!(hub.subscriber_count(Feed::Market), 0);
    let again = SubscriberQueue::with_capacity(10);
    let resumed = hub.subscribe(
        Feed::Market,
        Filter::everything(),
        Some(Cursor { epoch: 7, seq: 3 }),
        true,
        &again,
    );
    assert_eq!(resumed.reset, Some(ResetReason::CursorTooOld));
    // Latest values survive a reset: the snapshot still has the last trade.
    assert_eq!(resumed.snapshot.map(|s| s.len()), Some(1));
    // A client that had everything up to 19 (from another node) resumes without a reset.
    let caught_up = hub.subscribe(
        Feed::Market,
        Filter::everything(),
        Some(Cursor { epoch: 7, seq: 19 }),
        false,
        &again,
    );
    assert_eq!(caught_up.reset, None);
}

#[test]
fn a_status_notice_reaches_every_feed_without_an_id_or_a_sequence_number() {
    let hub = hub(10, 10);
    let queues: Vec<_> = Feed::ALL
        .iter()
        .map(|feed| {
            let queue = SubscriberQueue::with_capacity(10);
            hub.subscribe(*feed, Filter::everything(), None, false, &queue);
            queue
        })
        .collect();
    let both = SubscriberQueue::with_capacity(10);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &both);
    hub.subscribe(Feed::News, Filter::everything(), None, false, &both);
    hub.notify_status("cluster_down", "redis unreachable");
    assert_eq!(drain(&both).len(), 1, "one notice per queue, not per feed");
    for queue in &queues {
        let items = drain(queue);
        let [Delivery::Event(entry)] = items.as_slice() else {
            panic!("one notice: {items:?}");
        };
        assert_eq!(entry.seq, 0);
        assert!(entry.sse.starts_with(b"event: status\ndata: {"));
        assert!(std::str::from_utf8(&entry.json).is_ok_and(|j| j.contains("cluster_down")));
    }
    assert_eq!(hub.cursor(Feed::Market).seq, 0, "no cursor moved");
}

#[test]
fn a_sealed_hub_refuses_sequenced_events_too_and_sends_no_notice_after_the_final_status() {
    let hub = hub(10, 10);
    hub.publish_event(trade("AAPL", 1, 10.0)).expect("valid");
    let queue = SubscriberQueue::with_capacity(10);
    hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
    hub.shut_down();
    let json = serde_json::to_vec(&trade("AAPL", 2, 10.0)).unwrap_or_default();
    assert!(matches!(
        hub.apply_sequenced(2, &json),
        Err(PublishError::ShuttingDown)
    ));
    assert!(matches!(
        hub.publish_event(trade("AAPL", 3, 10.0)),
        Err(PublishError::ShuttingDown)
    ));
    assert!(EventSink::is_sealed(&hub));
    assert_eq!(PublishError::ShuttingDown.reason_label(), "shutting_down");
    hub.notify_status("cluster_down", "lost Redis");
    assert!(matches!(
        drain(&queue).as_slice(),
        [Delivery::Close(CloseReason::Shutdown)]
    ));
    assert_eq!(hub.cursor(Feed::Market).seq, 1);
}
