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
