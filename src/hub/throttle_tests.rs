//! Tests of the throttle: the rate per symbol, the newest value winning, the first update of a
//! quiet symbol at once, bars and statuses never dropped and in order, and the resume cursor.
//! Time is explicit (`now` arguments on tokio's `Instant`), so no test waits.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;
use crate::hub::Cursor;
use crate::hub::entry::encode_entry;

fn entry(seq: u64, kind: EventKind, symbol: Option<SymbolId>) -> Arc<Entry> {
    let json = format!("{{\"seq\":{seq}}}");
    Arc::new(encode_entry(
        if kind == EventKind::News {
            Feed::News
        } else {
            Feed::Market
        },
        Cursor { epoch: 1, seq },
        kind,
        symbol,
        Box::default(),
        json.as_bytes(),
        None,
    ))
}

fn rate(per_second: u64) -> MaxRate {
    MaxRate::new(per_second).expect("a valid rate")
}

fn seqs(entries: &[Arc<Entry>]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

#[test]
fn max_rate_accepts_one_to_a_thousand_and_nothing_else() {
    assert_eq!(MaxRate::parse("1").map(MaxRate::per_second), Ok(1));
    assert_eq!(MaxRate::parse("1000").map(MaxRate::per_second), Ok(1000));
    for bad in [
        "0",
        "1001",
        "-1",
        "2.5",
        "",
        "ten",
        "99999999999",
        "+5",
        " ",
    ] {
        assert_eq!(MaxRate::parse(bad), Err(InvalidMaxRate), "{bad:?}");
    }
    assert_eq!(rate(4).interval(), Duration::from_millis(250));
}

#[test]
fn the_first_update_of_a_quiet_symbol_goes_out_at_once_and_the_next_waits_for_the_window() {
    let start = Instant::now();
    let mut throttle = Throttle::new(rate(10), start, 0);
    let mut out = Vec::new();
    throttle.take(entry(1, EventKind::Trade, Some(0)));
    throttle.release(start, &mut out);
    assert_eq!(seqs(&out), [1], "a quiet symbol is released at once");
    out.clear();
    let later = start + Duration::from_millis(30);
    throttle.take(entry(2, EventKind::Trade, Some(0)));
    throttle.take(entry(3, EventKind::Trade, Some(0)));
    throttle.release(later, &mut out);
    assert!(out.is_empty(), "the window of 100 ms is still running");
    let due = throttle.next_release().expect("a trade is held");
    assert!(
        due >= start + Duration::from_millis(100),
        "{:?}",
        due - start
    );
    throttle.release(due, &mut out);
    assert_eq!(seqs(&out), [3], "only the newest trade goes out");
    assert_eq!(throttle.take_replaced(), 1);
    // Another symbol is quiet: its first update does not wait for the first one's window.
    out.clear();
    throttle.take(entry(4, EventKind::Trade, Some(0)));
    throttle.take(entry(5, EventKind::Quote, Some(1)));
    throttle.release(due, &mut out);
    assert_eq!(seqs(&out), [5]);
}

#[test]
fn a_bar_waits_behind_its_own_symbols_held_trade_but_not_behind_another_symbols() {
    let start = Instant::now();
    let mut throttle = Throttle::new(rate(2), start, 0);
    let mut out = Vec::new();
    throttle.take(entry(1, EventKind::Trade, Some(0)));
    throttle.release(start, &mut out);
    out.clear();
    let now = start + Duration::from_millis(10);
    throttle.take(entry(2, EventKind::Trade, Some(0)));
    throttle.take(entry(3, EventKind::Bar, Some(0)));
    throttle.take(entry(4, EventKind::Bar, Some(1)));
    throttle.take(entry(5, EventKind::Status, None));
    throttle.release(now, &mut out);
    assert_eq!(
        seqs(&out),
        [4, 5],
        "only the bar of the other symbol and `*` go out"
    );
    assert_eq!(throttle.cursor(), 1, "trade 2 and bar 3 are still held");
    out.clear();
    let due = throttle.next_release().expect("held");
    throttle.release(due, &mut out);
    assert_eq!(seqs(&out), [2, 3], "the held trade, then the bar behind it");
    assert_eq!(throttle.cursor(), 5);
}

#[test]
fn windows_of_busy_symbols_end_together_on_the_grid() {
    let start = Instant::now();
    let mut throttle = Throttle::new(rate(10), start, 0);
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = |kind, symbol| {
        seq += 1;
        entry(seq, kind, Some(symbol))
    };
    // Two symbols first heard 7 ms apart, then both busy.
    throttle.take(next(EventKind::Trade, 0));
    throttle.release(start, &mut out);
    let later = start + Duration::from_millis(7);
    throttle.take(next(EventKind::Trade, 1));
    throttle.release(later, &mut out);
    throttle.take(next(EventKind::Trade, 0));
    throttle.take(next(EventKind::Trade, 1));
    let due = throttle.next_release().expect("held");
    // Symbol 0's window ends at 100 ms; symbol 1's at 107 ms, rounded up to 125 ms.
    assert_eq!(due - start, Duration::from_millis(100));
    out.clear();
    throttle.release(due, &mut out);
    assert_eq!(out.len(), 1);
    throttle.take(next(EventKind::Trade, 0));
    let due = throttle.next_release().expect("held");
    assert_eq!(due - start, Duration::from_millis(125));
    out.clear();
    throttle.release(due, &mut out);
    assert_eq!(out.len(), 1, "symbol 1 only: symbol 0 waits until 200 ms");
    throttle.take(next(EventKind::Trade, 1));
    let due = throttle.next_release().expect("held");
    assert_eq!(due - start, Duration::from_millis(200));
    out.clear();
    throttle.release(due, &mut out);
    assert_eq!(out.len(), 1, "symbol 0");
    let due = throttle.next_release().expect("symbol 1 still held");
    assert_eq!(due - start, Duration::from_millis(225));
}

#[test]
fn release_all_flushes_everything_held_in_sequence_order() {
    let start = Instant::now();
    let mut throttle = Throttle::new(rate(1), start, 0);
    let mut out = Vec::new();
    throttle.take(entry(1, EventKind::Quote, Some(3)));
    throttle.release(start, &mut out);
    throttle.take(entry(2, EventKind::Quote, Some(3)));
    throttle.take(entry(3, EventKind::Status, Some(3)));
    throttle.take(entry(4, EventKind::Trade, Some(3)));
    out.clear();
    throttle.release_all(&mut out);
    assert_eq!(seqs(&out), [2, 3, 4]);
    assert_eq!(throttle.next_release(), None);
    assert_eq!(throttle.cursor(), 4);
}

/// One published event of the simulated market: when, what, which symbol.
#[derive(Debug, Clone)]
struct Published {
    at_ms: u64,
    kind: EventKind,
    symbol: SymbolId,
}

fn market() -> impl Strategy<Value = (u64, Vec<Published>)> {
    let event = (
        0..40u64,
        prop_oneof![
            6 => Just(EventKind::Trade),
            6 => Just(EventKind::Quote),
            1 => Just(EventKind::Bar),
            1 => Just(EventKind::Status),
        ],
        0..4 as SymbolId,
    );
    (
        prop_oneof![Just(1u64), Just(3), Just(10), Just(50), Just(1000)],
        prop::collection::vec(event, 1..400),
    )
        .prop_map(|(rate, events)| {
            let mut at_ms = 0;
            let events = events
                .into_iter()
                .map(|(gap, kind, symbol)| {
                    at_ms += gap;
                    Published {
                        at_ms,
                        kind,
                        symbol,
                    }
                })
                .collect();
            (rate, events)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Drives a throttle as a connection does (a drain per moment events arrive, a release
    /// whenever the next window ends) over a random market, and checks every rule at once.
    #[test]
    fn a_throttled_stream_keeps_its_rate_the_newest_values_and_every_bar_and_status(
        (per_second, events) in market()
    ) {
        let start = Instant::now();
        let rate = rate(per_second);
        let mut throttle = Throttle::new(rate, start, 0);
        let mut sent: Vec<(Instant, Arc<Entry>)> = Vec::new();
        let mut published: Vec<(Instant, Arc<Entry>)> = Vec::new();
        let mut out = Vec::new();
        let mut index = 0;
        let mut last_cursor = 0;
        let end = start + Duration::from_millis(events.last().map_or(0, |e| e.at_ms)) + Duration::from_secs(2);
        let mut now = start;
        while now <= end {
            // Everything published at this moment is one drain.
            let mut any = false;
            while index < events.len() && start + Duration::from_millis(events[index].at_ms) <= now {
                let event = &events[index];
                let published_entry = entry(index as u64 + 1, event.kind, Some(event.symbol));
                published.push((now, Arc::clone(&published_entry)));
                throttle.take(published_entry);
                index += 1;
                any = true;
            }
            let due = throttle.next_release().is_some_and(|due| due <= now);
            if any || due {
                out.clear();
                throttle.release(now, &mut out);
                for released in out.drain(..) {
                    sent.push((now, released));
                }
            }
            let cursor = throttle.cursor();
            prop_assert!(cursor >= last_cursor, "the cursor never goes back");
            last_cursor = cursor;
            // Everything at or below the cursor was sent, or (a trade or quote) replaced by a
            // newer one of its symbol and kind: that one is either at or below the cursor,
            // and so covered in turn, or above it, and so replayed on a resume.
            for (_, event) in published.iter().filter(|(_, e)| e.seq <= cursor) {
                let covered = sent.iter().any(|(_, s)| s.seq == event.seq)
                    || (matches!(event.kind, EventKind::Trade | EventKind::Quote)
                        && published.iter().any(|(_, p)| {
                            p.kind == event.kind && p.symbol == event.symbol && p.seq > event.seq
                        }));
                prop_assert!(covered, "event {} is below the cursor {cursor} but never covered", event.seq);
            }
            // The next moment: the next publish or the next window end, whichever comes first.
            let next_publish = events.get(index).map(|e| start + Duration::from_millis(e.at_ms));
            let next_due = throttle.next_release();
            now = match (next_publish, next_due) {
                (Some(a), Some(b)) => a.min(b).max(now + Duration::from_micros(1)),
                (Some(a), None) => a,
                (None, Some(b)) => b.max(now + Duration::from_micros(1)),
                (None, None) => break,
            };
        }
        prop_assert_eq!(throttle.next_release(), None, "nothing stays held");
        // Rate: per symbol and kind, trades and quotes at least one interval apart.
        let mut last: HashMap<(SymbolId, bool), Instant> = HashMap::new();
        for (at, released) in &sent {
            if matches!(released.kind, EventKind::Trade | EventKind::Quote) {
                let key = (released.symbol.unwrap_or_default(), released.kind == EventKind::Trade);
                if let Some(previous) = last.insert(key, *at) {
                    prop_assert!(*at - previous >= rate.interval(), "{key:?} sent {:?} apart", *at - previous);
                }
            }
        }
        // Bars and statuses: every one exactly once; per symbol, sent in publish order.
        let never_dropped = |kind: EventKind| matches!(kind, EventKind::Bar | EventKind::Status);
        let published_kept: Vec<u64> = published.iter().filter(|(_, e)| never_dropped(e.kind)).map(|(_, e)| e.seq).collect();
        let mut sent_kept: Vec<u64> = sent.iter().filter(|(_, e)| never_dropped(e.kind)).map(|(_, e)| e.seq).collect();
        sent_kept.sort_unstable();
        prop_assert_eq!(published_kept, sent_kept);
        let mut per_symbol: BTreeMap<SymbolId, u64> = BTreeMap::new();
        for (_, released) in &sent {
            let symbol = released.symbol.unwrap_or_default();
            let previous = per_symbol.insert(symbol, released.seq).unwrap_or(0);
            prop_assert!(released.seq > previous, "symbol {symbol}: {} after {previous}", released.seq);
        }
        // Newest wins: the last trade and quote of each symbol is delivered, and nothing older
        // than something already sent of its symbol and kind is sent.
        for (_, event) in &published {
            if matches!(event.kind, EventKind::Trade | EventKind::Quote) {
                let newer = published.iter().any(|(_, e)| e.seq > event.seq && e.kind == event.kind && e.symbol == event.symbol);
                if !newer {
                    prop_assert!(sent.iter().any(|(_, s)| s.seq == event.seq), "the newest {} was never sent", event.seq);
                }
            }
        }
        // The first update of a quiet symbol is immediate: a trade or quote published when its
        // symbol had sent nothing for a whole interval and held nothing goes out at once.
        for (at, event) in &published {
            if !matches!(event.kind, EventKind::Trade | EventKind::Quote) {
                continue;
            }
            let quiet = !sent.iter().any(|(s_at, s)| {
                s.symbol == event.symbol
                    && matches!(s.kind, EventKind::Trade | EventKind::Quote)
                    && *s_at <= *at
                    && *at - *s_at < rate.interval() * 2
            }) && !published.iter().any(|(p_at, p)| p.symbol == event.symbol && p.seq < event.seq && *at - *p_at < rate.interval() * 2);
            if quiet {
                let delivered_at = sent.iter().find(|(_, s)| s.symbol == event.symbol && s.seq >= event.seq).map(|(s_at, _)| *s_at);
                prop_assert_eq!(delivered_at, Some(*at), "quiet symbol's update {} not sent at once", event.seq);
            }
        }
    }
}

#[test]
fn slots_of_symbols_gone_quiet_are_dropped_and_a_dropped_slot_counts_as_quiet() {
    let start = Instant::now();
    let mut throttle = Throttle::new(rate(10), start, 0);
    let mut out = Vec::new();
    for symbol in 0..50 {
        throttle.take(entry(u64::from(symbol) + 1, EventKind::Trade, Some(symbol)));
    }
    throttle.release(start, &mut out);
    assert_eq!(out.len(), 50);
    assert_eq!(throttle.slots.len(), 50);
    // Long after: symbol 7 trades again; the sweep drops every other slot.
    let later = start + Duration::from_secs(11);
    out.clear();
    throttle.take(entry(100, EventKind::Trade, Some(7)));
    throttle.release(later, &mut out);
    assert_eq!(seqs(&out), [100], "quiet, so at once");
    assert_eq!(
        throttle.slots.len(),
        1,
        "only symbol 7's running window is kept"
    );
    out.clear();
    throttle.take(entry(101, EventKind::Trade, Some(8)));
    throttle.release(later, &mut out);
    assert_eq!(seqs(&out), [101], "a dropped slot is a quiet symbol");
    // Symbol 7's slot moved to the front of the table; its window still runs.
    out.clear();
    throttle.take(entry(102, EventKind::Trade, Some(7)));
    throttle.take(entry(103, EventKind::Trade, Some(49)));
    throttle.release(later, &mut out);
    assert_eq!(
        seqs(&out),
        [103],
        "7 is held behind its window, 49 is quiet"
    );
    assert_eq!(
        throttle.slot_of.len(),
        50,
        "the index reaches the highest id held"
    );
}

/// A connection over a real queue that drains only when the queue wakes it or its throttle's
/// [`Throttle::next_wake`] has come, as the transports' connections do.
struct Sleeper {
    queue: Arc<SubscriberQueue>,
    throttle: Throttle,
    metrics: crate::metrics::Metrics,
    spare: std::collections::VecDeque<super::super::Delivery>,
    /// Sort each drain by sequence before the throttle takes it, as the WebSocket session
    /// does (the SSE stream takes the queue's order).
    sorted: bool,
    /// How many times it drained and released.
    wakes: u64,
    /// The most items one drain took.
    most_drained: usize,
}

impl Sleeper {
    fn new(rate: MaxRate, start: Instant) -> Sleeper {
        Sleeper {
            queue: SubscriberQueue::with_capacity(1024),
            throttle: Throttle::new(rate, start, 0),
            metrics: crate::metrics::Metrics::default(),
            spare: std::collections::VecDeque::new(),
            sorted: false,
            wakes: 0,
            most_drained: 0,
        }
    }

    fn sorted(rate: MaxRate, start: Instant) -> Sleeper {
        Sleeper {
            sorted: true,
            ..Sleeper::new(rate, start)
        }
    }

    fn push(&self, entry: &Arc<Entry>) {
        self.queue.push_event(entry, &self.metrics);
    }

    /// Runs the connection at `now` if it would be woken, appending what it releases.
    fn run(&mut self, now: Instant, out: &mut Vec<Arc<Entry>>) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let pushed = self.queue.poll_notified(&mut cx).is_ready();
        let due = self.throttle.next_wake().is_some_and(|due| due <= now);
        if !pushed && !due {
            return;
        }
        self.wakes += 1;
        self.queue.drain_into(&mut self.spare);
        self.most_drained = self.most_drained.max(self.spare.len());
        if self.sorted {
            self.spare.make_contiguous().sort_by_key(|item| match item {
                super::super::Delivery::Event(entry) => entry.seq,
                _ => u64::MAX,
            });
        }
        for item in self.spare.drain(..) {
            if let super::super::Delivery::Event(entry) = item {
                self.throttle.take(entry);
            }
        }
        self.throttle.release(now, out);
        self.throttle.share_windows(&self.queue);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The deferred wake-ups and the replacing in the queue change nothing a client sees: a
    /// connection that sleeps through trades and quotes of windowed symbols until its timer,
    /// while its queue keeps only the newest of each, sends exactly what one woken by every
    /// publish sends, at the same moments, whether it takes a drain in queue order (SSE) or
    /// sorted by sequence (WebSocket).
    #[test]
    fn a_connection_not_woken_for_windowed_symbols_sends_what_one_woken_by_every_publish_sends(
        (per_second, events) in market()
    ) {
        let start = Instant::now();
        let rate = rate(per_second);
        let mut eager = Throttle::new(rate, start, 0);
        let mut sleeper = Sleeper::new(rate, start);
        let mut sorting = Sleeper::sorted(rate, start);
        let mut eager_sent: Vec<(Instant, u64)> = Vec::new();
        let mut sleeper_sent: Vec<(Instant, u64)> = Vec::new();
        let mut sorting_sent: Vec<(Instant, u64)> = Vec::new();
        let mut out = Vec::new();
        let mut index = 0;
        let mut now = start;
        loop {
            let mut any = false;
            while index < events.len() && start + Duration::from_millis(events[index].at_ms) <= now {
                let event = &events[index];
                let published = entry(index as u64 + 1, event.kind, Some(event.symbol));
                sleeper.push(&published);
                sorting.push(&published);
                eager.take(published);
                index += 1;
                any = true;
            }
            if any || eager.next_release().is_some_and(|due| due <= now) {
                out.clear();
                eager.release(now, &mut out);
                eager_sent.extend(out.iter().map(|entry| (now, entry.seq)));
            }
            out.clear();
            sleeper.run(now, &mut out);
            sleeper_sent.extend(out.iter().map(|entry| (now, entry.seq)));
            out.clear();
            sorting.run(now, &mut out);
            sorting_sent.extend(out.iter().map(|entry| (now, entry.seq)));
            let next = [
                events.get(index).map(|e| start + Duration::from_millis(e.at_ms)),
                eager.next_release(),
                sleeper.throttle.next_wake(),
                sorting.throttle.next_wake(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(next) => now = next.max(now + Duration::from_micros(1)),
                None => break,
            }
        }
        prop_assert_eq!(&eager_sent, &sleeper_sent);
        prop_assert_eq!(&eager_sent, &sorting_sent);
        prop_assert!(sleeper.queue.is_empty(), "nothing is left asleep in the queue");
        prop_assert!(sorting.queue.is_empty(), "nothing is left asleep in the queue");
    }
}

#[test]
fn a_busy_throttled_subscription_is_woken_per_window_end_not_per_publish() {
    // 20 symbols each trading in every publish, 100 publishes a second for 2 s, at
    // max_rate=10: an eager connection wakes 200 times; a sleeping one once per window end
    // (its timer drains the trades that waited in the queue, releases them and starts the
    // next window), 20 windows in 2 s.
    let start = Instant::now();
    let mut sleeper = Sleeper::new(rate(10), start);
    let mut out = Vec::new();
    let mut seq = 0;
    let mut last_sent: HashMap<SymbolId, u64> = HashMap::new();
    let mut now = start;
    let end = start + Duration::from_secs(2);
    let mut next_publish = start;
    while now <= end + Duration::from_secs(1) {
        if now == next_publish && now < end {
            for symbol in 0..20 {
                seq += 1;
                sleeper.push(&entry(seq, EventKind::Trade, Some(symbol)));
            }
            next_publish += Duration::from_millis(10);
        }
        out.clear();
        sleeper.run(now, &mut out);
        for released in &out {
            last_sent.insert(released.symbol.unwrap_or_default(), released.seq);
        }
        let next = [
            Some(next_publish).filter(|at| *at < end),
            sleeper.throttle.next_wake(),
        ]
        .into_iter()
        .flatten()
        .min();
        match next {
            Some(next) => now = next.max(now + Duration::from_micros(1)),
            None => break,
        }
    }
    // The newest trade of every symbol went out.
    for symbol in 0..20 {
        assert_eq!(
            last_sent.get(&symbol),
            Some(&(seq - 19 + u64::from(symbol)))
        );
    }
    eprintln!(
        "busy subscription: {} wake-ups for 200 publishes",
        sleeper.wakes
    );
    assert!(
        sleeper.wakes <= 25,
        "{} wake-ups for 200 publishes",
        sleeper.wakes
    );
    // The queue kept only the newest trade of each symbol: a drain after a window of ten
    // publishes (200 trades) took at most one per symbol.
    assert_eq!(sleeper.most_drained, 20);
    assert!(
        sleeper.queue.take_replaced() >= 3_000,
        "most of the 4,000 trades were replaced in the queue"
    );
}

#[test]
fn a_deferred_push_wakes_the_connection_once_the_queue_is_half_full() {
    let queue = SubscriberQueue::with_capacity(8);
    let metrics = crate::metrics::Metrics::default();
    // Symbols 0 to 4 are deferred.
    queue.set_deferred_symbols(&[0b1_1111]);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for seq in 1..=4 {
        queue.push_event(
            &entry(seq, EventKind::Trade, Some(seq as SymbolId - 1)),
            &metrics,
        );
        assert!(
            queue.poll_notified(&mut cx).is_pending(),
            "push {seq} is deferred"
        );
    }
    // A newer trade of a symbol already queued replaces it: the queue does not grow.
    queue.push_event(&entry(5, EventKind::Trade, Some(0)), &metrics);
    assert!(
        queue.poll_notified(&mut cx).is_pending(),
        "replaced, not woken"
    );
    assert_eq!(queue.len(), 4);
    queue.push_event(&entry(6, EventKind::Trade, Some(4)), &metrics);
    assert!(queue.poll_notified(&mut cx).is_ready(), "half full: woken");
    // Other symbols, and bars of a deferred one, always wake.
    let mut items = std::collections::VecDeque::new();
    queue.drain_into(&mut items);
    items.clear();
    queue.push_event(&entry(7, EventKind::Trade, Some(5)), &metrics);
    assert!(queue.poll_notified(&mut cx).is_ready());
    queue.push_event(&entry(8, EventKind::Bar, Some(0)), &metrics);
    assert!(queue.poll_notified(&mut cx).is_ready());
    // Setting the symbols while something waits wakes the connection.
    queue.drain_into(&mut items);
    items.clear();
    queue.push_event(&entry(9, EventKind::Quote, Some(0)), &metrics);
    assert!(queue.poll_notified(&mut cx).is_pending());
    queue.set_deferred_symbols(&[]);
    assert!(queue.poll_notified(&mut cx).is_ready());
}

fn drained(queue: &SubscriberQueue) -> Vec<u64> {
    let mut items = std::collections::VecDeque::new();
    queue.drain_into(&mut items);
    items
        .iter()
        .map(|item| match item {
            super::super::Delivery::Event(entry) => entry.seq,
            _ => 0,
        })
        .collect()
}

#[test]
fn a_throttled_queue_keeps_one_pending_trade_and_one_quote_per_deferred_symbol_in_place() {
    let queue = SubscriberQueue::with_capacity(64);
    let metrics = crate::metrics::Metrics::default();
    // Symbol 0 is deferred, symbol 1 is not.
    queue.set_deferred_symbols(&[0b01]);
    let pushes = [
        (1, EventKind::Trade, 0),
        (2, EventKind::Quote, 0),
        (3, EventKind::Trade, 1),
        (4, EventKind::Trade, 0),
        (5, EventKind::Trade, 1),
        (6, EventKind::Quote, 0),
        (7, EventKind::Trade, 0),
    ];
    for (seq, kind, symbol) in pushes {
        queue.push_event(&entry(seq, kind, Some(symbol)), &metrics);
    }
    // Symbol 0's newest trade and quote took the places of its first ones; symbol 1's
    // trades are all kept.
    assert_eq!(drained(&queue), [7, 6, 3, 5]);
    assert_eq!(queue.take_replaced(), 3);
    assert_eq!(queue.take_replaced(), 0, "taken once");
    // After a drain, a position from before it is not used: the next trade is appended
    // (behind symbol 1's), and only then replaced.
    queue.push_event(&entry(8, EventKind::Trade, Some(1)), &metrics);
    queue.push_event(&entry(9, EventKind::Trade, Some(0)), &metrics);
    queue.push_event(&entry(10, EventKind::Trade, Some(0)), &metrics);
    assert_eq!(drained(&queue), [8, 10]);
    assert_eq!(queue.take_replaced(), 1);
}

#[test]
fn a_bar_or_status_of_a_deferred_symbol_keeps_the_trade_before_it_in_front_of_it() {
    let queue = SubscriberQueue::with_capacity(64);
    let metrics = crate::metrics::Metrics::default();
    queue.set_deferred_symbols(&[0b1]);
    for (seq, kind) in [
        (1, EventKind::Trade),
        (2, EventKind::Bar),
        (3, EventKind::Trade),
        (4, EventKind::Trade),
        (5, EventKind::Status),
        (6, EventKind::Bar),
        (7, EventKind::Trade),
    ] {
        queue.push_event(&entry(seq, kind, Some(0)), &metrics);
    }
    // Bars and statuses are never replaced, and a trade after one replaces only trades
    // queued after it.
    assert_eq!(drained(&queue), [1, 2, 4, 5, 6, 7]);
    assert_eq!(queue.take_replaced(), 1);
}

#[test]
fn an_unthrottled_queue_replaces_nothing_until_its_queue_is_full() {
    let queue = SubscriberQueue::with_capacity(64);
    let metrics = crate::metrics::Metrics::default();
    for seq in 1..=5 {
        queue.push_event(&entry(seq, EventKind::Trade, Some(0)), &metrics);
    }
    assert_eq!(drained(&queue), [1, 2, 3, 4, 5]);
    // A throttle whose rate was removed empties its deferred set: the same again.
    queue.set_deferred_symbols(&[0b1]);
    queue.set_deferred_symbols(&[]);
    for seq in 6..=8 {
        queue.push_event(&entry(seq, EventKind::Trade, Some(0)), &metrics);
    }
    assert_eq!(drained(&queue), [6, 7, 8]);
    assert_eq!(queue.take_replaced(), 0);
}
