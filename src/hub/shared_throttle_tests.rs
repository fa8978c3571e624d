//! Tests of the shared throttles: a subscriber of a stage receives what a throttle of its own
//! would send it, the stages are counted, capped and dropped, and moves lose nothing.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::hub::{Delivery, Feed, Filter, Hub, HubSettings, SubscriberQueue, SymbolFilter};
use crate::market::{Bar, EventKind, MarketEvent, Quote, Status, SymbolUniverse, Trade};
use crate::metrics::Metrics;

const SYMBOLS: [&str; 4] = ["AAPL", "MSFT", "GOOG", "AMZN"];

fn hub() -> Arc<Hub> {
    Arc::new(Hub::new(
        SymbolUniverse::new(SYMBOLS),
        HubSettings::default(),
        Arc::new(Metrics::default()),
        7,
    ))
}

/// An event of `kind` for `symbol`, at minute `n` (times rise with `n`, as the hub requires).
fn event(n: u64, kind: EventKind, symbol: &str) -> MarketEvent {
    let time = DateTime::from_timestamp(1_699_999_980 + 60 * n as i64, 0).unwrap_or_default();
    match kind {
        EventKind::Trade => MarketEvent::Trade(Trade {
            symbol: symbol.into(),
            id: n,
            venue: "V".into(),
            price: 10.0,
            size: 1.0,
            time,
            conditions: vec![],
        }),
        EventKind::Quote => MarketEvent::Quote(Quote {
            symbol: symbol.into(),
            bid_price: 10.0,
            bid_size: 1.0,
            bid_venue: String::new(),
            ask_price: 10.01,
            ask_size: 1.0,
            ask_venue: String::new(),
            time,
        }),
        EventKind::Bar => MarketEvent::Bar(Bar {
            symbol: symbol.into(),
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
            trade_count: 1,
            vwap: 1.0,
            time,
        }),
        _ => MarketEvent::Status(Status {
            symbol: symbol.into(),
            code: "halted".into(),
            message: String::new(),
            time,
        }),
    }
}

fn rate(per_second: u64) -> MaxRate {
    MaxRate::new(per_second).expect("valid rate")
}

fn filter_of(symbols: &[usize]) -> Filter {
    Filter {
        symbols: SymbolFilter::from_ids(symbols.iter().map(|s| *s as u16)),
        kinds: u8::MAX,
    }
}

fn drained_seqs(queue: &SubscriberQueue) -> Vec<u64> {
    let mut out = VecDeque::new();
    queue.drain_into(&mut out);
    out.into_iter()
        .filter_map(|item| match item {
            Delivery::Event(entry) => Some(entry.seq),
            _ => None,
        })
        .collect()
}

/// Lets the stages' timer tasks run.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// One published event of a random market: milliseconds after the previous one, its kind and
/// its symbol.
type Step = (u64, EventKind, usize);

fn market() -> impl Strategy<Value = (u64, Vec<Step>)> {
    let step = (
        0..40u64,
        prop_oneof![
            6 => Just(EventKind::Trade),
            6 => Just(EventKind::Quote),
            1 => Just(EventKind::Bar),
            1 => Just(EventKind::Status),
        ],
        0..4usize,
    );
    (
        // Rates whose windows and grid are whole milliseconds: tokio's timers fire on a
        // millisecond tick, so a stage's release at a fractional instant comes up to 1 ms
        // late, which this comparison of exact instants would count as a difference.
        prop_oneof![Just(1u64), Just(2), Just(10), Just(50)],
        prop::collection::vec(step, 1..200),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Two subscribers of one stage, with different symbols, each get exactly what a throttle
    /// of their own, fed their events one publish at a time and released at every window
    /// end, sends them: the same events at the same moments. So the per-connection rules (at
    /// most N a second per symbol, the newest wins, bars and statuses never dropped, a quiet
    /// symbol's first update at once) hold for the shared path as they do for the own one.
    #[test]
    fn a_stage_subscriber_gets_what_a_throttle_of_its_own_would_send_at_the_same_moments(
        (per_second, steps) in market()
    ) {
        let runtime = paused_runtime();
        let result: Result<(), TestCaseError> = runtime.block_on(async move {
            let hub = hub();
            let rate = rate(per_second);
            let subscribers = [vec![0usize, 1], vec![1, 2, 3]];
            let start = Instant::now();
            let mut queues = Vec::new();
            let mut own = Vec::new();
            for symbols in &subscribers {
                let queue = hub.new_queue();
                let (_, stage) =
                    hub.subscribe_throttled(filter_of(symbols), rate, None, false, &queue);
                prop_assert!(stage.is_some());
                queues.push(queue);
                own.push(Throttle::new(rate, start, 0));
            }
            prop_assert_eq!(hub.shared_throttle_count(), 1);
            let mut got: Vec<BTreeSet<(Duration, u64)>> = vec![BTreeSet::new(); 2];
            let mut want: Vec<BTreeSet<(Duration, u64)>> = vec![BTreeSet::new(); 2];
            let mut out = Vec::new();
            let mut at = Duration::ZERO;
            let record = |got: &mut Vec<BTreeSet<(Duration, u64)>>, now: Duration| {
                for (index, queue) in queues.iter().enumerate() {
                    for seq in drained_seqs(queue) {
                        got[index].insert((now, seq));
                    }
                }
            };
            let mut pending = steps.iter().enumerate().peekable();
            loop {
                // The next moment: the next publish, or the next window end of either own
                // throttle (the stage's are the same instants).
                let next_publish = pending.peek().map(|(_, (gap, _, _))| at + Duration::from_millis(*gap));
                let next_due = own
                    .iter()
                    .filter_map(Throttle::next_release)
                    .min()
                    .map(|due| due.duration_since(start));
                let next = match (next_publish, next_due) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => match a.or(b) {
                        Some(next) => next,
                        None => break,
                    },
                };
                let now = start + next;
                tokio::time::advance(now.saturating_duration_since(Instant::now())).await;
                settle().await;
                at = next;
                // Window ends first (the stage's timer ran in `settle`), then publishes.
                for (index, throttle) in own.iter_mut().enumerate() {
                    if throttle.next_release().is_some_and(|due| due <= now) {
                        throttle.release(now, &mut out);
                        want[index].extend(out.drain(..).map(|e| (at, e.seq)));
                    }
                }
                record(&mut got, at);
                if next_publish == Some(next) {
                    let Some((n, (_, kind, symbol))) = pending.next() else { break };
                    let published = hub
                        .publish_event(event(n as u64, *kind, SYMBOLS[*symbol]))
                        .expect("valid event");
                    for (index, throttle) in own.iter_mut().enumerate() {
                        if filter_of(&subscribers[index]).matches(&published.entry) {
                            throttle.take(Arc::clone(&published.entry));
                        }
                        throttle.release(now, &mut out);
                        want[index].extend(out.drain(..).map(|e| (at, e.seq)));
                    }
                    record(&mut got, at);
                }
            }
            for index in 0..2 {
                prop_assert_eq!(&got[index], &want[index], "subscriber {}", index);
            }
            Ok(())
        });
        result?;
    }
}

#[tokio::test(start_paused = true)]
async fn stages_are_shared_per_rate_and_kinds_capped_in_number_and_dropped_with_their_last_subscriber()
 {
    let hub = hub();
    let trades = Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Trade.bit() | EventKind::Bar.bit(),
    };
    let mut queues = Vec::new();
    for per_second in 1..=MAX_SHARED_THROTTLES as u64 {
        for _ in 0..2 {
            let queue = hub.new_queue();
            let (_, stage) =
                hub.subscribe_throttled(trades.clone(), rate(per_second), None, false, &queue);
            assert!(stage.is_some(), "rate {per_second} gets a stage");
            queues.push(queue);
        }
    }
    assert_eq!(hub.shared_throttle_count(), MAX_SHARED_THROTTLES);
    // A new key past the cap: the raw feed, for the connection to throttle itself.
    let past = hub.new_queue();
    let (_, stage) = hub.subscribe_throttled(trades.clone(), rate(999), None, false, &past);
    assert!(stage.is_none(), "no stage past the cap");
    // A subscription wanting neither trades nor quotes needs no stage.
    let bars = hub.new_queue();
    let bars_only = Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Bar.bit(),
    };
    let (_, stage) = hub.subscribe_throttled(bars_only, rate(1), None, false, &bars);
    assert!(stage.is_none());
    assert_eq!(
        hub.subscriber_count(Feed::Market),
        2 * MAX_SHARED_THROTTLES + 2
    );
    // The raw subscriber past the cap gets every trade; a stage subscriber its rate's share.
    for n in 1..=5 {
        hub.publish_event(event(n, EventKind::Trade, "AAPL"))
            .expect("valid");
    }
    assert_eq!(drained_seqs(&past), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        drained_seqs(&queues[0]),
        vec![1],
        "the rest waits for the window"
    );
    // Connections go: a stage is dropped at the next publish after its last one left.
    for queue in &queues {
        queue.mark_gone();
    }
    hub.publish_event(event(6, EventKind::Trade, "AAPL"))
        .expect("valid");
    assert_eq!(hub.shared_throttle_count(), 0);
    let again = hub.new_queue();
    let (_, stage) = hub.subscribe_throttled(trades, rate(999), None, false, &again);
    assert!(stage.is_some(), "room again");
}

#[tokio::test(start_paused = true)]
async fn a_quote_subscriber_is_not_held_back_by_trades_it_does_not_want() {
    let hub = hub();
    let quotes = hub.new_queue();
    let filter = Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Quote.bit(),
    };
    let (_, quote_stage) = hub.subscribe_throttled(filter, rate(2), None, false, &quotes);
    let everything = hub.new_queue();
    let (_, all_stage) =
        hub.subscribe_throttled(Filter::everything(), rate(2), None, false, &everything);
    assert_eq!(hub.shared_throttle_count(), 2, "one stage per kinds wanted");
    assert_ne!(
        quote_stage.map(|s| s.key()),
        all_stage.map(|s| s.key()),
        "different keys"
    );
    hub.publish_event(event(1, EventKind::Trade, "AAPL"))
        .expect("valid");
    hub.publish_event(event(2, EventKind::Quote, "AAPL"))
        .expect("valid");
    assert_eq!(drained_seqs(&quotes), vec![2], "AAPL is quiet for quotes");
    assert_eq!(
        drained_seqs(&everything),
        vec![1],
        "the quote waits its window"
    );
}

#[tokio::test(start_paused = true)]
async fn moving_a_registration_hands_over_what_the_old_stage_held_and_repeats_nothing() {
    let hub = hub();
    let queue = hub.new_queue();
    let (_, stage) = hub.subscribe_throttled(Filter::everything(), rate(1), None, false, &queue);
    assert!(stage.is_some());
    for n in 1..=3 {
        hub.publish_event(event(n, EventKind::Trade, "AAPL"))
            .expect("valid");
    }
    assert_eq!(drained_seqs(&queue), vec![1]);
    // To another rate: the held trade 3 comes at once, then the new stage's releases.
    let stage = hub.move_market_registration(&queue, Filter::everything(), Some(rate(2)));
    assert!(stage.is_some());
    assert_eq!(drained_seqs(&queue), vec![3]);
    hub.publish_event(event(4, EventKind::Trade, "MSFT"))
        .expect("valid");
    assert_eq!(drained_seqs(&queue), vec![4]);
    // To the raw feed: every event from now on, nothing twice.
    hub.publish_event(event(5, EventKind::Trade, "MSFT"))
        .expect("valid");
    let stage = hub.move_market_registration(&queue, Filter::everything(), None);
    assert!(stage.is_none());
    hub.publish_event(event(6, EventKind::Trade, "MSFT"))
        .expect("valid");
    assert_eq!(drained_seqs(&queue), vec![5, 6]);
    assert_eq!(hub.subscriber_count(Feed::Market), 1);
    hub.publish_event(event(7, EventKind::Trade, "MSFT"))
        .expect("valid");
    assert_eq!(hub.shared_throttle_count(), 0, "both stages dropped");
}
