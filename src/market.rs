//! Market-data shapes shared by every source and transport (docs/protocol.md, "Data shapes"), the symbol
//! universe, and the checks every published tick must pass.
//!
//! Prices and sizes in market data are JSON numbers (`f64`), as in the protocol. Producers are
//! expected to send tick-rounded prices; the validation here rejects NaN, infinities, zero and
//! negative prices and time going backwards per symbol. The trading engine never computes with
//! these floats: it converts them to exact decimals at its boundary.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Serializes whole numbers without a fractional part (`100`, not `100.0`), as market-data
/// users expect for sizes, while keeping prices like `126.5` as they are.
fn number<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// A trade print (`"T":"t"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    #[serde(rename = "S")]
    pub symbol: String,
    /// Trade id, kept exactly as the producer gave it.
    #[serde(rename = "i")]
    pub id: u64,
    #[serde(rename = "x", default)]
    pub venue: String,
    #[serde(rename = "p", serialize_with = "number")]
    pub price: f64,
    #[serde(rename = "s", serialize_with = "number")]
    pub size: f64,
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
    #[serde(rename = "c", default)]
    pub conditions: Vec<String>,
}

/// A top-of-book quote (`"T":"q"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quote {
    #[serde(rename = "S")]
    pub symbol: String,
    #[serde(rename = "bp", serialize_with = "number")]
    pub bid_price: f64,
    #[serde(rename = "bs", serialize_with = "number")]
    pub bid_size: f64,
    #[serde(rename = "bx", default)]
    pub bid_venue: String,
    #[serde(rename = "ap", serialize_with = "number")]
    pub ask_price: f64,
    #[serde(rename = "as", serialize_with = "number")]
    pub ask_size: f64,
    #[serde(rename = "ax", default)]
    pub ask_venue: String,
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
}

/// A one-minute bar (`"T":"b"`); `t` is the start of the minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    #[serde(rename = "S")]
    pub symbol: String,
    #[serde(rename = "o", serialize_with = "number")]
    pub open: f64,
    #[serde(rename = "h", serialize_with = "number")]
    pub high: f64,
    #[serde(rename = "l", serialize_with = "number")]
    pub low: f64,
    #[serde(rename = "c", serialize_with = "number")]
    pub close: f64,
    #[serde(rename = "v", serialize_with = "number")]
    pub volume: f64,
    #[serde(rename = "n")]
    pub trade_count: u64,
    #[serde(rename = "vw", serialize_with = "number")]
    pub vwap: f64,
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
}

/// A status notice for one symbol or for all (`"S":"*"`), e.g. upstream down or session change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "S")]
    pub symbol: String,
    #[serde(rename = "sc")]
    pub code: String,
    #[serde(rename = "sm")]
    pub message: String,
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
}

/// A news item (`"T":"n"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct News {
    pub id: u64,
    pub headline: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub symbols: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Info,
    Warning,
    Critical,
}

/// An announcement or admin notice (`"T":"alert"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: u64,
    pub level: AlertLevel,
    pub msg: String,
    #[serde(rename = "t")]
    pub time: DateTime<Utc>,
}

/// Every kind of event the hub carries, tagged by `"T"` exactly as on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "T")]
pub enum MarketEvent {
    #[serde(rename = "t")]
    Trade(Trade),
    #[serde(rename = "q")]
    Quote(Quote),
    #[serde(rename = "b")]
    Bar(Bar),
    #[serde(rename = "s")]
    Status(Status),
    #[serde(rename = "n")]
    News(News),
    #[serde(rename = "alert")]
    Alert(Alert),
}

/// The kind of an event; also the SSE `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Trade,
    Quote,
    Bar,
    Status,
    News,
    Alert,
}

impl EventKind {
    /// The SSE `event:` field for this kind.
    pub fn event_name(self) -> &'static str {
        match self {
            EventKind::Trade => "trade",
            EventKind::Quote => "quote",
            EventKind::Bar => "bar",
            EventKind::Status => "status",
            EventKind::News => "news",
            EventKind::Alert => "alert",
        }
    }

    /// Bit used in subscription type masks.
    pub fn bit(self) -> u8 {
        match self {
            EventKind::Trade => 1,
            EventKind::Quote => 2,
            EventKind::Bar => 4,
            EventKind::Status => 8,
            EventKind::News => 16,
            EventKind::Alert => 32,
        }
    }

    /// Parses the plural names used in `types=` filters and WebSocket subscriptions.
    pub fn from_plural(name: &str) -> Option<EventKind> {
        match name {
            "trades" => Some(EventKind::Trade),
            "quotes" => Some(EventKind::Quote),
            "bars" => Some(EventKind::Bar),
            "statuses" => Some(EventKind::Status),
            "news" => Some(EventKind::News),
            "alerts" => Some(EventKind::Alert),
            _ => None,
        }
    }
}

impl MarketEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            MarketEvent::Trade(_) => EventKind::Trade,
            MarketEvent::Quote(_) => EventKind::Quote,
            MarketEvent::Bar(_) => EventKind::Bar,
            MarketEvent::Status(_) => EventKind::Status,
            MarketEvent::News(_) => EventKind::News,
            MarketEvent::Alert(_) => EventKind::Alert,
        }
    }

    /// The single symbol a market event is about (`None` for news, alerts and `*` statuses).
    pub fn symbol(&self) -> Option<&str> {
        match self {
            MarketEvent::Trade(t) => Some(&t.symbol),
            MarketEvent::Quote(q) => Some(&q.symbol),
            MarketEvent::Bar(b) => Some(&b.symbol),
            MarketEvent::Status(s) if s.symbol != "*" => Some(&s.symbol),
            _ => None,
        }
    }

    pub fn time(&self) -> DateTime<Utc> {
        match self {
            MarketEvent::Trade(t) => t.time,
            MarketEvent::Quote(q) => q.time,
            MarketEvent::Bar(b) => b.time,
            MarketEvent::Status(s) => s.time,
            MarketEvent::News(n) => n.updated_at,
            MarketEvent::Alert(a) => a.time,
        }
    }
}

/// Index of a symbol in the [`SymbolUniverse`]; used for bitsets and per-symbol arrays.
pub type SymbolId = u16;

/// Upper bound on the universe; keeps per-symbol state in small fixed arrays.
pub const MAX_SYMBOLS: usize = 4096;

/// The fixed set of symbols this gateway serves, from configuration.
#[derive(Debug, Clone)]
pub struct SymbolUniverse {
    names: Arc<Vec<String>>,
    index: Arc<HashMap<String, SymbolId>>,
}

impl SymbolUniverse {
    pub fn new<I, S>(symbols: I) -> SymbolUniverse
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = Vec::new();
        let mut index = HashMap::new();
        for symbol in symbols {
            let symbol: String = symbol.into();
            let symbol = symbol.trim().to_ascii_uppercase();
            if symbol.is_empty() || index.contains_key(&symbol) || names.len() >= MAX_SYMBOLS {
                continue;
            }
            index.insert(symbol.clone(), names.len() as SymbolId);
            names.push(symbol);
        }
        SymbolUniverse {
            names: Arc::new(names),
            index: Arc::new(index),
        }
    }

    pub fn id(&self, symbol: &str) -> Option<SymbolId> {
        self.index.get(symbol).copied()
    }

    pub fn name(&self, id: SymbolId) -> &str {
        &self.names[usize::from(id)]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, symbol: &str) -> bool {
        self.index.contains_key(symbol)
    }
}

/// Why an event was refused by [`validate_event`]. The text is shown to producers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("unknown symbol {0}")]
    UnknownSymbol(String),
    #[error("{field} must be a finite number")]
    NotFinite { field: &'static str },
    #[error("{field} must be greater than zero")]
    NotPositive { field: &'static str },
    #[error("{field} must not be negative")]
    Negative { field: &'static str },
    #[error("bid price {bid} is above ask price {ask}")]
    CrossedQuote { bid: String, ask: String },
    #[error("bar high/low do not contain open and close")]
    BarOutOfRange,
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error(
        "time went backwards for {symbol}: t {given} is before its latest {kind} at {latest} \
         (from any source, the simulator included); send items with t at or after that, e.g. \
         the current time, or turn the simulator off (simulator.enabled = false) when you \
         publish prices for its symbols"
    )]
    TimeWentBackwards {
        symbol: String,
        /// `trade`, `quote` or `bar`.
        kind: &'static str,
        given: String,
        latest: String,
    },
    #[error("{field} is too long: {len} {unit}, at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
        unit: &'static str,
    },
}

/// Per-field limits of published items (docs/sources.md "Limits"), so that an item costs the
/// replay window, the latest values and every subscriber queue a bounded amount however it
/// arrives. Text limits are in bytes of UTF-8, list limits in entries.
pub mod limits {
    /// Venue codes (`x`, `bx`, `ax`).
    pub const VENUE_BYTES: usize = 16;
    /// Trade conditions (`c`): entries, and bytes of each.
    pub const CONDITIONS: usize = 16;
    pub const CONDITION_BYTES: usize = 8;
    /// Status code (`sc`) and message (`sm`).
    pub const STATUS_CODE_BYTES: usize = 64;
    pub const STATUS_MESSAGE_BYTES: usize = 1024;
    /// News.
    pub const HEADLINE_BYTES: usize = 1024;
    pub const SUMMARY_BYTES: usize = 16 * 1024;
    pub const AUTHOR_BYTES: usize = 256;
    pub const SOURCE_BYTES: usize = 256;
    pub const URL_BYTES: usize = 2048;
    pub const NEWS_SYMBOLS: usize = 64;
    /// Alert message (`msg`).
    pub const ALERT_BYTES: usize = 4096;
}

fn at_most(field: &'static str, len: usize, max: usize) -> Result<(), InvalidEvent> {
    too_long(field, len, max, "bytes")
}

fn at_most_entries(field: &'static str, len: usize, max: usize) -> Result<(), InvalidEvent> {
    too_long(field, len, max, "entries")
}

fn too_long(
    field: &'static str,
    len: usize,
    max: usize,
    unit: &'static str,
) -> Result<(), InvalidEvent> {
    if len > max {
        Err(InvalidEvent::TooLong {
            field,
            len,
            max,
            unit,
        })
    } else {
        Ok(())
    }
}

impl InvalidEvent {
    /// Stable short label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            InvalidEvent::UnknownSymbol(_) => "unknown_symbol",
            InvalidEvent::NotFinite { .. } => "not_finite",
            InvalidEvent::NotPositive { .. } => "not_positive",
            InvalidEvent::Negative { .. } => "negative",
            InvalidEvent::CrossedQuote { .. } => "crossed_quote",
            InvalidEvent::BarOutOfRange => "bar_out_of_range",
            InvalidEvent::Empty { .. } => "empty",
            InvalidEvent::TimeWentBackwards { .. } => "time_backwards",
            InvalidEvent::TooLong { .. } => "too_long",
        }
    }
}

fn positive(field: &'static str, value: f64) -> Result<(), InvalidEvent> {
    if !value.is_finite() {
        return Err(InvalidEvent::NotFinite { field });
    }
    if value <= 0.0 {
        return Err(InvalidEvent::NotPositive { field });
    }
    Ok(())
}

fn non_negative(field: &'static str, value: f64) -> Result<(), InvalidEvent> {
    if !value.is_finite() {
        return Err(InvalidEvent::NotFinite { field });
    }
    if value < 0.0 {
        return Err(InvalidEvent::Negative { field });
    }
    Ok(())
}

/// Checks the content of one event (everything except per-symbol time order, which the hub
/// checks because it knows the previous time).
pub fn validate_event(event: &MarketEvent, universe: &SymbolUniverse) -> Result<(), InvalidEvent> {
    if let Some(symbol) = event.symbol()
        && !universe.contains(symbol)
    {
        return Err(InvalidEvent::UnknownSymbol(symbol.to_owned()));
    }
    match event {
        MarketEvent::Trade(t) => {
            positive("p", t.price)?;
            positive("s", t.size)?;
            at_most("x", t.venue.len(), limits::VENUE_BYTES)?;
            at_most_entries("c", t.conditions.len(), limits::CONDITIONS)?;
            for condition in &t.conditions {
                at_most("c[]", condition.len(), limits::CONDITION_BYTES)?;
            }
        }
        MarketEvent::Quote(q) => {
            positive("bp", q.bid_price)?;
            positive("ap", q.ask_price)?;
            non_negative("bs", q.bid_size)?;
            non_negative("as", q.ask_size)?;
            at_most("bx", q.bid_venue.len(), limits::VENUE_BYTES)?;
            at_most("ax", q.ask_venue.len(), limits::VENUE_BYTES)?;
            if q.bid_price > q.ask_price {
                return Err(InvalidEvent::CrossedQuote {
                    bid: q.bid_price.to_string(),
                    ask: q.ask_price.to_string(),
                });
            }
        }
        MarketEvent::Bar(b) => {
            positive("o", b.open)?;
            positive("h", b.high)?;
            positive("l", b.low)?;
            positive("c", b.close)?;
            non_negative("v", b.volume)?;
            non_negative("vw", b.vwap)?;
            let contains = |x: f64| x <= b.high && x >= b.low;
            if b.low > b.high || !contains(b.open) || !contains(b.close) {
                return Err(InvalidEvent::BarOutOfRange);
            }
        }
        MarketEvent::Status(s) => {
            if s.code.is_empty() {
                return Err(InvalidEvent::Empty { field: "sc" });
            }
            at_most("sc", s.code.len(), limits::STATUS_CODE_BYTES)?;
            at_most("sm", s.message.len(), limits::STATUS_MESSAGE_BYTES)?;
            if s.symbol != "*" && !universe.contains(&s.symbol) {
                return Err(InvalidEvent::UnknownSymbol(s.symbol.clone()));
            }
        }
        MarketEvent::News(n) => {
            if n.headline.trim().is_empty() {
                return Err(InvalidEvent::Empty { field: "headline" });
            }
            at_most("headline", n.headline.len(), limits::HEADLINE_BYTES)?;
            at_most("summary", n.summary.len(), limits::SUMMARY_BYTES)?;
            at_most("author", n.author.len(), limits::AUTHOR_BYTES)?;
            at_most("source", n.source.len(), limits::SOURCE_BYTES)?;
            at_most("url", n.url.len(), limits::URL_BYTES)?;
            at_most_entries("symbols", n.symbols.len(), limits::NEWS_SYMBOLS)?;
            if let Some(unknown) = n.symbols.iter().find(|s| !universe.contains(s)) {
                return Err(InvalidEvent::UnknownSymbol(unknown.clone()));
            }
        }
        MarketEvent::Alert(a) => {
            if a.msg.trim().is_empty() {
                return Err(InvalidEvent::Empty { field: "msg" });
            }
            at_most("msg", a.msg.len(), limits::ALERT_BYTES)?;
        }
    }
    Ok(())
}

/// Trading session of the (simulated) exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketSession {
    Pre,
    Regular,
    After,
    Closed,
}

impl MarketSession {
    /// The status code published on the market feed when the session changes.
    pub fn status_code(self) -> &'static str {
        match self {
            MarketSession::Pre => "market_pre",
            MarketSession::Regular => "market_open",
            MarketSession::After => "market_after",
            MarketSession::Closed => "market_closed",
        }
    }
}

/// The US equity session calendar in New York time: pre-market 04:00-09:30, regular
/// 09:30-16:00, after hours 16:00-20:00, closed otherwise and all weekend. Exchange holidays
/// are not modelled. `always_open` keeps the session regular around the clock (demos).
pub fn session_at(now: DateTime<Utc>, always_open: bool) -> MarketSession {
    use chrono::{Datelike, Timelike, Weekday};
    if always_open {
        return MarketSession::Regular;
    }
    let Some(local) = now.naive_utc().checked_add_signed(new_york_utc_offset(now)) else {
        return MarketSession::Closed;
    };
    if matches!(local.weekday(), Weekday::Sat | Weekday::Sun) {
        return MarketSession::Closed;
    }
    let minute = local.hour() * 60 + local.minute();
    match minute {
        240..570 => MarketSession::Pre,
        570..960 => MarketSession::Regular,
        960..1200 => MarketSession::After,
        _ => MarketSession::Closed,
    }
}

/// The first instant after `now` at which [`session_at`] gives a different session; `None`
/// when the session never changes (`always_open`).
pub fn next_session_change(now: DateTime<Utc>, always_open: bool) -> Option<DateTime<Utc>> {
    if always_open {
        return None;
    }
    let current = session_at(now, false);
    let local_date = now
        .naive_utc()
        .checked_add_signed(new_york_utc_offset(now))?
        .date();
    // Sessions only change at these local wall-clock times, and a weekend is at most two and
    // a half days long, so a week of candidates always contains the next change.
    const BOUNDARIES: [(u32, u32); 4] = [(4, 0), (9, 30), (16, 0), (20, 0)];
    for day in 0..8 {
        let date = local_date.checked_add_days(chrono::Days::new(day))?;
        for (hour, minute) in BOUNDARIES {
            let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                continue;
            };
            // No boundary falls in the 01:00-03:00 window where the clocks change, so the
            // offset a few hours either side of the boundary is the offset at it.
            let guess = local
                .and_utc()
                .checked_add_signed(chrono::TimeDelta::hours(5))?;
            let candidate = local
                .checked_sub_signed(new_york_utc_offset(guess))?
                .and_utc();
            if candidate > now && session_at(candidate, false) != current {
                return Some(candidate);
            }
        }
    }
    None
}

/// New York's offset from UTC at `now`: -4 h during US daylight saving time (from 02:00 local
/// on the second Sunday of March to 02:00 local on the first Sunday of November), else -5 h.
pub fn new_york_utc_offset(now: DateTime<Utc>) -> chrono::TimeDelta {
    use chrono::{Datelike, NaiveDate, Weekday};
    let year = now.year();
    let sunday =
        |month: u32, n: u8| NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, n);
    let (Some(march), Some(november)) = (sunday(3, 2), sunday(11, 1)) else {
        return chrono::TimeDelta::hours(-5);
    };
    // 02:00 EST is 07:00 UTC; 02:00 EDT is 06:00 UTC.
    let starts = march.and_hms_opt(7, 0, 0).map(|t| t.and_utc());
    let ends = november.and_hms_opt(6, 0, 0).map(|t| t.and_utc());
    match (starts, ends) {
        (Some(starts), Some(ends)) if now >= starts && now < ends => chrono::TimeDelta::hours(-4),
        _ => chrono::TimeDelta::hours(-5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn universe() -> SymbolUniverse {
        SymbolUniverse::new(["AAPL", "MSFT"])
    }

    #[test]
    fn trade_serializes_with_protocol_keys() {
        let trade = MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id: 7,
            venue: "V".into(),
            price: 126.5,
            size: 100.0,
            time: DateTime::parse_from_rfc3339("2026-01-02T14:30:00.123Z")
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            conditions: vec!["@".into()],
        });
        let json = serde_json::to_string(&trade).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"T":"t","S":"AAPL","i":7,"x":"V","p":126.5,"s":100,"t":"2026-01-02T14:30:00.123Z","c":["@"]}"#
        );
    }

    #[test]
    fn every_free_text_field_and_list_of_a_published_item_has_a_limit() {
        let universe = SymbolUniverse::new(["AAPL"]);
        let time = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let news = |headline: usize, summary: usize, symbols: usize| {
            MarketEvent::News(News {
                id: 1,
                headline: "h".repeat(headline),
                summary: "s".repeat(summary),
                author: String::new(),
                source: String::new(),
                url: String::new(),
                symbols: vec!["AAPL".into(); symbols],
                created_at: time,
                updated_at: time,
            })
        };
        let limit_of = |event: &MarketEvent| match validate_event(event, &universe) {
            Err(InvalidEvent::TooLong { field, max, .. }) => Some((field, max)),
            _ => None,
        };
        assert!(
            validate_event(
                &news(
                    limits::HEADLINE_BYTES,
                    limits::SUMMARY_BYTES,
                    limits::NEWS_SYMBOLS
                ),
                &universe
            )
            .is_ok()
        );
        assert_eq!(
            limit_of(&news(1_000_000, 0, 1)),
            Some(("headline", limits::HEADLINE_BYTES))
        );
        assert_eq!(
            limit_of(&news(1, limits::SUMMARY_BYTES + 1, 1)),
            Some(("summary", limits::SUMMARY_BYTES))
        );
        assert_eq!(
            limit_of(&news(1, 0, limits::NEWS_SYMBOLS + 1)),
            Some(("symbols", limits::NEWS_SYMBOLS))
        );
        let alert = MarketEvent::Alert(Alert {
            id: 1,
            level: AlertLevel::Info,
            msg: "m".repeat(limits::ALERT_BYTES + 1),
            time,
        });
        assert_eq!(limit_of(&alert), Some(("msg", limits::ALERT_BYTES)));
        let trade = MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id: 1,
            venue: "V".into(),
            price: 1.0,
            size: 1.0,
            time,
            conditions: vec!["@".into(); limits::CONDITIONS + 1],
        });
        assert_eq!(limit_of(&trade), Some(("c", limits::CONDITIONS)));
        let status = MarketEvent::Status(Status {
            symbol: "*".into(),
            code: "halt".into(),
            message: "x".repeat(limits::STATUS_MESSAGE_BYTES + 1),
            time,
        });
        assert_eq!(
            limit_of(&status),
            Some(("sm", limits::STATUS_MESSAGE_BYTES))
        );
    }

    #[test]
    fn validation_rejects_bad_prices_and_unknown_symbols() {
        let now = Utc::now();
        let mut trade = Trade {
            symbol: "AAPL".into(),
            id: 1,
            venue: String::new(),
            price: f64::NAN,
            size: 1.0,
            time: now,
            conditions: vec![],
        };
        let u = universe();
        assert_eq!(
            validate_event(&MarketEvent::Trade(trade.clone()), &u),
            Err(InvalidEvent::NotFinite { field: "p" })
        );
        trade.price = -1.0;
        assert_eq!(
            validate_event(&MarketEvent::Trade(trade.clone()), &u),
            Err(InvalidEvent::NotPositive { field: "p" })
        );
        trade.price = 10.0;
        trade.symbol = "ZZZZ".into();
        assert_eq!(
            validate_event(&MarketEvent::Trade(trade.clone()), &u),
            Err(InvalidEvent::UnknownSymbol("ZZZZ".into()))
        );
        trade.symbol = "MSFT".into();
        assert_eq!(validate_event(&MarketEvent::Trade(trade), &u), Ok(()));
    }
}
