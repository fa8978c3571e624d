//! Subscriptions: what a session asked for (`subscribe`, `unsubscribe`) and the `subscription`
//! reply that shows the whole state after each change. Invariants kept here: a change is
//! checked whole before any of it applies (a refused message changes nothing); a channel the
//! server does not offer is reported (400) and skipped, the rest applies; at most
//! `market.max_symbols_per_subscription` distinct explicit symbols over all streams (error
//! 405 beyond); in an unsubscribe, `true` stops a stream and `false` changes nothing. The
//! streams a change starts or stops are handed to their owners (`market`, `orders`,
//! `portfolio`, `books`). A `max_rate` in a subscribe throttles the kinds of channel the message
//! names (market data, order books, or both when it names neither); `null` removes it.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ErrorCode;
use crate::hub::{Hub, InvalidMaxRate, MaxRate};
use crate::market::SymbolId;

use super::WsSession;
use super::frames::{Output, error_frame, json_frame};
use super::market::MarketSubs;
use super::parse::{COMMON_KEYS, Refusal, refuse, symbol_list};

/// A set of symbols, or all of them (`"*"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SymbolSet {
    pub(super) all: bool,
    pub(super) ids: SymbolIds,
}

/// Symbol ids, sorted and without repeats, in one exact-size allocation (none while empty).
/// Every idle subscriber holds its sets for its whole life and most name a few symbols, so
/// a boxed slice (16 bytes, and 2 bytes a symbol) replaces a `BTreeSet` (24 bytes, and a
/// 40-byte node for the first symbol); a change rebuilds it, which only a subscribe does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SymbolIds(Box<[SymbolId]>);

impl SymbolIds {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn contains(&self, id: &SymbolId) -> bool {
        self.0.binary_search(id).is_ok()
    }

    pub(super) fn iter(&self) -> std::slice::Iter<'_, SymbolId> {
        self.0.iter()
    }

    #[cfg(test)]
    pub(super) fn insert(&mut self, id: SymbolId) {
        self.extend([id]);
    }

    pub(super) fn retain(&mut self, keep: impl FnMut(&SymbolId) -> bool) {
        let mut ids = std::mem::take(&mut self.0).into_vec();
        ids.retain(keep);
        self.0 = ids.into_boxed_slice();
    }
}

impl Extend<SymbolId> for SymbolIds {
    fn extend<I: IntoIterator<Item = SymbolId>>(&mut self, more: I) {
        let mut ids = std::mem::take(&mut self.0).into_vec();
        let before = ids.len();
        ids.extend(more);
        if ids.len() == before {
            self.0 = ids.into_boxed_slice();
            return;
        }
        ids.sort_unstable();
        ids.dedup();
        self.0 = ids.into_boxed_slice();
    }
}

impl IntoIterator for SymbolIds {
    type Item = SymbolId;
    type IntoIter = std::vec::IntoIter<SymbolId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_vec().into_iter()
    }
}

impl SymbolSet {
    pub(super) fn is_empty(&self) -> bool {
        !self.all && self.ids.is_empty()
    }

    pub(super) fn contains(&self, id: SymbolId) -> bool {
        self.all || self.ids.contains(&id)
    }
}

/// A [`SymbolSet`] as the JSON array of its names (`["*"]` for all), borrowed from the
/// universe rather than copied into a `Vec<String>`.
struct SymbolNames<'a> {
    set: &'a SymbolSet,
    hub: &'a Hub,
}

impl Serialize for SymbolNames<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.set.all {
            return ["*"].serialize(serializer);
        }
        let universe = self.hub.universe();
        serializer.collect_seq(self.set.ids.iter().map(|id| universe.name(*id)))
    }
}

/// The `subscription` reply: the whole subscription state after a (un)subscribe. The fields
/// are in the order a `json!` object prints its keys (sorted), which clients have seen so far.
pub(super) fn subscription_frame(id: Option<&Value>, subs: &Subscriptions, hub: &Hub) -> Output {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "T")]
        tag: &'static str,
        bars: SymbolNames<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        /// Shown once a rate was set, so replies to clients that never throttle are unchanged.
        #[serde(skip_serializing_if = "Option::is_none")]
        max_rate: Option<Rates>,
        news: SymbolNames<'a>,
        orderbooks: &'a BTreeSet<String>,
        portfolio: bool,
        quotes: SymbolNames<'a>,
        statuses: SymbolNames<'a>,
        trade_updates: bool,
        trades: SymbolNames<'a>,
    }
    #[derive(Serialize)]
    struct Rates {
        market: Option<u16>,
        orderbooks: Option<u16>,
    }
    let names = |set| SymbolNames { set, hub };
    json_frame(&Reply {
        tag: "subscription",
        bars: names(&subs.market.bars),
        id,
        max_rate: (subs.market_rate.is_some() || subs.book_rate.is_some()).then(|| Rates {
            market: subs.market_rate.map(MaxRate::per_second),
            orderbooks: subs.book_rate.map(MaxRate::per_second),
        }),
        news: names(&subs.market.news),
        orderbooks: &subs.orderbooks,
        portfolio: subs.portfolio,
        quotes: names(&subs.market.quotes),
        statuses: names(&subs.market.statuses),
        trade_updates: subs.trade_updates,
        trades: names(&subs.market.trades),
    })
}

/// What a session is subscribed to, as the `subscription` reply shows it.
#[derive(Debug, Clone, Default)]
pub(super) struct Subscriptions {
    /// The market-data sets, shared with the hub-facing [`super::MarketState`] (which filters
    /// deliveries by them) rather than copied into it: one copy per connection, not two. A
    /// subscribe that changes them writes a fresh copy (`Rc::make_mut`) and hands it over.
    pub(super) market: Rc<MarketSubs>,
    pub(super) orderbooks: BTreeSet<String>,
    pub(super) trade_updates: bool,
    pub(super) portfolio: bool,
    /// The `since` of a `"trade_updates":{"since":N}` in the message being handled; taken by
    /// the subscribe, never kept.
    pub(super) resume_since: Option<u64>,
    /// The message asked for the portfolio (sent at once even if already subscribed).
    pub(super) portfolio_requested: bool,
    /// `max_rate` of market data (trades, quotes, bars, statuses, news): `None` unthrottled.
    pub(super) market_rate: Option<MaxRate>,
    /// `max_rate` of order books: merged deltas at most this often per book.
    pub(super) book_rate: Option<MaxRate>,
}

impl Subscriptions {
    /// Whether the session follows anything of the exchange (trade updates, portfolio or
    /// order books): then it hears every trading status, market data or not.
    pub(super) fn trades_anything(&self) -> bool {
        self.trade_updates || self.portfolio || !self.orderbooks.is_empty()
    }
}

/// The market-data channels a `max_rate` applies to when a subscribe names one of them.
const MARKET_CHANNELS: [&str; 5] = ["trades", "quotes", "bars", "statuses", "news"];

/// Reads a subscribe's `max_rate`: a whole number from 1 to 1000, or `null` to remove it.
fn max_rate(value: &Value) -> Result<Option<MaxRate>, Refusal> {
    match value {
        Value::Null => Ok(None),
        Value::Number(number) => number
            .as_u64()
            .ok_or(InvalidMaxRate)
            .and_then(MaxRate::new)
            .map(Some)
            .map_err(|invalid| refuse(ErrorCode::InvalidSyntax, invalid.to_string())),
        _ => Err(refuse(
            ErrorCode::InvalidSyntax,
            format!("{InvalidMaxRate}, or null to remove it"),
        )),
    }
}

impl WsSession {
    /// Builds the subscription set after a subscribe (`add`) or unsubscribe, or refuses it.
    /// Also returns the channels the message named that this server does not offer: they are
    /// reported and skipped, and the rest of the message applies.
    fn next_subscriptions(
        &self,
        map: &Map<String, Value>,
        add: bool,
    ) -> Result<(Subscriptions, Vec<String>), Refusal> {
        const KEYS: [&str; 9] = [
            "max_rate",
            "trades",
            "quotes",
            "bars",
            "statuses",
            "news",
            "orderbooks",
            "trade_updates",
            "portfolio",
        ];
        let skipped: Vec<String> = map
            .keys()
            .filter(|k| !COMMON_KEYS.contains(&k.as_str()) && !KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        let mut next = self.subs.clone();
        if let Some(value) = map.get("max_rate") {
            if !add {
                return Err(refuse(
                    ErrorCode::InvalidSyntax,
                    "max_rate belongs in a subscribe; send {\"action\":\"subscribe\",\"max_rate\":null} to remove it",
                ));
            }
            let rate = max_rate(value)?;
            // The rate applies to the kinds of channel the message names, or to both when it
            // names none.
            let market = MARKET_CHANNELS.iter().any(|key| map.contains_key(*key));
            let books = map.contains_key("orderbooks");
            if market || !books {
                next.market_rate = rate;
            }
            if books || !market {
                next.book_rate = rate;
            }
        }
        for key in MARKET_CHANNELS {
            let Some(value) = map.get(key) else { continue };
            let change = symbol_list(self.deps.hub.universe(), value, key, true)?;
            let market = Rc::make_mut(&mut next.market);
            let target = match key {
                "trades" => &mut market.trades,
                "quotes" => &mut market.quotes,
                "bars" => &mut market.bars,
                "statuses" => &mut market.statuses,
                _ => &mut market.news,
            };
            if add {
                target.all |= change.all;
                target.ids.extend(change.ids);
            } else if change.all {
                *target = SymbolSet::default();
            } else {
                target.ids.retain(|id| !change.ids.contains(id));
            }
        }
        if let Some(value) = map.get("orderbooks") {
            // A subscribe names its books (each is a stream of its own); an unsubscribe may
            // say "*" to drop them all.
            let change = symbol_list(self.deps.hub.universe(), value, "orderbooks", !add)?;
            if !add && change.all {
                next.orderbooks.clear();
            }
            let names = change
                .ids
                .iter()
                .map(|id| self.deps.hub.universe().name(*id).to_owned());
            if add {
                next.orderbooks.extend(names);
            } else {
                for name in names {
                    next.orderbooks.remove(&name);
                }
            }
        }
        next.resume_since = None;
        next.portfolio_requested = add && map.get("portfolio") == Some(&Value::Bool(true));
        if add && let Some(Value::Object(resume)) = map.get("trade_updates") {
            if resume.keys().any(|key| key != "since") {
                return Err(refuse(
                    ErrorCode::InvalidSyntax,
                    "trade_updates takes true or {\"since\": <seq>} and nothing else",
                ));
            }
            let since = resume.get("since").and_then(Value::as_u64).ok_or_else(|| {
                refuse(
                    ErrorCode::InvalidSyntax,
                    "trade_updates.since must be the last seq you received: an integer >= 0",
                )
            })?;
            next.trade_updates = true;
            next.resume_since = Some(since);
        }
        for key in ["trade_updates", "portfolio"] {
            let Some(value) = map.get(key) else { continue };
            if key == "trade_updates" && add && value.is_object() {
                continue;
            }
            let Value::Bool(flag) = value else {
                return Err(refuse(
                    ErrorCode::InvalidSyntax,
                    format!("{key} must be true or false"),
                ));
            };
            let target = if key == "trade_updates" {
                &mut next.trade_updates
            } else {
                &mut next.portfolio
            };
            // In an unsubscribe, `true` means "stop this stream"; `false` changes nothing.
            if *flag {
                *target = add;
            }
        }
        let mut explicit: BTreeSet<SymbolId> = BTreeSet::new();
        for set in [
            &next.market.trades,
            &next.market.quotes,
            &next.market.bars,
            &next.market.statuses,
            &next.market.news,
        ] {
            explicit.extend(set.ids.iter().copied());
        }
        explicit.extend(
            next.orderbooks
                .iter()
                .filter_map(|name| self.deps.hub.universe().id(name)),
        );
        if explicit.len() > self.deps.limits.max_symbols {
            return Err(refuse(
                ErrorCode::SymbolLimit,
                format!(
                    "symbol limit exceeded: {} symbols requested, at most {}",
                    explicit.len(),
                    self.deps.limits.max_symbols
                ),
            ));
        }
        Ok((next, skipped))
    }

    pub(super) async fn subscribe_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        add: bool,
        out: &mut Vec<Output>,
    ) {
        let (next, skipped) = match self.next_subscriptions(map, add) {
            Ok(next) => next,
            Err(refusal) => {
                out.push(error_frame(id, refusal.code, &refusal.msg));
                return;
            }
        };
        if !skipped.is_empty() {
            out.push(error_frame(
                id,
                ErrorCode::InvalidSyntax,
                &format!(
                    "unknown channel(s) skipped: {}; the others apply",
                    skipped.join(", ")
                ),
            ));
            // Nothing else named: nothing changed, so no subscription reply.
            if map
                .keys()
                .all(|k| COMMON_KEYS.contains(&k.as_str()) || skipped.contains(k))
            {
                return;
            }
        }
        let previous = std::mem::replace(&mut self.subs, next);
        let mut followups = Vec::new();
        self.update_market_registrations(&previous, &mut followups);
        let trading = Arc::clone(&self.deps.trading);
        let user = self.auth.user().unwrap_or_default().to_owned();
        let since = self.subs.resume_since.take();
        let portfolio_requested = std::mem::take(&mut self.subs.portfolio_requested);
        self.update_trade_updates(&previous, &trading, &user, since, &mut followups)
            .await;
        self.update_portfolio(
            &previous,
            portfolio_requested,
            &trading,
            &user,
            &mut followups,
        )
        .await;
        if previous.book_rate != self.subs.book_rate {
            let rate = self.subs.book_rate;
            self.streams().books.set_rate(rate);
        }
        self.update_books(trading.as_ref(), &mut followups);
        self.on_books_due(&mut followups);
        out.push(subscription_frame(id, &self.subs, &self.deps.hub));
        out.extend(followups);
    }
}
