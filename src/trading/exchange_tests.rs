//! Unit tests of the exchange actor: settings and the market data it applies.

use super::*;
use crate::settings::Settings;
use rust_decimal_macros::dec;

#[test]
fn trading_settings_load_as_exact_decimals_from_files_and_the_environment() {
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let env = vec![
        (
            "TICKGATE__TRADING__COMMISSION_PER_SHARE".to_string(),
            "0.005".to_string(),
        ),
        (
            "TICKGATE__TRADING__STARTING_CASH".to_string(),
            "25000.50".to_string(),
        ),
    ];
    let settings = Settings::load_from(&config_dir, None, &env).expect("valid settings");
    assert_eq!(settings.trading.commission_per_share, dec!(0.005));
    assert_eq!(settings.trading.starting_cash, dec!(25000.50));
    assert_eq!(settings.trading.tick_size, dec!(0.01));
    let engine = engine_settings(&settings.trading, &settings.simulator.initial_prices);
    assert_eq!(engine.initial_prices.get("AAPL"), Some(&dec!(227.50)));
    let bad = vec![("TICKGATE__TRADING__TICK_SIZE".to_string(), "0".to_string())];
    let error = Settings::load_from(&config_dir, None, &bad).expect_err("zero tick");
    assert!(error.to_string().contains("trading.tick_size"), "{error}");
}

#[tokio::test]
async fn pushed_market_data_is_applied_before_a_later_sync_returns() {
    let engine = Engine::new(
        crate::trading::engine_tests::settings(),
        crate::market::SymbolUniverse::new(["AAPL", "MSFT"]),
    );
    let shutdown = CancellationToken::new();
    let (handle, tasks) = ExchangeHandle::new(engine, None, 16, 64, 64, shutdown.clone());
    tasks.spawn();
    let (before, mut deltas) = handle
        .book("aapl")
        .expect("symbols are matched in any case");
    handle.push_market(MarketInput::Quote {
        symbol: "AAPL".into(),
        bid: dec!(42.00),
        ask: dec!(42.02),
        bid_size: dec!(300),
        ask_size: dec!(200),
    });
    handle.sync().await.expect("running");
    let (after, _) = handle.book("AAPL").expect("book");
    assert_ne!(before.bids, after.bids);
    assert_eq!(after.bids[0], (dec!(42), dec!(300)));
    let delta = deltas.try_recv().expect("the refresh was announced");
    let mut rebuilt = super::super::book::SyntheticBook {
        bids: before.bids,
        asks: before.asks,
    };
    rebuilt.apply_delta(&delta.bids, &delta.asks);
    assert_eq!((rebuilt.bids, rebuilt.asks), (after.bids, after.asks));
    let portfolio = handle.portfolio("nobody").await.expect("portfolio");
    assert_eq!(portfolio.equity, dec!(100000));
    shutdown.cancel();
    tokio::task::yield_now().await;
}

/// Keeps what the exchange hands a cluster's relay, in order.
#[derive(Default)]
struct Recorded(Mutex<Vec<Announcement>>);

impl AnnouncementOutlet for Recorded {
    fn announce(&self, announcements: &[Announcement]) {
        self.0.lock().extend_from_slice(announcements);
    }
}

#[tokio::test]
async fn announced_books_come_in_order_with_the_deltas_and_equal_the_books_then() {
    let engine = Engine::new(
        crate::trading::engine_tests::settings(),
        crate::market::SymbolUniverse::new(["AAPL", "MSFT"]),
    );
    let shutdown = CancellationToken::new();
    let (handle, tasks) = ExchangeHandle::new(engine, None, 16, 64, 64, shutdown.clone());
    let recorded = Arc::new(Recorded::default());
    tasks.with_outlet(recorded.clone()).spawn();
    let quote = |bid| MarketInput::Quote {
        symbol: "AAPL".into(),
        bid,
        ask: bid + dec!(0.02),
        bid_size: dec!(300),
        ask_size: dec!(200),
    };
    handle.push_market(quote(dec!(42.00)));
    handle.announce_books().await.expect("announced");
    handle.push_market(quote(dec!(43.00)));
    handle.sync().await.expect("running");
    let items = recorded.0.lock().clone();
    let kinds: Vec<&str> = items
        .iter()
        .map(|item| match item {
            Announcement::Book { .. } => "delta",
            Announcement::BookSnapshot { .. } => "snapshot",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["delta", "snapshot", "snapshot", "delta"]);
    // The AAPL snapshot is the book after the first quote: the second delta applies to it.
    let Announcement::BookSnapshot { snapshot } = &items[1] else {
        unreachable!("checked above")
    };
    assert_eq!(snapshot.symbol, "AAPL");
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.bids[0], (dec!(42), dec!(300)));
    let Announcement::Book { delta, .. } = &items[3] else {
        unreachable!("checked above")
    };
    let mut book = super::super::book::SyntheticBook {
        bids: snapshot.bids.clone(),
        asks: snapshot.asks.clone(),
    };
    book.apply_delta(&delta.bids, &delta.asks);
    let (now, _) = handle.book("AAPL").expect("book");
    assert_eq!((book.bids, book.asks), (now.bids, now.asks));
    shutdown.cancel();
    tokio::task::yield_now().await;
}
