//! The embedded market simulator: seeded geometric Brownian motion per symbol, trades and
//! quotes on the $0.01 tick grid.
//!
//! First cut: trades and quotes only. Bars, news, sessions and Poisson arrivals follow.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::hub::EventSink;
use crate::ingest::{SourceHealth, SourceRegistry};
use crate::market::{MarketEvent, Quote, Trade};
use crate::metrics::Metrics;
use crate::settings::SimulatorSettings;

pub const SOURCE_NAME: &str = "simulator";

/// Runs the simulator until `shutdown` fires.
pub async fn run(
    settings: SimulatorSettings,
    symbols: Vec<String>,
    sink: Arc<dyn EventSink>,
    sources: SourceRegistry,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut cents: Vec<i64> = symbols
        .iter()
        .map(|s| {
            let price = settings.initial_prices.get(s).copied().unwrap_or(100.0);
            (price * 100.0).round() as i64
        })
        .collect();
    let mut trade_id = 0u64;
    sources.report(SOURCE_NAME, SourceHealth::Up);
    let tick = Duration::from_secs_f64(1.0 / (settings.trades_per_second * symbols.len() as f64));
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let index = rng.random_range(0..symbols.len());
        let step: f64 = (rng.random::<f64>() - 0.5) * settings.volatility * 0.01;
        let price = ((cents[index] as f64) * (1.0 + step)).round().max(1.0) as i64;
        cents[index] = price;
        trade_id += 1;
        let now = Utc::now();
        let trade = MarketEvent::Trade(Trade {
            symbol: symbols[index].clone(),
            id: trade_id,
            venue: "SIM".into(),
            price: price as f64 / 100.0,
            size: f64::from(rng.random_range(1..=10u32) * 100),
            time: now,
            conditions: vec!["@".into()],
        });
        let quote = MarketEvent::Quote(Quote {
            symbol: symbols[index].clone(),
            bid_price: (price - 1) as f64 / 100.0,
            bid_size: 300.0,
            bid_venue: "SIM".into(),
            ask_price: (price + 1) as f64 / 100.0,
            ask_size: 200.0,
            ask_venue: "SIM".into(),
            time: now,
        });
        for event in [trade, quote] {
            if let Err(error) = sink.publish(event) {
                metrics.ingest_rejected(SOURCE_NAME, &error.to_string());
            }
        }
    }
}
