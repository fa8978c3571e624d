//! The `[trading]` settings of the simulated exchange, part of the typed configuration tree
//! (`crate::settings` re-exports them): money and prices as exact decimals, capacities, and
//! how long stored trade updates are kept for resuming clients.

use std::time::Duration;

use serde::Deserialize;

/// The simulated exchange (`[trading]`). Money and prices are exact decimals.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TradingSettings {
    /// Seed of the synthetic order books; the same seed and inputs give the same fills.
    pub seed: u64,
    /// Cash of a new account.
    pub starting_cash: rust_decimal::Decimal,
    /// Commission charged per filled share (0 = free).
    pub commission_per_share: rust_decimal::Decimal,
    /// Allow selling more than the account holds (a short position).
    pub allow_short: bool,
    /// Levels per side of each synthetic book.
    pub book_levels: usize,
    /// Price grid of the books and of limit and stop prices.
    pub tick_size: rust_decimal::Decimal,
    /// Largest quantity of one order.
    pub max_order_qty: rust_decimal::Decimal,
    /// Decimal places allowed in an order quantity (0 = whole shares).
    pub qty_decimals: u32,
    /// Highest limit or stop price accepted.
    pub max_price: rust_decimal::Decimal,
    /// Open orders one account may have at a time.
    pub max_open_orders: usize,
    /// Finished orders remembered per account for order listings.
    pub closed_orders_kept: usize,
    /// Requests queued to the exchange before callers wait.
    pub command_queue: usize,
    /// Book updates buffered per symbol for slow readers before they lag.
    pub book_channel_capacity: usize,
    /// Trade updates buffered per user for slow readers before they lag.
    pub user_channel_capacity: usize,
    /// How long stored trade updates are kept for clients resuming with `since`; older ones
    /// are pruned and a resume from before them gets a reset.
    #[serde(with = "humantime_serde")]
    pub updates_retention: Duration,
    /// Most trade updates one resume replays; a client further behind gets a reset (the
    /// current state), which is smaller than the history it missed.
    pub max_resume_updates: usize,
}

impl Default for TradingSettings {
    fn default() -> Self {
        TradingSettings {
            seed: 7,
            starting_cash: rust_decimal::Decimal::from(100_000),
            commission_per_share: rust_decimal::Decimal::ZERO,
            allow_short: true,
            book_levels: 10,
            tick_size: rust_decimal::Decimal::new(1, 2),
            max_order_qty: rust_decimal::Decimal::from(1_000_000),
            qty_decimals: 0,
            max_price: rust_decimal::Decimal::from(1_000_000),
            max_open_orders: 500,
            closed_orders_kept: 1000,
            command_queue: 1024,
            book_channel_capacity: 1024,
            user_channel_capacity: 1024,
            updates_retention: Duration::from_secs(7 * 24 * 3600),
            max_resume_updates: 10_000,
        }
    }
}

impl TradingSettings {
    /// Every problem with these settings, as `trading.<key>: <reason>` lines.
    pub(crate) fn validate(&self) -> Vec<String> {
        use rust_decimal::Decimal;
        let mut problems = Vec::new();
        if self.starting_cash < Decimal::ZERO {
            problems.push("trading.starting_cash: must not be negative".into());
        }
        if self.commission_per_share < Decimal::ZERO {
            problems.push("trading.commission_per_share: must not be negative".into());
        }
        if !(1..=100).contains(&self.book_levels) {
            problems.push("trading.book_levels: must be between 1 and 100".into());
        }
        if self.tick_size <= Decimal::ZERO {
            problems.push("trading.tick_size: must be greater than zero".into());
        }
        if self.max_order_qty <= Decimal::ZERO {
            problems.push("trading.max_order_qty: must be greater than zero".into());
        }
        if self.qty_decimals > 9 {
            problems.push("trading.qty_decimals: at most 9".into());
        }
        if self.max_price <= Decimal::ZERO {
            problems.push("trading.max_price: must be greater than zero".into());
        }
        if self.updates_retention.is_zero() {
            problems.push("trading.updates_retention: must be greater than zero".into());
        }
        for (key, value) in [
            ("max_open_orders", self.max_open_orders),
            ("command_queue", self.command_queue),
            ("book_channel_capacity", self.book_channel_capacity),
            ("user_channel_capacity", self.user_channel_capacity),
            ("max_resume_updates", self.max_resume_updates),
        ] {
            if value == 0 {
                problems.push(format!("trading.{key}: must be at least 1"));
            }
        }
        problems
    }
}
