//! Property tests for the hub: replay never skips or duplicates, whatever the interleaving of
//! publishes, filters and resume points.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::DateTime;
use proptest::prelude::*;
use tickgate::hub::{
    Cursor, Delivery, Feed, Filter, Hub, HubSettings, SubscriberQueue, SymbolFilter,
};
use tickgate::market::{EventKind, MarketEvent, SymbolUniverse, Trade};
use tickgate::metrics::Metrics;

const SYMBOLS: [&str; 3] = ["AAPL", "MSFT", "SPY"];

fn trade(symbol: usize, n: u64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: SYMBOLS[symbol].into(),
        id: n,
        venue: String::new(),
        price: 1.0 + n as f64 / 100.0,
        size: 1.0,
        time: DateTime::from_timestamp(1_800_000_000 + n as i64, 0).unwrap_or_default(),
        conditions: vec![],
    })
}

proptest! {
    #[test]
    fn replay_then_live_yields_each_matching_event_after_the_cursor_exactly_once(
        before in proptest::collection::vec(0usize..3, 0..60),
        after in proptest::collection::vec(0usize..3, 0..40),
        window in 1usize..50,
        cursor_back in 0u64..70,
        wanted in proptest::collection::btree_set(0usize..3, 1..3),
    ) {
        let universe = SymbolUniverse::new(SYMBOLS);
        let hub = Hub::new(
            universe.clone(),
            HubSettings { replay_window: window, subscriber_queue_capacity: 10_000, ..HubSettings::default() },
            Arc::new(Metrics::default()),
            3,
        );
        let mut published = Vec::new();
        let mut n = 0;
        for symbol in &before {
            n += 1;
            hub.publish_event(trade(*symbol, n)).expect("valid");
            published.push((n, *symbol));
        }
        let newest = n;
        let cursor_seq = newest.saturating_sub(cursor_back);
        let filter = Filter {
            symbols: SymbolFilter::from_ids(wanted.iter().map(|i| *i as u16)),
            kinds: EventKind::Trade.bit(),
        };
        let queue = SubscriberQueue::with_capacity(10_000);
        let subscribed = hub.subscribe(Feed::Market, filter, Some(Cursor { epoch: 3, seq: cursor_seq }), true, &queue);
        for symbol in &after {
            n += 1;
            hub.publish_event(trade(*symbol, n)).expect("valid");
            published.push((n, *symbol));
        }
        let mut live = VecDeque::new();
        queue.drain_into(&mut live);
        let live_seqs: Vec<u64> = live.iter().filter_map(|d| match d {
            Delivery::Event(e) => Some(e.seq),
            _ => None,
        }).collect();
        let oldest_retained = newest.saturating_sub(window as u64) + 1;
        let expected_live: Vec<u64> = published.iter()
            .filter(|(seq, symbol)| *seq > newest && wanted.contains(symbol))
            .map(|(seq, _)| *seq).collect();
        prop_assert_eq!(&live_seqs, &expected_live);
        if cursor_seq + 1 < oldest_retained {
            prop_assert!(subscribed.reset.is_some());
            prop_assert!(subscribed.replay.is_empty());
            prop_assert!(subscribed.snapshot.is_some());
        } else {
            prop_assert!(subscribed.reset.is_none());
            let replay: Vec<u64> = subscribed.replay.iter().map(|e| e.seq).collect();
            let expected: Vec<u64> = published.iter()
                .filter(|(seq, symbol)| *seq > cursor_seq && *seq <= newest && wanted.contains(symbol))
                .map(|(seq, _)| *seq).collect();
            prop_assert_eq!(replay, expected);
        }
    }
}
