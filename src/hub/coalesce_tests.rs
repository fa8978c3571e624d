//! The coalescing window against a recording sink: one "write" per `Ready`, on tokio's paused
//! clock, so the assertions are about which events share a write and how long each waited,
//! never about the machine's speed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::hub::entry::{Entry, encode_notice};
use crate::hub::queue::{CloseReason, Delivery};
use crate::metrics::Metrics;

const WINDOW: Duration = Duration::from_millis(20);
/// Tokio's timer wheel fires on whole milliseconds.
const TIMER_SLACK: Duration = Duration::from_millis(1);

fn event(n: usize) -> Arc<Entry> {
    Arc::new(encode_notice(format!("{{\"n\":{n}}}").as_bytes(), false))
}

fn number(entry: &Entry) -> usize {
    let json = std::str::from_utf8(&entry.json).unwrap_or_default();
    json.trim_start_matches("{\"n\":")
        .trim_end_matches('}')
        .parse()
        .unwrap_or(usize::MAX)
}

/// One write as the sink saw it: when, and which events (by number) it carried.
#[derive(Debug, Clone)]
struct Write {
    at: Instant,
    events: Vec<usize>,
    closed: bool,
}

/// A connection that writes to a recording sink: waits for `poll_ready`, drains everything,
/// records it as one write, tells the coalescer. Ends after writing a close.
fn spawn_sink(
    queue: Arc<SubscriberQueue>,
    window: Duration,
) -> (Arc<Mutex<Vec<Write>>>, tokio::task::JoinHandle<()>) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&writes);
    let task = tokio::spawn(async move {
        let mut coalescer = Coalescer::new(window);
        let mut drained = VecDeque::new();
        loop {
            std::future::poll_fn(|cx| coalescer.poll_ready(&queue, cx)).await;
            queue.drain_into(&mut drained);
            if drained.is_empty() {
                continue;
            }
            let mut write = Write {
                at: Instant::now(),
                events: Vec::new(),
                closed: false,
            };
            for item in drained.drain(..) {
                match item {
                    Delivery::Event(entry) => write.events.push(number(&entry)),
                    Delivery::Close(_) => write.closed = true,
                    Delivery::Heartbeat => {}
                }
            }
            let closed = write.closed;
            recorded.lock().push(write);
            coalescer.wrote(&queue);
            if closed {
                return;
            }
        }
    });
    (writes, task)
}

/// Pushes `count` events `gap` apart, starting now; returns each one's push time.
async fn publish(
    queue: &SubscriberQueue,
    metrics: &Metrics,
    first: usize,
    count: usize,
    gap: Duration,
) -> Vec<Instant> {
    let mut pushed = Vec::new();
    for n in first..first + count {
        pushed.push(Instant::now());
        queue.push_event(&event(n), metrics);
        tokio::time::sleep(gap).await;
    }
    pushed
}

/// Pushes `count` events in groups of `group` pushed at the same instant, `gap` apart: the
/// connection finds a whole group at each wake-up, as one that has fallen behind its stream
/// does (on a loaded core its wake-ups come late; here they come at once, but after the
/// group). Returns each one's push time.
async fn publish_grouped(
    queue: &SubscriberQueue,
    metrics: &Metrics,
    first: usize,
    count: usize,
    group: usize,
    gap: Duration,
) -> Vec<Instant> {
    let mut pushed = Vec::new();
    for n in first..first + count {
        pushed.push(Instant::now());
        queue.push_event(&event(n), metrics);
        if (n - first + 1).is_multiple_of(group) {
            tokio::time::sleep(gap).await;
        }
    }
    pushed
}

/// Makes the connection behind: [`BEHIND_WRITES`] late wake-ups in a row, each finding two
/// events (numbered from 0). It then holds its next write for a window.
async fn fall_behind(queue: &SubscriberQueue, metrics: &Metrics) -> usize {
    let count = usize::from(BEHIND_WRITES) * 2;
    publish_grouped(queue, metrics, 0, count, 2, Duration::from_millis(1)).await;
    count
}

fn all_events(writes: &[Write]) -> Vec<usize> {
    writes.iter().flat_map(|w| w.events.clone()).collect()
}

/// Checks that every event was written, in order, at the instant it was pushed.
fn assert_none_held(writes: &[Write], pushed: &[Instant]) {
    assert_eq!(all_events(writes), (0..pushed.len()).collect::<Vec<_>>());
    for (n, (written, pushed)) in written_at(writes, pushed.len())
        .iter()
        .zip(pushed)
        .enumerate()
    {
        assert_eq!(*written, Some(*pushed), "event {n} was held");
    }
}

/// When each event was written, by number.
fn written_at(writes: &[Write], count: usize) -> Vec<Option<Instant>> {
    let mut at = vec![None; count];
    for write in writes {
        for &n in &write.events {
            if let Some(slot) = at.get_mut(n) {
                *slot = Some(write.at);
            }
        }
    }
    at
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_falls_behind_writes_several_pending_events_in_one_write_in_order() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 200 events a second, and every wake-up finds two: the connection is behind, and from
    // its second late wake-up on it holds each write for a window (four events a write).
    let pushed = publish_grouped(&queue, &metrics, 0, 200, 2, Duration::from_millis(10)).await;
    tokio::time::sleep(WINDOW * 2).await;

    let writes = writes.lock().clone();
    assert_eq!(
        all_events(&writes),
        (0..200).collect::<Vec<_>>(),
        "every event, in order"
    );
    assert!(
        writes.len() <= 200 / 3,
        "{} writes for 200 events: the window did not coalesce",
        writes.len()
    );
    let biggest = writes.iter().map(|w| w.events.len()).max().unwrap_or(0);
    assert!(biggest >= 3, "no write carried several events: {writes:?}");
    for (n, (pushed, written)) in pushed.iter().zip(written_at(&writes, 200)).enumerate() {
        let written = written.unwrap_or_else(|| panic!("event {n} was never written"));
        assert!(
            written - *pushed <= WINDOW + TIMER_SLACK,
            "event {n} waited {:?}, more than the window",
            written - *pushed
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_connections_first_event_is_written_at_once() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // Quiet events, a burst the connection falls behind of (three events per wake-up),
    // then quiet again.
    let mut pushed = publish(&queue, &metrics, 0, 3, Duration::from_millis(100)).await;
    pushed.extend(publish_grouped(&queue, &metrics, 3, 39, 3, Duration::from_millis(4)).await);
    pushed.push(Instant::now());
    queue.push_event(&event(42), &metrics);
    tokio::time::sleep(Duration::from_millis(200)).await;
    pushed.extend(publish(&queue, &metrics, 43, 3, Duration::from_millis(100)).await);

    let writes = writes.lock().clone();
    assert_eq!(all_events(&writes), (0..46).collect::<Vec<_>>());
    let at = written_at(&writes, 46);
    // The burst's first two wake-ups are late but not yet behind: written at once.
    for n in [0, 1, 2, 3, 4, 5, 6, 7, 8, 43, 44, 45] {
        assert_eq!(
            at[n],
            Some(pushed[n]),
            "event {n} after a quiet spell was held"
        );
    }
    for n in 4..43 {
        let written = at[n].unwrap_or_else(|| panic!("event {n} was never written"));
        assert!(written - pushed[n] <= WINDOW + TIMER_SLACK);
    }
    let burst_writes = writes
        .iter()
        .filter(|w| w.events.iter().any(|n| (9..43).contains(n)))
        .count();
    assert!(
        burst_writes <= 8,
        "the burst took {burst_writes} writes for 34 events"
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_close_is_written_at_once_even_during_a_hold() {
    // Room for 8 items: conflation frees none (notices carry no symbol), so the ninth
    // push closes the queue.
    let queue = SubscriberQueue::with_capacity(8);
    let metrics = Metrics::default();
    let (writes, task) = spawn_sink(Arc::clone(&queue), Duration::from_secs(10));
    // Behind: the connection now holds for ten seconds.
    let first = fall_behind(&queue, &metrics).await;
    let holding_from = Instant::now();
    for n in first..first + 18 {
        queue.push_event(&event(n), &metrics);
    }
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the close ended the hold")
        .expect("the sink task");

    let writes = writes.lock().clone();
    let last = writes.last().expect("writes");
    assert!(last.closed, "the queue's close was written: {writes:?}");
    assert!(last.at - holding_from < Duration::from_secs(1));
    assert_eq!(
        metrics
            .slow_client_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(queue.is_gone());
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_close_ends_a_hold_at_once() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, task) = spawn_sink(Arc::clone(&queue), Duration::from_secs(10));
    let first = fall_behind(&queue, &metrics).await;
    assert_eq!(first, 4);
    queue.push_event(&event(4), &metrics);
    queue.push_control(Delivery::Close(CloseReason::Shutdown));
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the close ended the hold")
        .expect("the sink task");
    let writes = writes.lock().clone();
    assert_eq!(
        all_events(&writes),
        vec![0, 1, 2, 3, 4],
        "held events go out before the close"
    );
    assert!(writes.last().is_some_and(|w| w.closed));
}

#[tokio::test(start_paused = true)]
async fn a_zero_window_writes_every_event_when_it_arrives() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), Duration::ZERO);
    let pushed = publish(&queue, &metrics, 0, 50, Duration::from_millis(1)).await;
    let writes = writes.lock().clone();
    assert_eq!(writes.len(), 50, "one write per event");
    for (write, pushed) in writes.iter().zip(&pushed) {
        assert_eq!(write.at, *pushed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_below_three_events_per_window_is_never_held() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 100 events a second against a 20 ms window: two per window.
    let pushed = publish(&queue, &metrics, 0, 100, Duration::from_millis(10)).await;
    let writes = writes.lock().clone();
    assert_eq!(writes.len(), 100);
    for (write, pushed) in writes.iter().zip(&pushed) {
        assert_eq!(write.at, *pushed, "{write:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_jittery_stream_of_a_hundred_events_a_second_is_never_held() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 100 events a second on average, as a real publisher sends them: gaps of 4 and 16 ms
    // in turn. A rule that looked only at the gap to the previous write held every other
    // event for up to a window; counting the window's writes sees at most three.
    let mut pushed = Vec::new();
    for pair in 0..50 {
        pushed.extend(publish(&queue, &metrics, pair * 2, 1, Duration::from_millis(4)).await);
        pushed.extend(publish(&queue, &metrics, pair * 2 + 1, 1, Duration::from_millis(16)).await);
    }
    let writes = writes.lock().clone();
    assert_none_held(&writes, &pushed);
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_with_bursty_gaps_is_never_held() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 100 events a second as a publisher with a late tick sends them: per 50 ms, events at
    // 0, 3, 6, 6 (the late tick and, at once, the next) and 9 ms. Five events within 10 ms,
    // four writes: a rule counting writes per window held the fourth write. The connection
    // keeps up (only the pair comes before it gets to the first of them), so nothing waits.
    let mut pushed = Vec::new();
    for cycle in 0..20 {
        let first = cycle * 5;
        pushed.extend(publish(&queue, &metrics, first, 2, Duration::from_millis(3)).await);
        pushed.extend(
            publish_grouped(&queue, &metrics, first + 2, 2, 2, Duration::from_millis(3)).await,
        );
        pushed.extend(publish(&queue, &metrics, first + 4, 1, Duration::from_millis(41)).await);
    }
    let writes = writes.lock().clone();
    assert_none_held(&writes, &pushed);
    assert_eq!(writes.len(), 80, "the pairs share a write: {writes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_publisher_catching_up_after_a_stall_is_not_held() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 100 events a second whose publisher stalls for 150 ms three times, then sends what
    // it owes back to back, 1 ms apart, as a load generator or a feed handler catching up
    // does. Every wake-up is on time. Averaged per write, the fifteen short gaps outweighed
    // the long one and held the stream; over time it never passes 100 events a second.
    let mut pushed = Vec::new();
    let mut next = 0;
    for _ in 0..3 {
        pushed.extend(publish(&queue, &metrics, next, 20, Duration::from_millis(10)).await);
        next += 20;
        tokio::time::sleep(Duration::from_millis(140)).await;
        pushed.extend(publish(&queue, &metrics, next, 15, Duration::from_millis(1)).await);
        next += 15;
    }
    pushed.extend(publish(&queue, &metrics, next, 20, Duration::from_millis(10)).await);
    let writes = writes.lock().clone();
    assert_none_held(&writes, &pushed);
}

#[tokio::test(start_paused = true)]
async fn a_fast_stream_is_held_once_its_rate_over_time_passes_three_events_a_window() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    // 250 events a second, every wake-up on time (as on a process that serves a publish
    // only after every connection the previous one woke): the rate alone makes it behind,
    // after a few writes, not at the first quick one.
    let pushed = publish(&queue, &metrics, 0, 250, Duration::from_millis(4)).await;
    tokio::time::sleep(WINDOW * 2).await;
    let writes = writes.lock().clone();
    assert_eq!(all_events(&writes), (0..250).collect::<Vec<_>>());
    let at = written_at(&writes, 250);
    for n in 0..4 {
        assert_eq!(at[n], Some(pushed[n]), "event {n} was held");
    }
    assert!(
        writes.len() <= 250 / 3,
        "{} writes for 250 events: the window did not coalesce",
        writes.len()
    );
    for (n, (pushed, written)) in pushed.iter().zip(at).enumerate() {
        let written = written.unwrap_or_else(|| panic!("event {n} was never written"));
        assert!(written - *pushed <= WINDOW + TIMER_SLACK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_behind_writes_at_once_again_when_its_stream_slows() {
    let queue = SubscriberQueue::with_capacity(1024);
    let metrics = Metrics::default();
    let (writes, _task) = spawn_sink(Arc::clone(&queue), WINDOW);
    let first = fall_behind(&queue, &metrics).await;
    // Two events a window: the first hold gathers fewer than three, so the connection
    // keeps up again and every later event is written when it arrives.
    let pushed = publish(&queue, &metrics, first, 20, Duration::from_millis(10)).await;
    let writes = writes.lock().clone();
    let at = written_at(&writes, first + 20);
    let held: Vec<usize> = (first..first + 20)
        .filter(|&n| at[n] != Some(pushed[n - first]))
        .collect();
    assert!(
        !held.is_empty() && held.len() <= 2,
        "only the events of the first hold wait: {held:?}"
    );
    for n in held {
        let written = at[n].unwrap_or_else(|| panic!("event {n} was never written"));
        assert!(written - pushed[n - first] <= WINDOW + TIMER_SLACK);
    }
}
