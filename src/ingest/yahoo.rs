//! The Yahoo Finance chart poller: `GET {base_url}/v8/finance/chart/{symbol}?interval=1m&range=1d`
//! mapped onto protocol bars (one per complete minute of `timestamp[]` and
//! `indicators.quote[0]`) and trades (`meta.regularMarketPrice` at `meta.regularMarketTime`).
//!
//! The mapping is documented in docs/sources.md. Nulls inside the arrays, empty results,
//! `result: null` with an `error` object and zero prices are dropped and counted per symbol;
//! they do not fail the round. Transport failures, 429/5xx, other unexpected statuses and
//! bodies that are not chart JSON fail the round (backoff, circuit).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::ingest::config::PollerSettings;
use crate::ingest::poller::{HttpReply, PollFailure, PollRound, PriceCheck, PriceGuard, fetch};
use crate::ingest::source::SourceContext;
use crate::market::{Bar, MarketEvent, Trade};

#[derive(Debug, Deserialize)]
struct Envelope {
    chart: Option<Chart>,
}

#[derive(Debug, Deserialize)]
struct Chart {
    #[serde(default)]
    result: Option<Vec<ChartResult>>,
    #[serde(default)]
    error: Option<ProviderError>,
}

#[derive(Debug, Deserialize)]
struct ProviderError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChartResult {
    #[serde(default)]
    meta: Option<Meta>,
    #[serde(default)]
    timestamp: Option<Vec<Option<i64>>>,
    #[serde(default)]
    indicators: Option<Indicators>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    regular_market_price: Option<f64>,
    #[serde(default)]
    regular_market_time: Option<i64>,
    #[serde(default)]
    regular_market_volume: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Indicators {
    #[serde(default)]
    quote: Option<Vec<QuoteArrays>>,
}

#[derive(Debug, Default, Deserialize)]
struct QuoteArrays {
    #[serde(default)]
    open: Vec<Option<f64>>,
    #[serde(default)]
    high: Vec<Option<f64>>,
    #[serde(default)]
    low: Vec<Option<f64>>,
    #[serde(default)]
    close: Vec<Option<f64>>,
    #[serde(default)]
    volume: Vec<Option<f64>>,
}

fn cell(values: &[Option<f64>], index: usize) -> Option<f64> {
    values
        .get(index)
        .copied()
        .flatten()
        .filter(|v| v.is_finite())
}

fn from_unix(seconds: i64) -> Option<DateTime<Utc>> {
    if seconds <= 0 {
        return None;
    }
    DateTime::from_timestamp(seconds, 0)
}

#[derive(Debug, Default)]
struct SymbolState {
    /// The newest bar published, to publish only new minutes and changed current minutes.
    last_bar: Option<Bar>,
    /// The provider's cumulative day volume at the last published trade.
    last_day_volume: Option<f64>,
}

/// One Yahoo source: its symbols, guards and per-symbol state.
pub struct YahooRound {
    client: reqwest::Client,
    base_url: String,
    request_timeout: std::time::Duration,
    symbols: Vec<String>,
    /// Gateway symbol -> provider symbol, where they differ.
    symbol_map: HashMap<String, String>,
    context: SourceContext,
    guard: PriceGuard,
    state: HashMap<String, SymbolState>,
    next_trade_id: u64,
}

impl YahooRound {
    pub fn new(
        client: reqwest::Client,
        settings: &PollerSettings,
        symbols: Vec<String>,
        context: SourceContext,
    ) -> YahooRound {
        YahooRound {
            client,
            base_url: settings.effective_base_url(),
            request_timeout: settings.request_timeout,
            symbols,
            symbol_map: settings
                .symbol_map
                .iter()
                .map(|(k, v)| (k.trim().to_ascii_uppercase(), v.trim().to_owned()))
                .collect(),
            context,
            guard: PriceGuard::new(settings.max_jump_fraction, settings.jump_confirmations),
            state: HashMap::new(),
            next_trade_id: 1,
        }
    }

    async fn poll_symbol(&mut self, symbol: &str) -> Result<(), PollFailure> {
        // Yahoo spells share classes with '-' (map them in `symbol_map`), and a '/' must not
        // open a new path segment.
        let upstream = self.symbol_map.get(symbol).map_or(symbol, String::as_str);
        let path_symbol = upstream.replace('/', "%2F");
        let url = format!("{}/v8/finance/chart/{path_symbol}", self.base_url);
        let request = self
            .client
            .get(url)
            .query(&[("interval", "1m"), ("range", "1d")])
            .timeout(self.request_timeout);
        let reply = fetch(request).await?;
        self.handle_reply(symbol, &reply)
    }

    fn handle_reply(&mut self, symbol: &str, reply: &HttpReply) -> Result<(), PollFailure> {
        let success = (200..300).contains(&reply.status);
        let envelope: Envelope = match reply.json() {
            Ok(envelope) => envelope,
            // A 404 for an unknown symbol still carries the chart error object; anything else
            // that is not chart JSON on an error status is a failed round.
            Err(_) if !success => {
                return Err(PollFailure::Status {
                    status: reply.status,
                    retry_after: None,
                });
            }
            Err(failure) => return Err(failure),
        };
        let Some(chart) = envelope.chart else {
            if !success {
                return Err(PollFailure::Status {
                    status: reply.status,
                    retry_after: None,
                });
            }
            return Err(PollFailure::BadShape("no \"chart\" object".into()));
        };
        if let Some(error) = &chart.error {
            tracing::debug!(
                source = %self.context.name,
                symbol,
                code = error.code.as_deref().unwrap_or(""),
                description = error.description.as_deref().unwrap_or(""),
                "provider reported an error for the symbol"
            );
            if chart.result.as_ref().is_none_or(Vec::is_empty) {
                self.context.reject("provider_error");
                return Ok(());
            }
        }
        if !success {
            return Err(PollFailure::Status {
                status: reply.status,
                retry_after: None,
            });
        }
        let Some(result) = chart.result.and_then(|r| r.into_iter().next()) else {
            self.context.reject("empty_result");
            return Ok(());
        };
        self.publish_bars(symbol, &result);
        self.publish_trade(symbol, &result);
        Ok(())
    }

    fn publish_bars(&mut self, symbol: &str, result: &ChartResult) {
        let empty = QuoteArrays::default();
        let quote = result
            .indicators
            .as_ref()
            .and_then(|i| i.quote.as_ref())
            .and_then(|q| q.first())
            .unwrap_or(&empty);
        let timestamps = result.timestamp.as_deref().unwrap_or(&[]);
        let mut bars: Vec<Bar> = Vec::with_capacity(timestamps.len());
        for (index, timestamp) in timestamps.iter().enumerate() {
            let (Some(time), Some(open), Some(high), Some(low), Some(close)) = (
                // The newest point carries the current time, not the minute start: floor it.
                timestamp.and_then(|t| from_unix(t - t.rem_euclid(60))),
                cell(&quote.open, index),
                cell(&quote.high, index),
                cell(&quote.low, index),
                cell(&quote.close, index),
            ) else {
                self.context.reject("null_value");
                continue;
            };
            let bar = Bar {
                symbol: symbol.to_owned(),
                open,
                high,
                low,
                close,
                volume: cell(&quote.volume, index).unwrap_or(0.0).max(0.0),
                trade_count: 0,
                vwap: 0.0,
                time,
            };
            // Two points in one minute: the later one is the fuller picture of that minute.
            if bars.last().is_some_and(|last| last.time == bar.time) {
                bars.pop();
            }
            bars.push(bar);
        }
        let state = self.state.entry(symbol.to_owned()).or_default();
        for bar in bars {
            let new = match &state.last_bar {
                None => true,
                Some(last) => bar.time > last.time || (bar.time == last.time && bar != *last),
            };
            if !new {
                continue;
            }
            if self.context.publish(MarketEvent::Bar(bar.clone())).is_ok() {
                state.last_bar = Some(bar);
            }
        }
    }

    fn publish_trade(&mut self, symbol: &str, result: &ChartResult) {
        let meta = result.meta.as_ref();
        let Some(price) = meta
            .and_then(|m| m.regular_market_price)
            .filter(|p| p.is_finite())
        else {
            self.context.reject("null_value");
            return;
        };
        if price <= 0.0 {
            self.context.reject("zero_price");
            return;
        }
        let last_timestamp = result
            .timestamp
            .as_deref()
            .and_then(|t| t.iter().rev().find_map(|t| *t));
        let Some(time) = meta
            .and_then(|m| m.regular_market_time)
            .or(last_timestamp)
            .and_then(from_unix)
        else {
            self.context.reject("no_time");
            return;
        };
        match self.guard.check(symbol, price) {
            PriceCheck::Unchanged => return,
            PriceCheck::ImplausibleJump => {
                tracing::warn!(
                    source = %self.context.name,
                    symbol,
                    price,
                    last = self.guard.last_accepted(symbol),
                    "implausible price jump dropped"
                );
                self.context.reject("implausible_jump");
                return;
            }
            PriceCheck::Publish => {}
        }
        let state = self.state.entry(symbol.to_owned()).or_default();
        let day_volume = meta
            .and_then(|m| m.regular_market_volume)
            .filter(|v| v.is_finite());
        // Size is what traded since the previous published price, when the provider reports a
        // cumulative volume; a last-price poll has no print size of its own.
        let size = match (state.last_day_volume, day_volume) {
            (Some(before), Some(now)) if now > before => now - before,
            _ => 1.0,
        };
        let trade = Trade {
            symbol: symbol.to_owned(),
            id: self.next_trade_id,
            venue: self.context.name.clone(),
            price,
            size,
            time,
            conditions: Vec::new(),
        };
        if self.context.publish(MarketEvent::Trade(trade)).is_ok() {
            self.next_trade_id += 1;
            self.guard.accept(symbol, price);
            if day_volume.is_some() {
                state.last_day_volume = day_volume;
            }
        }
    }
}

impl PollRound for YahooRound {
    async fn poll_round(&mut self) -> Result<(), PollFailure> {
        for symbol in self.symbols.clone() {
            self.poll_symbol(&symbol).await?;
        }
        Ok(())
    }
}
