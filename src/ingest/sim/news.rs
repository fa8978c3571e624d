//! The simulator's news desk: templated items about one or two symbols, with company names,
//! authors and firms drawn from small fixed lists (times are filled in by the caller).

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::StdRng;

use crate::market::{MarketSession, News};

use super::{SymbolState, dollars};

pub(super) fn company_name(symbol: &str) -> String {
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
pub(super) fn write_news(
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
