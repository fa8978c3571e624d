//! Unit tests of the simulator: the New York calendar, the model, the publish guard.

use super::*;
use crate::hub::{EventSink, PublishError};
use crate::market::{SymbolUniverse, validate_event};
use crate::metrics::Metrics;
use parking_lot::Mutex;
use std::sync::Arc;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("valid test time")
        .with_timezone(&Utc)
}

fn names(symbols: &[&str]) -> Vec<String> {
    symbols.iter().map(|s| s.to_string()).collect()
}

fn settings(always_open: bool) -> SimulatorSettings {
    SimulatorSettings {
        always_open,
        ..SimulatorSettings::default()
    }
}

fn trades(events: &[MarketEvent]) -> Vec<&Trade> {
    events
        .iter()
        .filter_map(|e| match e {
            MarketEvent::Trade(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn statuses(events: &[MarketEvent]) -> Vec<&Status> {
    events
        .iter()
        .filter_map(|e| match e {
            MarketEvent::Status(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn new_york_switches_to_daylight_time_on_the_second_sunday_of_march() {
    // 2026-03-08 is the second Sunday of March; 02:00 EST is 07:00 UTC.
    assert_eq!(
        crate::market::new_york_utc_offset(at("2026-03-08T06:59:59Z")),
        TimeDelta::hours(-5)
    );
    assert_eq!(
        crate::market::new_york_utc_offset(at("2026-03-08T07:00:00Z")),
        TimeDelta::hours(-4)
    );
    // In 2027 March starts on a Monday, so the second Sunday is the 14th.
    assert_eq!(
        crate::market::new_york_utc_offset(at("2027-03-13T12:00:00Z")),
        TimeDelta::hours(-5)
    );
    assert_eq!(
        crate::market::new_york_utc_offset(at("2027-03-14T07:00:00Z")),
        TimeDelta::hours(-4)
    );
}

#[test]
fn new_york_returns_to_standard_time_on_the_first_sunday_of_november() {
    // 2026-11-01 is a Sunday; 02:00 EDT is 06:00 UTC.
    assert_eq!(
        crate::market::new_york_utc_offset(at("2026-11-01T05:59:59Z")),
        TimeDelta::hours(-4)
    );
    assert_eq!(
        crate::market::new_york_utc_offset(at("2026-11-01T06:00:00Z")),
        TimeDelta::hours(-5)
    );
    // 2027-11-07 is the first Sunday of November 2027.
    assert_eq!(
        crate::market::new_york_utc_offset(at("2027-11-06T12:00:00Z")),
        TimeDelta::hours(-4)
    );
}

#[test]
fn the_regular_session_opens_at_half_past_nine_new_york_time_on_both_sides_of_dst() {
    // Friday before the March change: EST, the open is 14:30 UTC.
    assert_eq!(
        session_at(at("2026-03-06T14:29:59Z"), false),
        MarketSession::Pre
    );
    assert_eq!(
        session_at(at("2026-03-06T14:30:00Z"), false),
        MarketSession::Regular
    );
    // Monday after it: EDT, the open is 13:30 UTC.
    assert_eq!(
        session_at(at("2026-03-09T13:29:59Z"), false),
        MarketSession::Pre
    );
    assert_eq!(
        session_at(at("2026-03-09T13:30:00Z"), false),
        MarketSession::Regular
    );
    // Monday after the November change: EST again.
    assert_eq!(
        session_at(at("2026-11-02T14:29:00Z"), false),
        MarketSession::Pre
    );
    assert_eq!(
        session_at(at("2026-11-02T14:30:00Z"), false),
        MarketSession::Regular
    );
}

#[test]
fn sessions_follow_the_new_york_clock_through_a_day_and_a_weekend() {
    let cases = [
        ("2026-11-23T08:59:59Z", MarketSession::Closed), // Monday 03:59 EST
        ("2026-11-23T09:00:00Z", MarketSession::Pre),
        ("2026-11-23T20:59:59Z", MarketSession::Regular), // 15:59:59
        ("2026-11-23T21:00:00Z", MarketSession::After),
        ("2026-11-24T00:59:59Z", MarketSession::After), // Monday 19:59:59 local
        ("2026-11-24T01:00:00Z", MarketSession::Closed),
        ("2026-11-21T00:30:00Z", MarketSession::After), // Friday 19:30 local, Saturday UTC
        ("2026-11-21T15:00:00Z", MarketSession::Closed), // Saturday
        ("2026-11-22T15:00:00Z", MarketSession::Closed), // Sunday
        ("2026-07-04T15:00:00Z", MarketSession::Closed), // a Saturday in summer
        ("2026-07-06T13:30:00Z", MarketSession::Regular), // Monday 09:30 EDT
    ];
    for (time, expected) in cases {
        assert_eq!(session_at(at(time), false), expected, "at {time}");
    }
    assert_eq!(
        session_at(at("2026-11-21T15:00:00Z"), true),
        MarketSession::Regular
    );
}

#[test]
fn the_next_session_change_skips_the_weekend_and_crosses_the_dst_change() {
    // Friday 21:00 EST → Monday 04:00 EST.
    assert_eq!(
        crate::market::next_session_change(at("2026-11-21T02:00:00Z"), false),
        Some(at("2026-11-23T09:00:00Z"))
    );
    // Friday 21:00 EST before the March change → Monday 04:00 EDT.
    assert_eq!(
        crate::market::next_session_change(at("2026-03-07T02:00:00Z"), false),
        Some(at("2026-03-09T08:00:00Z"))
    );
    // Mid-session: Monday 10:00 EST → 16:00 EST.
    assert_eq!(
        crate::market::next_session_change(at("2026-11-23T15:00:00Z"), false),
        Some(at("2026-11-23T21:00:00Z"))
    );
    assert_eq!(
        crate::market::next_session_change(at("2026-11-23T15:00:00Z"), true),
        None
    );
}

#[test]
fn the_calendar_answers_at_the_ends_of_time_without_panicking() {
    for time in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
        let _ = session_at(time, false);
        let _ = crate::market::next_session_change(time, false);
    }
    assert_eq!(
        crate::market::next_session_change(DateTime::<Utc>::MAX_UTC, false),
        None
    );
}

#[test]
fn the_first_advance_announces_the_session_and_quotes_every_symbol() {
    let start = at("2026-11-23T15:00:00Z");
    let mut sim = MarketSimulator::new(&settings(false), &names(&["AAPL", "MSFT"]), start);
    let events = sim.advance(start);
    assert_eq!(events.len(), 3, "{events:?}");
    let status = statuses(&events);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].symbol, "*");
    assert_eq!(status[0].code, "market_open");
    // Symbols without an initial price start at $100.00, quoted one to three ticks wide.
    for (event, symbol) in events[1..].iter().zip(["AAPL", "MSFT"]) {
        let MarketEvent::Quote(quote) = event else {
            panic!("expected a quote, got {event:?}");
        };
        assert_eq!(quote.symbol, symbol);
        assert!(quote.bid_price < 100.0 + 0.02 && quote.ask_price > 100.0 - 0.02);
        assert!(quote.ask_price - quote.bid_price < 0.035);
        assert_eq!(quote.time, start);
    }
}

#[test]
fn a_closed_market_has_no_trades_and_the_pre_market_open_is_announced() {
    // Saturday noon UTC to Monday 09:30 UTC (04:30 EST).
    let start = at("2026-11-21T12:00:00Z");
    let mut sim = MarketSimulator::new(&settings(false), &names(&["AAPL"]), start);
    let weekend = sim.advance(at("2026-11-23T08:59:59Z"));
    assert!(trades(&weekend).is_empty());
    assert_eq!(statuses(&weekend).len(), 1);
    assert_eq!(statuses(&weekend)[0].code, "market_closed");
    let news_over_weekend = weekend
        .iter()
        .filter(|e| matches!(e, MarketEvent::News(_)))
        .count();
    assert!(
        news_over_weekend > 1000,
        "news keeps flowing: {news_over_weekend}"
    );

    let monday = sim.advance(at("2026-11-23T09:30:00Z"));
    let status = statuses(&monday);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].code, "market_pre");
    assert_eq!(status[0].time, at("2026-11-23T09:00:00Z"));
    let pre_market = trades(&monday);
    // 30 minutes at 4/s thinned to 30%: about 2,160 trades.
    assert!(
        (1_500..3_000).contains(&pre_market.len()),
        "{} pre-market trades",
        pre_market.len()
    );
    assert!(
        pre_market
            .iter()
            .all(|t| t.conditions.contains(&"T".to_owned()))
    );
    assert!(
        pre_market
            .iter()
            .all(|t| t.time >= at("2026-11-23T09:00:00Z"))
    );
}

#[test]
fn trades_arrive_at_the_configured_rate_with_increasing_ids() {
    let start = at("2026-11-23T15:00:00Z");
    let symbols = names(&["AAPL", "MSFT", "NVDA", "SPY"]);
    let mut sim = MarketSimulator::new(&settings(true), &symbols, start);
    let events = sim.advance(start + TimeDelta::seconds(200));
    let trades = trades(&events);
    // 4 symbols × 4 trades/s × 200 s = 3,200 expected; Poisson noise is about ±57.
    assert!((2_900..3_500).contains(&trades.len()), "{}", trades.len());
    assert!(trades.windows(2).all(|w| w[1].id == w[0].id + 1));
    assert_eq!(trades[0].id, 1);
    let odd_lots = trades.iter().filter(|t| t.size % 100.0 != 0.0).count();
    assert!(
        odd_lots > 0 && odd_lots * 3 < trades.len(),
        "{odd_lots} odd lots"
    );
    assert!(
        trades
            .iter()
            .filter(|t| t.size % 100.0 != 0.0)
            .all(|t| t.conditions.contains(&"I".to_owned()))
    );
}

#[test]
fn news_items_mention_known_symbols_and_carry_every_field() {
    let start = at("2026-11-23T15:00:00Z");
    let symbols = names(&["AAPL", "MSFT", "NVDA"]);
    let mut sim = MarketSimulator::new(&settings(true), &symbols, start);
    let events = sim.advance(start + TimeDelta::hours(1));
    let news: Vec<&News> = events
        .iter()
        .filter_map(|e| match e {
            MarketEvent::News(n) => Some(n),
            _ => None,
        })
        .collect();
    // One item every 20 s on average: about 180 in an hour.
    assert!((120..250).contains(&news.len()), "{}", news.len());
    assert!(news.windows(2).all(|w| w[1].id > w[0].id));
    assert!(news.iter().any(|n| n.symbols.len() == 2));
    for item in &news {
        assert!(!item.symbols.is_empty() && item.symbols.len() <= 2);
        assert!(item.symbols.iter().all(|s| symbols.contains(s)));
        assert!(!item.headline.is_empty() && !item.summary.is_empty());
        assert!(!item.author.is_empty() && !item.source.is_empty());
        assert!(item.url.starts_with("https://") && item.url.contains(&item.id.to_string()));
        assert_eq!(item.created_at, item.updated_at);
    }
}

#[test]
fn splitting_the_clock_into_many_small_steps_changes_nothing() {
    let start = at("2026-11-23T14:25:00Z");
    let symbols = names(&["AAPL", "TSLA"]);
    let mut whole = MarketSimulator::new(&settings(false), &symbols, start);
    let expected = whole.advance(start + TimeDelta::minutes(10));
    let mut pieces = MarketSimulator::new(&settings(false), &symbols, start);
    let mut seen = Vec::new();
    let mut now = start;
    while now < start + TimeDelta::minutes(10) {
        now += TimeDelta::milliseconds(137);
        seen.extend(pieces.advance(now.min(start + TimeDelta::minutes(10))));
    }
    assert_eq!(seen, expected);
    assert!(!trades(&expected).is_empty());
}

#[test]
fn skipping_ahead_publishes_no_backlog_and_keeps_time_moving_forward() {
    let start = at("2026-11-23T15:00:00Z");
    let mut sim = MarketSimulator::new(&settings(true), &names(&["AAPL"]), start);
    let before = sim.advance(start + TimeDelta::seconds(30));
    let last_trade = trades(&before).last().map(|t| t.time).expect("trades");
    let skipped = sim.skip_to(start + TimeDelta::hours(3));
    assert!(trades(&skipped).is_empty());
    // The minute that was open when the clock jumped is closed and published.
    assert_eq!(
        skipped
            .iter()
            .filter(|e| matches!(e, MarketEvent::Bar(_)))
            .count(),
        1
    );
    let after = sim.advance(start + TimeDelta::hours(3) + TimeDelta::seconds(10));
    let resumed = trades(&after);
    assert!(!resumed.is_empty());
    assert!(resumed.iter().all(|t| t.time > last_trade));
    assert!(resumed[0].time >= start + TimeDelta::hours(3));
}

/// Records what reaches the sink.
struct RecordingSink {
    events: Mutex<Vec<MarketEvent>>,
    hub: crate::hub::Hub,
}

impl EventSink for RecordingSink {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        self.hub.publish(event.clone())?;
        self.events.lock().push(event);
        Ok(())
    }
}

fn guard() -> (PublishGuard, Arc<RecordingSink>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let universe = SymbolUniverse::new(["AAPL"]);
    let sink = Arc::new(RecordingSink {
        events: Mutex::new(Vec::new()),
        hub: crate::hub::Hub::new(
            universe.clone(),
            crate::hub::HubSettings::default(),
            Arc::clone(&metrics),
            1,
        ),
    });
    let context = crate::ingest::source::SourceContext::new(
        SOURCE_NAME,
        sink.clone(),
        crate::ingest::SourceRegistry::new(Arc::clone(&metrics)),
        Arc::clone(&metrics),
    );
    let guard = PublishGuard::new(context);
    (guard, sink, metrics)
}

fn trade_at(price: f64, time: DateTime<Utc>) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: "AAPL".into(),
        id: 1,
        venue: VENUE.into(),
        price,
        size: 100.0,
        time,
        conditions: vec![],
    })
}

#[test]
fn the_guard_drops_and_counts_invalid_ticks_without_publishing_them() {
    let (mut guard, sink, metrics) = guard();
    let now = at("2026-11-23T15:00:00Z");
    assert!(guard.publish(trade_at(100.25, now)));
    assert!(!guard.publish(trade_at(f64::NAN, now)));
    assert!(!guard.publish(trade_at(0.0, now)));
    assert!(!guard.publish(trade_at(-3.0, now)));
    assert!(!guard.publish(trade_at(100.5, now - TimeDelta::seconds(1))));
    assert!(guard.publish(trade_at(100.5, now + TimeDelta::seconds(1))));
    assert_eq!(metrics.ingest_rejected_count(SOURCE_NAME), 4);
    let prices: Vec<f64> = sink
        .events
        .lock()
        .iter()
        .filter_map(|e| match e {
            MarketEvent::Trade(t) => Some(t.price),
            _ => None,
        })
        .collect();
    assert_eq!(prices, vec![100.25, 100.5]);
}

#[test]
fn the_guard_passes_every_event_of_a_simulated_hour() {
    let (mut guard, sink, metrics) = guard();
    let start = at("2026-11-23T15:00:00Z");
    let mut sim = MarketSimulator::new(&settings(true), &names(&["AAPL"]), start);
    let events = sim.advance(start + TimeDelta::hours(1));
    let count = events.len();
    for event in events {
        assert!(guard.publish(event));
    }
    assert_eq!(metrics.ingest_rejected_count(SOURCE_NAME), 0);
    assert_eq!(sink.events.lock().len(), count);
}

#[test]
fn extreme_volatility_keeps_prices_positive_and_finite() {
    let start = at("2026-11-23T15:00:00Z");
    let extreme = SimulatorSettings {
        volatility: 9.9,
        time_scale: 1_000_000.0,
        ..settings(true)
    };
    let mut sim = MarketSimulator::new(&extreme, &names(&["AAPL", "MSFT"]), start);
    let events = sim.advance(start + TimeDelta::minutes(5));
    let universe = SymbolUniverse::new(["AAPL", "MSFT"]);
    for event in &events {
        assert_eq!(validate_event(event, &universe), Ok(()), "{event:?}");
    }
    assert!(trades(&events).len() > 1000);
}

#[test]
fn a_takeover_resumes_from_the_last_trade_prices_and_ids_of_the_feed() {
    let at = |second| DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap_or_default();
    let trade = |symbol: &str, id, price| {
        MarketEvent::Trade(crate::market::Trade {
            symbol: symbol.into(),
            id,
            venue: "SIM".into(),
            price,
            size: 1.0,
            time: at(id as i64),
            conditions: vec![],
        })
    };
    let resume = Resume::from_latest(vec![trade("AAPL", 41, 101.25), trade("MSFT", 7, 12.5)]);
    assert_eq!(resume.last_trade_id, 41);
    assert_eq!(resume.prices.get("AAPL"), Some(&101.25));
    let settings = SimulatorSettings {
        initial_prices: resume.prices.clone(),
        always_open: true,
        ..SimulatorSettings::default()
    };
    let mut sim = MarketSimulator::new(&settings, &["AAPL".to_string()], at(0));
    sim.continue_trade_ids_after(resume.last_trade_id);
    let events = sim.advance(at(60));
    let first = events.iter().find_map(|event| match event {
        MarketEvent::Trade(trade) => Some(trade.clone()),
        _ => None,
    });
    let first = first.expect("a trade within a minute");
    assert_eq!(first.id, 42, "ids continue after the feed's");
    assert!(
        (first.price - 101.25).abs() < 5.0,
        "near the last price: {}",
        first.price
    );
}
