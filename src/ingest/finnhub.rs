//! The Finnhub quote poller: `GET {base_url}/api/v1/quote?symbol=` with the token in the
//! `X-Finnhub-Token` header (never in the URL, never logged), mapped onto protocol trades: `c`
//! (current price) at `t` (unix seconds).
//!
//! `o`, `h`, `l` and `pc` are the day's open, high, low and previous close: a daily bar, which
//! the hub's one-minute bar history cannot hold, so they are used only to recognise the
//! all-zero quote Finnhub returns for unknown symbols. `d` and `dp` are derived and unused.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::ingest::config::PollerSettings;
use crate::ingest::poller::{HttpReply, PollFailure, PollRound, PriceCheck, PriceGuard, fetch};
use crate::ingest::source::SourceContext;
use crate::market::{MarketEvent, Trade};

/// The quote object. Every field is optional: unknown symbols come back as zeros and nulls.
#[derive(Debug, Deserialize)]
struct Quote {
    #[serde(default)]
    c: Option<f64>,
    #[serde(default)]
    h: Option<f64>,
    #[serde(default)]
    l: Option<f64>,
    #[serde(default)]
    o: Option<f64>,
    #[serde(default)]
    pc: Option<f64>,
    #[serde(default)]
    t: Option<i64>,
    #[serde(default)]
    error: Option<String>,
}

/// One Finnhub source.
pub struct FinnhubRound {
    client: reqwest::Client,
    base_url: String,
    request_timeout: std::time::Duration,
    headers: HeaderMap,
    symbols: Vec<String>,
    /// Gateway symbol -> provider symbol, where they differ.
    symbol_map: HashMap<String, String>,
    context: SourceContext,
    guard: PriceGuard,
    next_trade_id: u64,
}

impl FinnhubRound {
    pub fn new(
        client: reqwest::Client,
        settings: &PollerSettings,
        token: &str,
        symbols: Vec<String>,
        context: SourceContext,
    ) -> Result<FinnhubRound, PollFailure> {
        let mut value = HeaderValue::from_str(token).map_err(|_| {
            PollFailure::Config("the API token contains characters not allowed in a header".into())
        })?;
        // Sensitive values are redacted from reqwest's and our own debug output.
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("X-Finnhub-Token", value);
        Ok(FinnhubRound {
            client,
            base_url: settings.effective_base_url(),
            request_timeout: settings.request_timeout,
            headers,
            symbols,
            symbol_map: settings
                .symbol_map
                .iter()
                .map(|(k, v)| (k.trim().to_ascii_uppercase(), v.trim().to_owned()))
                .collect(),
            context,
            guard: PriceGuard::new(settings.max_jump_fraction, settings.jump_confirmations),
            next_trade_id: 1,
        })
    }

    async fn poll_symbol(&mut self, symbol: &str) -> Result<(), PollFailure> {
        let upstream = self.symbol_map.get(symbol).map_or(symbol, String::as_str);
        let request = self
            .client
            .get(format!("{}/api/v1/quote", self.base_url))
            .query(&[("symbol", upstream)])
            .headers(self.headers.clone())
            .timeout(self.request_timeout);
        let reply = fetch(request).await?;
        self.handle_reply(symbol, &reply)
    }

    fn handle_reply(&mut self, symbol: &str, reply: &HttpReply) -> Result<(), PollFailure> {
        if !(200..300).contains(&reply.status) {
            // 401/403 (bad token, plan limits) fail the round: the source is not delivering.
            return Err(PollFailure::Status {
                status: reply.status,
                retry_after: None,
            });
        }
        let quote: Quote = reply.json()?;
        if let Some(error) = &quote.error {
            tracing::debug!(source = %self.context.name, symbol, error, "provider error");
            self.context.reject("provider_error");
            return Ok(());
        }
        let zero = |v: Option<f64>| v.is_none_or(|v| v == 0.0);
        if zero(quote.c) && zero(quote.o) && zero(quote.h) && zero(quote.l) && zero(quote.pc) {
            self.context.reject("all_zero_quote");
            return Ok(());
        }
        let Some(price) = quote.c.filter(|c| c.is_finite()) else {
            self.context.reject("null_value");
            return Ok(());
        };
        if price <= 0.0 {
            self.context.reject("zero_price");
            return Ok(());
        }
        let Some(time) = quote
            .t
            .filter(|t| *t > 0)
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
        else {
            self.context.reject("no_time");
            return Ok(());
        };
        match self.guard.check(symbol, price) {
            PriceCheck::Unchanged => return Ok(()),
            PriceCheck::ImplausibleJump => {
                tracing::warn!(
                    source = %self.context.name,
                    symbol,
                    price,
                    last = self.guard.last_accepted(symbol),
                    "implausible price jump dropped"
                );
                self.context.reject("implausible_jump");
                return Ok(());
            }
            PriceCheck::Publish => {}
        }
        let trade = Trade {
            symbol: symbol.to_owned(),
            id: self.next_trade_id,
            venue: self.context.name.clone(),
            price,
            // The quote endpoint reports a last price, not a print: there is no size.
            size: 1.0,
            time,
            conditions: Vec::new(),
        };
        if self.context.publish(MarketEvent::Trade(trade)).is_ok() {
            self.next_trade_id += 1;
            self.guard.accept(symbol, price);
        }
        Ok(())
    }
}

impl PollRound for FinnhubRound {
    async fn poll_round(&mut self) -> Result<(), PollFailure> {
        for symbol in self.symbols.clone() {
            self.poll_symbol(&symbol).await?;
        }
        Ok(())
    }
}
