//! Throttled order books: merged deltas, applied to the snapshot a client was sent, rebuild
//! the exchange's book exactly at every message, over random order flow (quotes that
//! regenerate the book, prints and market orders that take from it) and random timing.

use chrono::Utc;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tokio::time::Instant;

use super::*;
use crate::market::SymbolUniverse;
use crate::trading::api::OrderRequest;
use crate::trading::book::{BookShape, SyntheticBook};
use crate::trading::engine::{Announcement, Engine, EngineSettings, Outcome};
use crate::trading::validate::OrderLimits;

fn engine() -> Engine {
    let settings = EngineSettings {
        seed: 5,
        starting_cash: dec!(10000000),
        commission_per_share: Decimal::ZERO,
        allow_short: true,
        max_open_orders: 50,
        closed_orders_kept: 100,
        limits: OrderLimits {
            max_order_qty: dec!(1000000),
            qty_decimals: 0,
            tick_size: dec!(0.01),
            max_price: dec!(1000000),
        },
        book: BookShape {
            levels: 8,
            tick_size: dec!(0.01),
        },
        initial_prices: [("AAPL".to_string(), dec!(100))].into_iter().collect(),
    };
    Engine::new(settings, SymbolUniverse::new(["AAPL"]))
}

#[derive(Debug, Clone)]
enum Flow {
    Quote { ticks: i32, spread: u32 },
    Print { ticks: i32, size: u32 },
    Market { buy: bool, qty: u32 },
}

fn flow() -> impl Strategy<Value = Flow> {
    prop_oneof![
        2 => (-40..40i32, 1..4u32).prop_map(|(ticks, spread)| Flow::Quote { ticks, spread }),
        2 => (-40..40i32, 1..900u32).prop_map(|(ticks, size)| Flow::Print { ticks, size }),
        3 => (any::<bool>(), 1..1500u32).prop_map(|(buy, qty)| Flow::Market { buy, qty }),
    ]
}

fn price(ticks: i32) -> Decimal {
    dec!(100) + Decimal::from(ticks) * dec!(0.01)
}

fn run(engine: &mut Engine, flow: &Flow, out: &mut Outcome) {
    let now = Utc::now();
    match flow {
        Flow::Quote { ticks, spread } => {
            let bid = price(*ticks);
            let ask = bid + Decimal::from(*spread) * dec!(0.01);
            engine.on_quote("AAPL", bid, ask, (dec!(0), dec!(0)), now, out);
        }
        Flow::Print { ticks, size } => {
            engine.on_trade("AAPL", price(*ticks), Decimal::from(*size), now, out);
        }
        Flow::Market { buy, qty } => {
            let request = OrderRequest {
                symbol: Some("AAPL".into()),
                qty: Some(qty.to_string()),
                side: Some(if *buy { "buy" } else { "sell" }.into()),
                order_type: Some("market".into()),
                time_in_force: Some("day".into()),
                ..OrderRequest::default()
            };
            let _ = engine.submit("ann", &request, now, out);
        }
    }
}

#[test]
fn merged_deltas_keep_each_levels_latest_size_best_first() {
    let t = Utc::now();
    let delta = |bids: BookLevels, asks: BookLevels| BookUpdate {
        symbol: "AAPL".into(),
        snapshot: false,
        bids,
        asks,
        t,
    };
    let mut merged = MergedDelta::default();
    merged.add(&delta(
        vec![(dec!(10.00), dec!(100)), (dec!(9.99), dec!(0))],
        vec![(dec!(10.02), dec!(5))],
    ));
    merged.add(&delta(
        vec![(dec!(10.00), dec!(0)), (dec!(10.01), dec!(300))],
        vec![(dec!(10.02), dec!(7))],
    ));
    let update = merged.into_update("AAPL");
    assert_eq!(
        update.bids,
        vec![
            (dec!(10.01), dec!(300)),
            (dec!(10.00), dec!(0)),
            (dec!(9.99), dec!(0))
        ]
    );
    assert_eq!(update.asks, vec![(dec!(10.02), dec!(7))]);
    assert!(!update.snapshot);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_throttled_book_stream_applied_to_its_snapshot_equals_the_exchanges_book_at_every_message(
        steps in prop::collection::vec((flow(), 0..400u64), 1..80),
        per_second in prop_oneof![Just(1u64), Just(4), Just(20), Just(200)],
    ) {
        let mut engine = engine();
        let rate = MaxRate::new(per_second).expect("valid");
        let mut books = Books::default();
        books.set_rate(Some(rate));
        let snapshot = engine.book("AAPL").cloned().unwrap_or_default();
        // What the client holds (the snapshot plus what it was sent) and what the exchange
        // holds (the snapshot plus every delta it announced).
        let mut client: SyntheticBook = snapshot.clone();
        let mut exchange: SyntheticBook = snapshot;
        let start = Instant::now();
        let mut now = start;
        let mut sent_at: Vec<Instant> = Vec::new();
        let mut check = |client: &mut SyntheticBook, exchange: &SyntheticBook, update: &BookUpdate, at: Instant| -> Result<(), TestCaseError> {
            client.apply_delta(&update.bids, &update.asks);
            prop_assert_eq!(&*client, exchange, "the client's book differs after a message");
            if let Some(previous) = sent_at.last() {
                prop_assert!(at - *previous >= rate.interval(), "two deltas {:?} apart", at - *previous);
            }
            sent_at.push(at);
            Ok(())
        };
        for (step, gap_ms) in &steps {
            // Windows that ended before this step, as the session's timer would release them.
            while let Some(due) = books.next_release().filter(|due| *due <= now + std::time::Duration::from_millis(*gap_ms)) {
                for update in books.release_due(due) {
                    check(&mut client, &exchange, &update, due)?;
                }
            }
            now += std::time::Duration::from_millis(*gap_ms);
            let mut out = Outcome::default();
            run(&mut engine, step, &mut out);
            for announcement in out.announcements {
                if let Announcement::Book { delta, .. } = announcement {
                    exchange.apply_delta(&delta.bids, &delta.asks);
                    if let Some(update) = books.pace(delta, now) {
                        check(&mut client, &exchange, &update, now)?;
                    }
                }
            }
            prop_assert_eq!(Some(&exchange), engine.book("AAPL"), "the deltas rebuild the engine's book");
            for update in books.release_due(now) {
                check(&mut client, &exchange, &update, now)?;
            }
        }
        while let Some(due) = books.next_release() {
            for update in books.release_due(due) {
                check(&mut client, &exchange, &update, due)?;
            }
        }
        prop_assert_eq!(client, exchange);
    }
}
