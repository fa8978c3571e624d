//! The market simulator: property tests of its invariants on a virtual clock, and the real
//! gateway streaming simulated trades, quotes and news over SSE.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use proptest::prelude::*;
use tickgate::ingest::sim::{MarketSimulator, vwap};
use tickgate::market::{
    EventKind, MarketEvent, MarketSession, SymbolUniverse, Trade, next_session_change, session_at,
    validate_event,
};
use tickgate::settings::SimulatorSettings;

const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "NVDA", "TSLA", "SPY"];

/// One simulated run: the settings, where it starts, and the clock steps it is driven by.
#[derive(Debug, Clone)]
struct Scenario {
    settings: SimulatorSettings,
    symbols: Vec<String>,
    start: DateTime<Utc>,
    steps: Vec<TimeDelta>,
}

impl Scenario {
    fn end(&self) -> DateTime<Utc> {
        self.start + self.steps.iter().copied().sum::<TimeDelta>()
    }

    fn run(&self) -> Vec<MarketEvent> {
        let mut simulator = MarketSimulator::new(&self.settings, &self.symbols, self.start);
        let mut now = self.start;
        let mut events = simulator.advance(now);
        for step in &self.steps {
            now += *step;
            events.extend(simulator.advance(now));
        }
        events
    }
}

/// Busy markets over minutes, in any session (some start a little before a session boundary).
fn busy_scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        1usize..=SYMBOLS.len(),
        0.5f64..12.0,
        0.0f64..3.0,
        prop_oneof![Just(1.0), 1.0f64..500.0],
        any::<bool>(),
        // Any minute in 2025-2028, so DST changes and weekends are covered too.
        0i64..(4 * 366 * 24 * 60),
        proptest::collection::vec(1i64..60_000, 1..12),
        proptest::collection::btree_map(0usize..SYMBOLS.len(), 0.01f64..2_000.0, 0..3),
    )
        .prop_map(
            |(seed, count, rate, volatility, time_scale, always_open, minute, steps, prices)| {
                let symbols: Vec<String> = SYMBOLS[..count].iter().map(|s| s.to_string()).collect();
                let initial_prices: BTreeMap<String, f64> = prices
                    .into_iter()
                    .map(|(i, p)| (SYMBOLS[i].to_string(), p))
                    .collect();
                Scenario {
                    settings: SimulatorSettings {
                        seed,
                        trades_per_second: rate,
                        volatility,
                        time_scale,
                        always_open,
                        news_interval: Duration::from_secs(5),
                        initial_prices,
                        ..SimulatorSettings::default()
                    },
                    symbols,
                    start: start_of_2025() + TimeDelta::minutes(minute),
                    steps: steps.into_iter().map(TimeDelta::milliseconds).collect(),
                }
            },
        )
}

/// Quiet markets over days, so runs cross several session changes and weekends.
fn long_scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<u64>(),
        0i64..(4 * 366 * 24 * 60),
        proptest::collection::vec(1i64..(12 * 3600), 1..12),
    )
        .prop_map(|(seed, minute, steps)| Scenario {
            settings: SimulatorSettings {
                seed,
                trades_per_second: 0.003,
                always_open: false,
                news_interval: Duration::from_secs(3600),
                ..SimulatorSettings::default()
            },
            symbols: SYMBOLS[..2].iter().map(|s| s.to_string()).collect(),
            start: start_of_2025() + TimeDelta::minutes(minute),
            steps: steps.into_iter().map(TimeDelta::seconds).collect(),
        })
}

fn start_of_2025() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

fn cents(price: f64) -> Result<i64, TestCaseError> {
    let scaled = price * 100.0;
    prop_assert!(price.is_finite() && price > 0.0, "price {price}");
    prop_assert!(
        (scaled - scaled.round()).abs() < 1e-6,
        "price {price} is off the $0.01 grid"
    );
    // The wire form must show at most two decimals, too.
    let text = serde_json::to_string(&price).expect("number");
    prop_assert!(
        text.split('.').nth(1).is_none_or(|d| d.len() <= 2),
        "{text}"
    );
    Ok(scaled.round() as i64)
}

/// Checks every invariant that must hold for any run of the simulator.
fn check_invariants(scenario: &Scenario, events: &[MarketEvent]) -> Result<(), TestCaseError> {
    let universe = SymbolUniverse::new(scenario.symbols.iter().cloned());
    let mut last_time: HashMap<(String, EventKind), DateTime<Utc>> = HashMap::new();
    let mut last_trade_id = 0;
    let mut last_news_id = 0;
    let mut trades: Vec<&Trade> = Vec::new();
    let mut bars = Vec::new();
    let mut statuses = Vec::new();
    for event in events {
        prop_assert_eq!(validate_event(event, &universe), Ok(()), "{:?}", event);
        if let Some(symbol) = event.symbol() {
            let key = (symbol.to_owned(), event.kind());
            if let Some(previous) = last_time.get(&key) {
                prop_assert!(
                    event.time() >= *previous,
                    "time went backwards: {:?}",
                    event
                );
            }
            last_time.insert(key, event.time());
        }
        prop_assert!(
            event.time() <= scenario.end(),
            "event after the clock: {:?}",
            event
        );
        match event {
            MarketEvent::Trade(trade) => {
                cents(trade.price)?;
                prop_assert!(trade.size >= 1.0 && trade.size.fract() == 0.0);
                prop_assert!(trade.id > last_trade_id, "trade ids must increase");
                last_trade_id = trade.id;
                prop_assert_ne!(
                    session_at(trade.time, scenario.settings.always_open),
                    MarketSession::Closed,
                    "trade while closed at {}",
                    trade.time
                );
                trades.push(trade);
            }
            MarketEvent::Quote(quote) => {
                let bid = cents(quote.bid_price)?;
                let ask = cents(quote.ask_price)?;
                prop_assert!(bid < ask, "bid {} not below ask {}", bid, ask);
                prop_assert!(ask - bid <= 3, "spread of {} ticks", ask - bid);
                prop_assert!(quote.bid_size >= 100.0 && quote.bid_size % 100.0 == 0.0);
                prop_assert!(quote.ask_size >= 100.0 && quote.ask_size % 100.0 == 0.0);
            }
            MarketEvent::Bar(bar) => {
                for price in [bar.open, bar.high, bar.low, bar.close] {
                    cents(price)?;
                }
                bars.push(bar.clone());
            }
            MarketEvent::News(news) => {
                prop_assert!(news.id > last_news_id);
                last_news_id = news.id;
                prop_assert!((1..=2).contains(&news.symbols.len()));
            }
            MarketEvent::Status(status) => statuses.push(status.clone()),
            MarketEvent::Alert(_) => prop_assert!(false, "the simulator sends no alerts"),
        }
    }

    // Bars: recompute every closed minute from the emitted trades; they must agree exactly,
    // and the simulator must publish no other bars.
    #[derive(Default)]
    struct Expected {
        open: i64,
        high: i64,
        low: i64,
        close: i64,
        volume: u64,
        count: u64,
        notional: u128,
    }
    let mut expected: BTreeMap<(String, DateTime<Utc>), Expected> = BTreeMap::new();
    for trade in &trades {
        let minute = trade
            .time
            .duration_trunc(TimeDelta::minutes(1))
            .expect("minute");
        let price = cents(trade.price)?;
        let size = trade.size as u64;
        let bar = expected
            .entry((trade.symbol.clone(), minute))
            .or_insert_with(|| Expected {
                open: price,
                high: price,
                low: price,
                ..Expected::default()
            });
        bar.high = bar.high.max(price);
        bar.low = bar.low.min(price);
        bar.close = price;
        bar.volume += size;
        bar.count += 1;
        bar.notional += price as u128 * u128::from(size);
    }
    expected.retain(|(_, minute), _| *minute + TimeDelta::minutes(1) <= scenario.end());
    prop_assert_eq!(
        bars.len(),
        expected.len(),
        "one bar per closed minute with trades"
    );
    for bar in &bars {
        let want = expected.get(&(bar.symbol.clone(), bar.time));
        prop_assert!(want.is_some(), "bar without trades: {:?}", bar);
        let want = want.expect("checked");
        prop_assert_eq!(cents(bar.open)?, want.open);
        prop_assert_eq!(cents(bar.high)?, want.high);
        prop_assert_eq!(cents(bar.low)?, want.low);
        prop_assert_eq!(cents(bar.close)?, want.close);
        prop_assert_eq!(bar.volume, want.volume as f64);
        prop_assert_eq!(bar.trade_count, want.count);
        prop_assert_eq!(bar.vwap, vwap(want.notional, want.volume));
        prop_assert!(bar.vwap >= bar.low - 1e-9 && bar.vwap <= bar.high + 1e-9);
    }

    // Status: one at the start, then exactly one per session change, each telling the truth.
    prop_assert!(!statuses.is_empty());
    prop_assert_eq!(statuses[0].time, scenario.start);
    let mut changes = 1;
    let mut at = scenario.start;
    while let Some(next) = next_session_change(at, scenario.settings.always_open) {
        if next > scenario.end() {
            break;
        }
        changes += 1;
        at = next;
    }
    prop_assert_eq!(statuses.len(), changes);
    for status in &statuses {
        prop_assert_eq!(status.symbol.as_str(), "*");
        let session = session_at(status.time, scenario.settings.always_open);
        prop_assert_eq!(status.code.as_str(), session.status_code());
        prop_assert!(!status.message.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn busy_markets_keep_every_invariant(scenario in busy_scenario()) {
        let events = scenario.run();
        check_invariants(&scenario, &events)?;
    }

    #[test]
    fn markets_over_days_keep_every_invariant_across_sessions(scenario in long_scenario()) {
        let events = scenario.run();
        check_invariants(&scenario, &events)?;
    }

    #[test]
    fn the_same_seed_gives_the_same_events_however_the_clock_is_split(
        scenario in busy_scenario(),
        split in 1usize..5,
    ) {
        let first = scenario.run();
        let mut resplit = scenario.clone();
        resplit.steps = scenario
            .steps
            .iter()
            .flat_map(|step| {
                let part = *step / split as i32;
                let mut parts = vec![part; split - 1];
                parts.push(*step - part * (split as i32 - 1));
                parts
            })
            .collect();
        prop_assert_eq!(first, resplit.run());
    }

    #[test]
    fn the_session_is_constant_until_the_next_change(
        minute in 0i64..(4 * 366 * 24 * 60),
        second in 0i64..60,
    ) {
        let now = start_of_2025() + TimeDelta::minutes(minute) + TimeDelta::seconds(second);
        let current = session_at(now, false);
        let next = next_session_change(now, false).expect("sessions always change again");
        prop_assert!(next > now && next - now <= TimeDelta::days(3));
        prop_assert_eq!(session_at(next - TimeDelta::microseconds(1), false), current);
        prop_assert_ne!(session_at(next, false), current);
        prop_assert_eq!(session_at(now, true), MarketSession::Regular);
    }
}

#[test]
fn different_seeds_give_different_markets() {
    let scenario = |seed| Scenario {
        settings: SimulatorSettings {
            seed,
            always_open: true,
            ..SimulatorSettings::default()
        },
        symbols: vec!["AAPL".into()],
        start: start_of_2025(),
        steps: vec![TimeDelta::seconds(30)],
    };
    assert_ne!(scenario(1).run(), scenario(2).run());
    assert_eq!(scenario(1).run(), scenario(1).run());
}

#[tokio::test]
async fn the_gateway_streams_simulated_trades_quotes_and_news_over_sse() {
    let mut settings = common::test_settings();
    settings.simulator.enabled = true;
    settings.simulator.always_open = true;
    settings.simulator.trades_per_second = 40.0;
    settings.simulator.news_interval = Duration::from_millis(300);
    let app = common::spawn_app_with(settings).await;

    let mut market = common::SseClient::connect(app.port, "/v1/stream/market?symbols=*", &[]).await;
    assert_eq!(market.status, 200);
    let mut seen_trades = 0;
    let mut seen_quotes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (seen_trades < 5 || seen_quotes < 5) && tokio::time::Instant::now() < deadline {
        let event = market.expect_event(Duration::from_secs(10)).await;
        match event.event.as_str() {
            "trade" => {
                let trade = event.json();
                let price = trade["p"].as_f64().expect("price");
                assert!(price > 0.0 && ((price * 100.0).round() - price * 100.0).abs() < 1e-6);
                assert!(
                    app.state
                        .universe()
                        .contains(trade["S"].as_str().expect("symbol"))
                );
                seen_trades += 1;
            }
            "quote" => {
                let quote = event.json();
                let bid = quote["bp"].as_f64().expect("bid");
                let ask = quote["ap"].as_f64().expect("ask");
                assert!(bid < ask, "{quote}");
                seen_quotes += 1;
            }
            _ => {}
        }
    }
    assert!(
        seen_trades >= 5 && seen_quotes >= 5,
        "{seen_trades} trades, {seen_quotes} quotes"
    );

    let mut news = common::SseClient::connect(app.port, "/v1/stream/news", &[]).await;
    assert_eq!(news.status, 200);
    let mut item = None;
    while item.is_none() && tokio::time::Instant::now() < deadline + Duration::from_secs(10) {
        let event = news.expect_event(Duration::from_secs(10)).await;
        if event.event == "news" {
            item = Some(event.json());
        }
    }
    let item = item.expect("a news item");
    assert!(!item["headline"].as_str().expect("headline").is_empty());
    assert!(!item["symbols"].as_array().expect("symbols").is_empty());

    assert_eq!(app.state.metrics.ingest_rejected_count("simulator"), 0);
    app.stop().await.expect("clean shutdown");
}
