//! The embedded market simulator: a deterministic, seeded market (trades, quotes, one-minute
//! bars, news and session status) driven by a virtual clock, and the actor that runs it in
//! real time and publishes what it produces into the hub.
//!
//! The model, per symbol:
//! - A fair value follows geometric Brownian motion, `ln S += -σ²/2·dt + σ·√dt·Z`, with `σ` the
//!   configured annualized volatility and `dt` in trading years (252 days of 6.5 hours). The
//!   diffusion runs `time_scale` market seconds per wall-clock second, and only while a
//!   session is open, so the price does not jump over nights and weekends.
//! - Everything published is in integer cents on the $0.01 tick grid: the quote is a spread of
//!   one to three ticks around the fair value with round-lot sizes; a trade prints at the bid,
//!   the ask or (sometimes) inside the spread.
//! - Trades arrive as a Poisson process (exponential gaps) at `trades_per_second`. Pre-market
//!   and after-hours arrivals are thinned to [`EXTENDED_HOURS_ACTIVITY`]; a closed market
//!   has no trades.
//! - The quote is refreshed before each trade (when it changed) and again after it, with the
//!   size the trade took off the touched side.
//! - One-minute bars are built from the simulator's own trades and published when the minute
//!   closes, for minutes that had trades.
//!
//! News items arrive with exponential gaps around `news_interval` and mention one or two
//! symbols. A `status` event (`"S":"*"`) announces the session at start and on every change.
//!
//! [`MarketSimulator`] never reads the real clock: the same settings, symbols, start time and
//! sequence of `advance` calls give the same events, which is what the tests rely on.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::hub::{Entry, EventSink};
use crate::ingest::{SourceHealth, SourceRegistry};
use crate::market::{
    Bar, EventKind, InvalidEvent, MarketEvent, MarketSession, News, Quote, Status, SymbolUniverse,
    Trade, next_session_change, session_at, validate_event,
};
use crate::metrics::Metrics;
use crate::settings::SimulatorSettings;

pub const SOURCE_NAME: &str = "simulator";

/// Venue code on simulated trades and quotes, so nobody mistakes them for a real exchange.
pub const VENUE: &str = "SIM";

/// Seconds in a trading year (252 sessions of 6.5 hours): the unit of `dt` in the diffusion.
const TRADING_SECONDS_PER_YEAR: f64 = 252.0 * 6.5 * 3600.0;

/// Fraction of the regular trade rate seen in pre-market and after-hours sessions.
pub const EXTENDED_HOURS_ACTIVITY: f64 = 0.3;

/// Lowest and highest fair value, in dollars: keeps every price a positive whole number of
/// cents and far from overflow, whatever the volatility.
const MIN_FAIR_PRICE: f64 = 0.01;
const MAX_FAIR_PRICE: f64 = 1_000_000.0;

/// No scheduled gap is longer than this, so adding it to a time can never overflow.
const MAX_GAP: TimeDelta = TimeDelta::days(365);

/// When the real clock runs this far ahead of the simulator (the process was suspended, say),
/// the actor skips to the present instead of publishing the whole backlog at once.
const MAX_CATCH_UP: TimeDelta = TimeDelta::seconds(5);

/// Shortest sleep of the actor between batches, which bounds its wake-ups at high rates.
const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(2);

/// Longest sleep of the actor, so shutdown and clock changes are noticed promptly.
const MAX_WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// One minute of trades being aggregated into a bar; prices in cents.
#[derive(Debug, Clone)]
struct BarBuilder {
    start: DateTime<Utc>,
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: u64,
    count: u64,
    /// Σ price·size in cent-shares, exact.
    notional: u128,
}

impl BarBuilder {
    fn new(start: DateTime<Utc>, cents: i64) -> BarBuilder {
        BarBuilder {
            start,
            open: cents,
            high: cents,
            low: cents,
            close: cents,
            volume: 0,
            count: 0,
            notional: 0,
        }
    }

    fn add(&mut self, cents: i64, size: u64) {
        self.high = self.high.max(cents);
        self.low = self.low.min(cents);
        self.close = cents;
        self.volume += size;
        self.count += 1;
        self.notional += u128::from(cents.unsigned_abs()) * u128::from(size);
    }

    fn finish(&self, symbol: &str) -> Bar {
        Bar {
            symbol: symbol.to_owned(),
            open: dollars(self.open),
            high: dollars(self.high),
            low: dollars(self.low),
            close: dollars(self.close),
            volume: self.volume as f64,
            trade_count: self.count,
            vwap: vwap(self.notional, self.volume),
            time: self.start,
        }
    }
}

/// The volume-weighted average price in dollars of trades totalling `notional_cents` cent-shares
/// over `volume` shares. Public so tests recompute bars exactly the same way.
pub fn vwap(notional_cents: u128, volume: u64) -> f64 {
    if volume == 0 {
        return 0.0;
    }
    notional_cents as f64 / volume as f64 / 100.0
}

fn dollars(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// The displayed top of book, in cents and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TopOfBook {
    bid: i64,
    ask: i64,
    bid_size: u64,
    ask_size: u64,
}

#[derive(Debug, Clone)]
struct SymbolState {
    name: String,
    company: String,
    /// Natural log of the fair value in dollars.
    log_price: f64,
    /// When the fair value was last moved forward.
    priced_at: DateTime<Utc>,
    /// Last trade price, and the price the simulator started from (for news), in cents.
    last_cents: i64,
    reference_cents: i64,
    book: TopOfBook,
    bar: Option<BarBuilder>,
}

/// What the scheduler does next. The derived order breaks ties at the same instant: a session
/// change first, then closing bars (a trade exactly on the minute belongs to the next one),
/// then trades by symbol, then news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Session,
    CloseBars,
    Trade(usize),
    News,
}

/// The deterministic market. See the module documentation for the model.
#[derive(Debug)]
pub struct MarketSimulator {
    rng: StdRng,
    symbols: Vec<SymbolState>,
    /// Next trade arrival per symbol, earliest first.
    arrivals: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    trades_per_second: f64,
    volatility: f64,
    time_scale: f64,
    always_open: bool,
    news_interval_seconds: f64,
    next_news: Option<DateTime<Utc>>,
    session: MarketSession,
    next_session_change: Option<DateTime<Utc>>,
    /// How far the virtual clock has been advanced.
    clock: DateTime<Utc>,
    started: bool,
    next_trade_id: u64,
    next_news_id: u64,
}

impl MarketSimulator {
    /// A market for `symbols` whose clock starts at `start` (truncated to microseconds), seeded
    /// with `settings.seed`. Nothing is emitted until the first [`MarketSimulator::advance`].
    pub fn new(settings: &SimulatorSettings, symbols: &[String], start: DateTime<Utc>) -> Self {
        let start = start
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(start);
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let symbols: Vec<SymbolState> = symbols
            .iter()
            .map(|name| {
                let price = settings
                    .initial_prices
                    .get(name)
                    .copied()
                    .filter(|p| p.is_finite() && *p > 0.0)
                    .unwrap_or(100.0)
                    .clamp(MIN_FAIR_PRICE, MAX_FAIR_PRICE);
                let cents = ((price * 100.0).round() as i64).max(1);
                SymbolState {
                    name: name.clone(),
                    company: company_name(name),
                    log_price: price.ln(),
                    priced_at: start,
                    last_cents: cents,
                    reference_cents: cents,
                    book: quote_around(&mut rng, price * 100.0, None),
                    bar: None,
                }
            })
            .collect();
        let finite_positive = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
        MarketSimulator {
            rng,
            symbols,
            arrivals: BinaryHeap::new(),
            trades_per_second: finite_positive(settings.trades_per_second),
            volatility: finite_positive(settings.volatility),
            time_scale: finite_positive(settings.time_scale),
            always_open: settings.always_open,
            news_interval_seconds: settings.news_interval.as_secs_f64(),
            next_news: None,
            session: session_at(start, settings.always_open),
            next_session_change: next_session_change(start, settings.always_open),
            clock: start,
            started: false,
            next_trade_id: 1,
            next_news_id: 1,
        }
    }

    /// Numbers trades after `last_trade_id` (a simulator taking over from another node's).
    pub fn continue_trade_ids_after(&mut self, last_trade_id: u64) {
        self.next_trade_id = self.next_trade_id.max(last_trade_id.saturating_add(1));
    }

    /// How far the virtual clock has been advanced.
    pub fn clock(&self) -> DateTime<Utc> {
        self.clock
    }

    /// The session the simulated market is in at its clock.
    pub fn session(&self) -> MarketSession {
        self.session
    }

    /// When the next event is due; `None` if nothing will ever happen again. Before the first
    /// `advance` the start events are due at the start time.
    pub fn next_event_time(&self) -> Option<DateTime<Utc>> {
        if !self.started {
            return Some(self.clock);
        }
        self.next_step().map(|(time, _)| time)
    }

    /// Runs the market up to and including `now` and returns what happened, in time order.
    /// The events only depend on the seed and the times reached, not on how the clock was
    /// split into calls.
    pub fn advance(&mut self, now: DateTime<Utc>) -> Vec<MarketEvent> {
        let mut events = Vec::new();
        if !self.started {
            self.start(&mut events);
        }
        while let Some((time, step)) = self.next_step() {
            if time > now {
                break;
            }
            self.clock = self.clock.max(time);
            match step {
                Step::Session => self.change_session(time, &mut events),
                Step::CloseBars => self.close_bars(time, &mut events),
                Step::Trade(index) => self.trade(index, time, &mut events),
                Step::News => self.news(time, &mut events),
            }
        }
        self.clock = self.clock.max(now);
        events
    }

    /// Jumps the clock to `now` without producing the trades and news that would have
    /// happened in between: open bars are closed, the session is brought up to date and
    /// arrivals are scheduled afresh from `now`. Used when the real clock ran far ahead.
    pub fn skip_to(&mut self, now: DateTime<Utc>) -> Vec<MarketEvent> {
        let mut events = Vec::new();
        if !self.started {
            self.start(&mut events);
        }
        if now <= self.clock {
            return events;
        }
        self.close_bars(now, &mut events);
        self.clock = now;
        let session = session_at(now, self.always_open);
        self.next_session_change = next_session_change(now, self.always_open);
        if session != self.session {
            self.session = session;
            events.push(self.status(now));
        }
        self.arrivals.clear();
        for index in 0..self.symbols.len() {
            // Time spent while skipping is market time too, but only the open part of it
            // would count; pricing from `now` keeps a long suspension from making a huge jump.
            self.symbols[index].priced_at = now;
            if session != MarketSession::Closed {
                self.schedule_trade(index, now);
            }
        }
        if self.next_news.is_some_and(|t| t < now) {
            self.next_news = self.after(now, self.news_interval_seconds);
        }
        events
    }

    fn start(&mut self, events: &mut Vec<MarketEvent>) {
        self.started = true;
        let now = self.clock;
        events.push(self.status(now));
        for index in 0..self.symbols.len() {
            events.push(self.quote_event(index, now));
            if self.session != MarketSession::Closed {
                self.schedule_trade(index, now);
            }
        }
        self.next_news = self.after(now, self.news_interval_seconds);
    }

    /// The earliest pending step, ties broken by [`Step`] order.
    fn next_step(&self) -> Option<(DateTime<Utc>, Step)> {
        let bars = self
            .symbols
            .iter()
            .filter_map(|s| s.bar.as_ref())
            .map(|bar| bar.start + TimeDelta::minutes(1))
            .min();
        let trade = self
            .arrivals
            .peek()
            .map(|Reverse((time, index))| (*time, Step::Trade(*index)));
        [
            self.next_session_change.map(|t| (t, Step::Session)),
            bars.map(|t| (t, Step::CloseBars)),
            trade,
            self.next_news.map(|t| (t, Step::News)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// `now` plus an exponential gap with the given mean, in microseconds (at least one).
    /// `None` when the mean is not positive (the process is off).
    fn after(&mut self, now: DateTime<Utc>, mean_seconds: f64) -> Option<DateTime<Utc>> {
        if !(mean_seconds.is_finite() && mean_seconds > 0.0) {
            return None;
        }
        let uniform: f64 = self.rng.random();
        // 1 - u is in (0, 1], so the logarithm is finite and the gap is never negative.
        let seconds = -mean_seconds * (1.0 - uniform).ln();
        let micros = (seconds * 1e6)
            .round()
            .clamp(1.0, MAX_GAP.num_microseconds()? as f64);
        now.checked_add_signed(TimeDelta::microseconds(micros as i64))
    }

    fn schedule_trade(&mut self, index: usize, now: DateTime<Utc>) {
        if self.trades_per_second <= 0.0 {
            return;
        }
        if let Some(time) = self.after(now, 1.0 / self.trades_per_second) {
            self.arrivals.push(Reverse((time, index)));
        }
    }

    fn change_session(&mut self, now: DateTime<Utc>, events: &mut Vec<MarketEvent>) {
        let previous = self.session;
        self.session = session_at(now, self.always_open);
        self.next_session_change = next_session_change(now, self.always_open);
        if self.session == previous {
            return;
        }
        events.push(self.status(now));
        if previous == MarketSession::Closed {
            // The open: fresh quotes, and prices move again from here (not over the night).
            self.arrivals.clear();
            for index in 0..self.symbols.len() {
                self.symbols[index].priced_at = now;
                events.push(self.quote_event(index, now));
                self.schedule_trade(index, now);
            }
        } else if self.session == MarketSession::Closed {
            self.arrivals.clear();
        }
    }

    fn close_bars(&mut self, now: DateTime<Utc>, events: &mut Vec<MarketEvent>) {
        for symbol in &mut self.symbols {
            if symbol
                .bar
                .as_ref()
                .is_some_and(|bar| bar.start + TimeDelta::minutes(1) <= now)
                && let Some(bar) = symbol.bar.take()
            {
                events.push(MarketEvent::Bar(bar.finish(&symbol.name)));
            }
        }
    }

    fn trade(&mut self, index: usize, now: DateTime<Utc>, events: &mut Vec<MarketEvent>) {
        self.arrivals.pop();
        if self.session == MarketSession::Closed {
            return;
        }
        self.schedule_trade(index, now);
        // Thinning a Poisson process keeps it Poisson, at the lower rate.
        if self.session != MarketSession::Regular
            && self.rng.random::<f64>() >= EXTENDED_HOURS_ACTIVITY
        {
            return;
        }

        // Move the fair value forward and quote around it.
        let elapsed = (now - self.symbols[index].priced_at)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let dt_years = elapsed * self.time_scale / TRADING_SECONDS_PER_YEAR;
        let z = standard_normal(&mut self.rng);
        let sigma = self.volatility;
        let symbol = &mut self.symbols[index];
        symbol.priced_at = now;
        symbol.log_price = (symbol.log_price - 0.5 * sigma * sigma * dt_years
            + sigma * dt_years.sqrt() * z)
            .clamp(MIN_FAIR_PRICE.ln(), MAX_FAIR_PRICE.ln());
        let fair_cents = symbol.log_price.exp() * 100.0;
        let previous_book = symbol.book;
        let book = quote_around(&mut self.rng, fair_cents, Some(previous_book));
        self.symbols[index].book = book;
        if book != previous_book {
            events.push(self.quote_event(index, now));
        }

        // The trade: a buyer lifting the ask, a seller hitting the bid, or a print inside a
        // wide spread.
        let spread = book.ask - book.bid;
        let roll: f64 = self.rng.random();
        let (cents, touched) = if spread >= 2 && roll < 0.15 {
            (self.rng.random_range(book.bid + 1..book.ask), None)
        } else if roll < 0.575 {
            (book.ask, Some(Side::Ask))
        } else {
            (book.bid, Some(Side::Bid))
        };
        let size = trade_size(&mut self.rng);
        let mut conditions = vec!["@".to_owned()];
        if !size.is_multiple_of(100) {
            conditions.push("I".to_owned());
        }
        if self.session != MarketSession::Regular {
            conditions.push("T".to_owned());
        }
        let id = self.next_trade_id;
        self.next_trade_id += 1;
        let symbol = &mut self.symbols[index];
        symbol.last_cents = cents;
        let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        symbol
            .bar
            .get_or_insert_with(|| BarBuilder::new(minute, cents))
            .add(cents, size);
        events.push(MarketEvent::Trade(Trade {
            symbol: symbol.name.clone(),
            id,
            venue: VENUE.to_owned(),
            price: dollars(cents),
            size: size as f64,
            time: now,
            conditions,
        }));

        // The side the trade took liquidity from shows less size, or fresh size once emptied.
        // The quote is published again even when its rounded size did not change, so every
        // trade at the touch is followed by the quote that stands after it.
        if let Some(side) = touched {
            let fresh = round_lot_size(&mut self.rng);
            let book = &mut self.symbols[index].book;
            let remaining = match side {
                Side::Bid => &mut book.bid_size,
                Side::Ask => &mut book.ask_size,
            };
            // Quotes display whole round lots, as the consolidated quote does.
            *remaining = match remaining.saturating_sub(size) / 100 * 100 {
                0 => fresh,
                left => left,
            };
            events.push(self.quote_event(index, now));
        }
    }

    fn news(&mut self, now: DateTime<Utc>, events: &mut Vec<MarketEvent>) {
        self.next_news = self.after(now, self.news_interval_seconds);
        if self.symbols.is_empty() {
            return;
        }
        let first = self.rng.random_range(0..self.symbols.len());
        let second = if self.symbols.len() > 1 && self.rng.random::<f64>() < 0.3 {
            let other = self.rng.random_range(0..self.symbols.len() - 1);
            Some(if other >= first { other + 1 } else { other })
        } else {
            None
        };
        let id = self.next_news_id;
        self.next_news_id += 1;
        let item = write_news(
            &mut self.rng,
            id,
            &self.symbols[first],
            second.map(|i| &self.symbols[i]),
            self.session,
        );
        events.push(MarketEvent::News(News {
            created_at: now,
            updated_at: now,
            ..item
        }));
    }

    fn quote_event(&self, index: usize, now: DateTime<Utc>) -> MarketEvent {
        let symbol = &self.symbols[index];
        MarketEvent::Quote(Quote {
            symbol: symbol.name.clone(),
            bid_price: dollars(symbol.book.bid),
            bid_size: symbol.book.bid_size as f64,
            bid_venue: VENUE.to_owned(),
            ask_price: dollars(symbol.book.ask),
            ask_size: symbol.book.ask_size as f64,
            ask_venue: VENUE.to_owned(),
            time: now,
        })
    }

    fn status(&self, now: DateTime<Utc>) -> MarketEvent {
        let message = match (self.session, self.always_open) {
            (MarketSession::Regular, true) => {
                "regular session (simulator kept open around the clock)"
            }
            (MarketSession::Pre, _) => "pre-market session, 04:00-09:30 New York time",
            (MarketSession::Regular, _) => "regular session, 09:30-16:00 New York time",
            (MarketSession::After, _) => "after-hours session, 16:00-20:00 New York time",
            (MarketSession::Closed, _) => "market closed",
        };
        MarketEvent::Status(Status {
            symbol: "*".to_owned(),
            code: self.session.status_code().to_owned(),
            message: message.to_owned(),
            time: now,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Bid,
    Ask,
}

/// A standard normal sample (Box-Muller), so no distribution crate is needed.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// 100 to 800 shares: the size a quote displays.
fn round_lot_size(rng: &mut StdRng) -> u64 {
    100 * rng.random_range(1..=8u64)
}

/// Mostly round lots (small ones far more often than large), some odd lots below 100.
fn trade_size(rng: &mut StdRng) -> u64 {
    if rng.random::<f64>() < 0.15 {
        return rng.random_range(1..100u64);
    }
    let uniform: f64 = rng.random();
    let lots = 1.0 + (-(1.0 - uniform).ln() * 1.5).floor();
    100 * (lots.min(50.0) as u64)
}

/// A quote one to three ticks wide around `fair_cents`. Sizes are kept from `previous` when
/// its prices did not change, as a real book's would be.
fn quote_around(rng: &mut StdRng, fair_cents: f64, previous: Option<TopOfBook>) -> TopOfBook {
    let roll: f64 = rng.random();
    let spread: i64 = if roll < 0.6 {
        1
    } else if roll < 0.9 {
        2
    } else {
        3
    };
    let bid = ((fair_cents - spread as f64 / 2.0).round() as i64).max(1);
    let ask = bid + spread;
    let bid_size = round_lot_size(rng);
    let ask_size = round_lot_size(rng);
    match previous {
        Some(previous) if previous.bid == bid && previous.ask == ask => previous,
        _ => TopOfBook {
            bid,
            ask,
            bid_size,
            ask_size,
        },
    }
}

fn company_name(symbol: &str) -> String {
    match symbol {
        "AAPL" => "Apple",
        "MSFT" => "Microsoft",
        "GOOGL" | "GOOG" => "Alphabet",
        "AMZN" => "Amazon",
        "NVDA" => "Nvidia",
        "TSLA" => "Tesla",
        "META" => "Meta Platforms",
        "SPY" => "SPDR S&P 500 ETF",
        other => other,
    }
    .to_owned()
}

const AUTHORS: [&str; 6] = [
    "Dana Whitfield",
    "Marcus Chen",
    "Priya Raman",
    "Tom Okafor",
    "Elena Petrova",
    "Sam Ortiz",
];

const FIRMS: [&str; 5] = [
    "Harbor Lane Capital",
    "Northgate Securities",
    "Bluewater Research",
    "Keystone Partners",
    "Summit Ridge Advisors",
];

/// Builds a templated news item (times are filled in by the caller).
fn write_news(
    rng: &mut StdRng,
    id: u64,
    first: &SymbolState,
    second: Option<&SymbolState>,
    session: MarketSession,
) -> News {
    let name = &first.company;
    let ticker = &first.name;
    let price = dollars(first.last_cents);
    let change = (first.last_cents - first.reference_cents) as f64 / first.reference_cents as f64;
    let (headline, summary) = match second {
        Some(other) => {
            let other_name = &other.company;
            let other_ticker = &other.name;
            match rng.random_range(0..3u32) {
                0 => (
                    format!("{name} and {other_name} announce strategic partnership"),
                    format!(
                        "{name} ({ticker}) and {other_name} ({other_ticker}) said they will work together on cloud and AI infrastructure; terms were not disclosed."
                    ),
                ),
                1 => (
                    format!(
                        "Options traders position for volatility in {ticker} and {other_ticker}"
                    ),
                    format!(
                        "Call and put volume in {ticker} and {other_ticker} ran well above the 20-day average as traders hedged ahead of upcoming data."
                    ),
                ),
                _ => (
                    format!("{name} reportedly in talks to license technology from {other_name}"),
                    format!(
                        "People familiar with the matter said {name} ({ticker}) and {other_name} ({other_ticker}) are in early discussions; neither company commented."
                    ),
                ),
            }
        }
        None => match rng.random_range(0..7u32) {
            0 => {
                let direction = if change > 0.0005 {
                    "rise"
                } else if change < -0.0005 {
                    "fall"
                } else {
                    "hold steady"
                };
                let when = match session {
                    MarketSession::Pre => "pre-market",
                    MarketSession::After => "after-hours",
                    MarketSession::Closed => "overnight",
                    MarketSession::Regular => "active",
                };
                (
                    format!("{name} shares {direction} in {when} trading"),
                    format!(
                        "{ticker} last traded at ${price:.2}, {:+.2}% from where the session started.",
                        change * 100.0
                    ),
                )
            }
            1 => {
                let firm = FIRMS[rng.random_range(0..FIRMS.len())];
                let target = price * rng.random_range(1.08..1.25);
                (
                    format!("{firm} raises {name} price target to ${target:.0}"),
                    format!(
                        "The analyst cited stronger demand and margin expansion, reiterating an outperform rating on {ticker}."
                    ),
                )
            }
            2 => {
                let firm = FIRMS[rng.random_range(0..FIRMS.len())];
                let target = price * rng.random_range(0.78..0.95);
                (
                    format!("{firm} cuts {name} price target to ${target:.0}"),
                    format!(
                        "The analyst lowered estimates on slowing growth and moved {ticker} to market perform."
                    ),
                )
            }
            3 => (
                format!("{name} announces new share buyback program"),
                format!(
                    "The board of {name} ({ticker}) authorized additional repurchases, according to a company statement."
                ),
            ),
            4 => (
                format!("Unusual options activity spotted in {ticker}"),
                format!(
                    "Traders bought short-dated calls in {ticker} at several times the usual volume."
                ),
            ),
            5 => (
                format!("{name} to present at investor technology conference"),
                format!(
                    "Executives of {name} ({ticker}) are scheduled to speak about product plans next week."
                ),
            ),
            _ => (
                format!("{name} names new chief financial officer"),
                format!(
                    "{name} ({ticker}) said the appointment is effective at the start of next quarter."
                ),
            ),
        },
    };
    let slug: String = headline
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let mut symbols = vec![first.name.clone()];
    symbols.extend(second.map(|s| s.name.clone()));
    News {
        id,
        headline,
        summary: format!("{summary} (Simulated news from the tickgate market simulator.)"),
        author: AUTHORS[rng.random_range(0..AUTHORS.len())].to_owned(),
        source: "tickgate-simulator".to_owned(),
        url: format!("https://example.com/tickgate/news/{id}-{slug}"),
        symbols,
        created_at: DateTime::<Utc>::MIN_UTC,
        updated_at: DateTime::<Utc>::MIN_UTC,
    }
}

/// Checks every event the simulator is about to publish, as any source must: the content
/// rules of [`validate_event`] and, per symbol and kind, no time going backwards. Refused
/// events are dropped and counted in `tickgate_ingest_rejected_total`; nothing panics.
pub struct PublishGuard {
    universe: SymbolUniverse,
    sink: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    last_times: HashMap<(String, EventKind), DateTime<Utc>>,
    /// When a refusal was last logged, and how many were counted but not logged since: a
    /// persistent problem is logged every few seconds, not several times a second.
    last_warning: Option<std::time::Instant>,
    unlogged_refusals: u64,
}

/// Shortest time between two refusal warnings of the simulator.
const WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl PublishGuard {
    pub fn new(universe: SymbolUniverse, sink: Arc<dyn EventSink>, metrics: Arc<Metrics>) -> Self {
        PublishGuard {
            universe,
            sink,
            metrics,
            last_times: HashMap::new(),
            last_warning: None,
            unlogged_refusals: 0,
        }
    }

    /// Whether to log this refusal now; counts the ones it swallows.
    fn should_warn(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.unlogged_refusals += 1;
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unlogged_refusals))
    }

    /// Publishes `event` if it passes the checks; returns whether the sink accepted it.
    pub fn publish(&mut self, event: MarketEvent) -> bool {
        if let Err(invalid) = self.check(&event) {
            if let Some(since) = self.should_warn() {
                tracing::warn!(source = SOURCE_NAME, reason = %invalid, refused_since_last_warning = since, "dropped an invalid simulated event");
            }
            self.metrics
                .ingest_rejected(SOURCE_NAME, invalid.reason_label());
            return false;
        }
        match self.sink.publish(event) {
            Ok(_) => true,
            Err(error) => {
                let reason = error.reason_label();
                if let Some(since) = self.should_warn() {
                    tracing::warn!(source = SOURCE_NAME, %error, refused_since_last_warning = since, "the hub refused a simulated event");
                }
                self.metrics.ingest_rejected(SOURCE_NAME, reason);
                false
            }
        }
    }

    fn check(&mut self, event: &MarketEvent) -> Result<(), InvalidEvent> {
        validate_event(event, &self.universe)?;
        if let Some(symbol) = event.symbol() {
            let time = event.time();
            let key = (symbol.to_owned(), event.kind());
            if self.last_times.get(&key).is_some_and(|last| time < *last) {
                return Err(InvalidEvent::TimeWentBackwards {
                    symbol: symbol.to_owned(),
                });
            }
            self.last_times.insert(key, time);
        }
        Ok(())
    }
}

/// Where a simulator continues when it takes over from another node's (cluster mode): the
/// last published trade price per symbol and the highest trade id, read from the feed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    pub prices: std::collections::BTreeMap<String, f64>,
    pub last_trade_id: u64,
}

impl Resume {
    /// From the hub's latest values (trades; quotes and bars are ignored).
    pub fn from_latest(latest: &[Arc<Entry>]) -> Resume {
        let mut resume = Resume::default();
        for entry in latest {
            if let Ok(MarketEvent::Trade(trade)) =
                serde_json::from_slice::<MarketEvent>(&entry.json)
            {
                resume.last_trade_id = resume.last_trade_id.max(trade.id);
                resume.prices.insert(trade.symbol, trade.price);
            }
        }
        resume
    }
}

/// Runs the simulator in real time until `shutdown` fires, publishing through `sink`.
pub async fn run(
    settings: SimulatorSettings,
    symbols: Vec<String>,
    sink: Arc<dyn EventSink>,
    sources: SourceRegistry,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    run_resumed(
        settings,
        symbols,
        Resume::default(),
        sink,
        sources,
        metrics,
        shutdown,
    )
    .await;
}

/// [`run`], starting from `resume`'s prices (over the configured initial prices) and trade
/// ids.
pub async fn run_resumed(
    mut settings: SimulatorSettings,
    symbols: Vec<String>,
    resume: Resume,
    sink: Arc<dyn EventSink>,
    sources: SourceRegistry,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let universe = SymbolUniverse::new(symbols.iter().cloned());
    if !resume.prices.is_empty() {
        tracing::info!(
            symbols = resume.prices.len(),
            last_trade_id = resume.last_trade_id,
            "simulator continues from the feed's last prices"
        );
    }
    settings.initial_prices.extend(resume.prices);
    let mut simulator = MarketSimulator::new(&settings, universe.names(), Utc::now());
    simulator.continue_trade_ids_after(resume.last_trade_id);
    let mut guard = PublishGuard::new(universe, sink, metrics);
    sources.report(SOURCE_NAME, SourceHealth::Up);
    tracing::info!(
        symbols = symbols.len(),
        seed = settings.seed,
        trades_per_second = settings.trades_per_second,
        always_open = settings.always_open,
        "market simulator started"
    );
    loop {
        let now = Utc::now();
        if now - simulator.clock() > MAX_CATCH_UP {
            tracing::warn!(
                behind_ms = (now - simulator.clock()).num_milliseconds(),
                "the simulator fell behind the clock; skipping ahead"
            );
            for event in simulator.skip_to(now) {
                guard.publish(event);
            }
        }
        for event in simulator.advance(now) {
            guard.publish(event);
        }
        let wait = simulator
            .next_event_time()
            .and_then(|next| (next - Utc::now()).to_std().ok())
            .unwrap_or(MAX_WAKE_INTERVAL)
            .clamp(MIN_WAKE_INTERVAL, MAX_WAKE_INTERVAL);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::PublishError;
    use parking_lot::Mutex;

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
        let guard = PublishGuard::new(universe, sink.clone(), Arc::clone(&metrics));
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
}
