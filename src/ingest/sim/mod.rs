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
//!
//! Files: this one holds the model; [`news`] writes the news items; [`actor`] runs the model
//! in real time and publishes through the simulator's `SourceContext`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::market::{
    Bar, MarketEvent, MarketSession, News, Quote, Status, Trade, next_session_change, session_at,
};

mod actor;
mod news;
mod settings;

pub use actor::{PublishGuard, Resume, run, run_resumed};
use news::{company_name, write_news};
pub use settings::SimulatorSettings;

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

#[cfg(test)]
mod tests;
