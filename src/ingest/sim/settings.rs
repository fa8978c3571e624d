//! `[simulator]`: the embedded market simulator's settings (seed, pace, volatility, news,
//! starting prices). Owned here, beside the simulator; `crate::settings` re-exports it into the
//! configuration tree.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimulatorSettings {
    pub enabled: bool,
    /// RNG seed; the same seed gives the same market.
    pub seed: u64,
    /// Mean trades per second per symbol (Poisson arrivals).
    pub trades_per_second: f64,
    /// Annualized volatility used by the geometric Brownian motion.
    pub volatility: f64,
    /// Market seconds of price diffusion per wall-clock second. A year has 252 trading days of
    /// 6.5 hours, so 1.0 is real-world pace; the default 4.0 makes the demo visibly move.
    pub time_scale: f64,
    /// Mean time between synthetic news items (exponentially distributed); zero turns news off.
    #[serde(with = "humantime_serde")]
    pub news_interval: Duration,
    /// Keep the simulated market in its regular session around the clock.
    pub always_open: bool,
    /// Starting prices by symbol; symbols not listed start at 100.00.
    pub initial_prices: std::collections::BTreeMap<String, f64>,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        SimulatorSettings {
            enabled: true,
            seed: 42,
            trades_per_second: 4.0,
            volatility: 0.35,
            time_scale: 4.0,
            news_interval: Duration::from_secs(20),
            always_open: true,
            initial_prices: std::collections::BTreeMap::new(),
        }
    }
}
