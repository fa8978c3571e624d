//! One user's cash and positions, and the exact arithmetic of a fill.
//!
//! A position keeps its signed quantity and its signed cost basis (negative for shorts); the
//! average entry price is derived from them. Keeping the basis rather than the average makes
//! the bookkeeping identity exact: cash + Σ cost basis = starting cash − commissions + realized
//! P&L, because every fill moves the same amount between cash, basis and realized P&L.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::api::{Position, PositionSide, Side};

/// Decimal places of derived figures (average price, P&L percent). The stored figures (cash,
/// cost basis, realized P&L) are exact.
const DISPLAY_DECIMALS: u32 = 6;

/// Decimal places of a cost basis released by a partial close.
const BASIS_DECIMALS: u32 = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PositionState {
    /// Signed: negative for a short position.
    pub qty: Decimal,
    /// Signed: what the open shares cost (negative: what a short sale brought in).
    pub cost_basis: Decimal,
}

impl PositionState {
    pub fn avg_entry_price(&self) -> Decimal {
        if self.qty.is_zero() {
            Decimal::ZERO
        } else {
            (self.cost_basis / self.qty).round_dp(DISPLAY_DECIMALS)
        }
    }

    /// Builds the wire position at a mark price.
    pub fn to_position(&self, symbol: &str, mark: Decimal) -> Position {
        let market_value = self.qty * mark;
        let unrealized_pl = market_value - self.cost_basis;
        let unrealized_plpc = if self.cost_basis.is_zero() {
            Decimal::ZERO
        } else {
            (unrealized_pl / self.cost_basis.abs()).round_dp(DISPLAY_DECIMALS)
        };
        Position {
            symbol: symbol.to_owned(),
            qty: self.qty,
            side: if self.qty < Decimal::ZERO {
                PositionSide::Short
            } else {
                PositionSide::Long
            },
            avg_entry_price: self.avg_entry_price(),
            current_price: mark,
            market_value,
            cost_basis: self.cost_basis,
            unrealized_pl,
            unrealized_plpc,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub starting_cash: Decimal,
    pub cash: Decimal,
    pub realized_pl: Decimal,
    pub commissions: Decimal,
    /// Open (non-zero) positions by symbol.
    pub positions: BTreeMap<String, PositionState>,
    /// Every kept order id of this account, oldest first.
    pub order_ids: Vec<String>,
    /// Open order ids by submission sequence (time priority).
    pub open_orders: BTreeMap<u64, String>,
}

impl Account {
    pub fn new(starting_cash: Decimal) -> Account {
        Account {
            starting_cash,
            cash: starting_cash,
            realized_pl: Decimal::ZERO,
            commissions: Decimal::ZERO,
            positions: BTreeMap::new(),
            order_ids: Vec::new(),
            open_orders: BTreeMap::new(),
        }
    }

    pub fn position_qty(&self, symbol: &str) -> Decimal {
        self.positions
            .get(symbol)
            .map_or(Decimal::ZERO, |position| position.qty)
    }

    /// Books one execution and returns the new signed position quantity.
    pub fn apply_fill(
        &mut self,
        symbol: &str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        commission: Decimal,
    ) -> Decimal {
        let signed = match side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        self.cash -= signed * price + commission;
        self.commissions += commission;
        let position = self.positions.entry(symbol.to_owned()).or_default();
        let same_direction =
            position.qty.is_zero() || (position.qty > Decimal::ZERO) == (signed > Decimal::ZERO);
        if same_direction {
            position.qty += signed;
            position.cost_basis += signed * price;
        } else {
            let open = position.qty.abs();
            let closing = qty.min(open);
            // The share of the basis that leaves with the closed shares. It is rounded to a
            // fixed scale so that every stored figure keeps few decimals and later additions
            // stay exact (a full-precision quotient would make sums round in the 28th digit);
            // the same amount leaves the basis and enters realized P&L, so nothing is lost.
            let released = if closing == open {
                position.cost_basis
            } else {
                (position.cost_basis * closing / open).round_dp(BASIS_DECIMALS)
            };
            let closing_signed = if signed > Decimal::ZERO {
                closing
            } else {
                -closing
            };
            // Proceeds of the closing part minus the basis released: a sale of a long yields
            // closing × price − basis, a cover of a short −(closing × price) − (negative basis).
            self.realized_pl += -(closing_signed * price) - released;
            position.cost_basis -= released;
            position.qty += closing_signed;
            let opening = qty - closing;
            if opening > Decimal::ZERO {
                let opening_signed = if signed > Decimal::ZERO {
                    opening
                } else {
                    -opening
                };
                position.qty += opening_signed;
                position.cost_basis += opening_signed * price;
            }
        }
        let new_qty = position.qty;
        if new_qty.is_zero() {
            self.positions.remove(symbol);
        }
        new_qty
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn identity_holds(account: &Account) -> bool {
        let at_cost: Decimal = account.positions.values().map(|p| p.cost_basis).sum();
        account.cash + at_cost == account.starting_cash - account.commissions + account.realized_pl
    }

    #[test]
    fn buying_then_selling_part_realizes_profit_on_the_part_sold() {
        let mut account = Account::new(dec!(10000));
        account.apply_fill("AAPL", Side::Buy, dec!(10), dec!(100), dec!(0));
        account.apply_fill("AAPL", Side::Buy, dec!(10), dec!(110), dec!(0));
        assert_eq!(account.positions["AAPL"].avg_entry_price(), dec!(105));
        let left = account.apply_fill("AAPL", Side::Sell, dec!(5), dec!(120), dec!(1));
        assert_eq!(left, dec!(15));
        assert_eq!(account.realized_pl, dec!(75));
        assert_eq!(account.cash, dec!(10000) - dec!(2100) + dec!(600) - dec!(1));
        assert!(identity_holds(&account));
    }

    #[test]
    fn a_sell_larger_than_the_long_flips_to_a_short_at_the_fill_price() {
        let mut account = Account::new(dec!(10000));
        account.apply_fill("AAPL", Side::Buy, dec!(10), dec!(100), dec!(0));
        let left = account.apply_fill("AAPL", Side::Sell, dec!(25), dec!(90), dec!(0));
        assert_eq!(left, dec!(-15));
        assert_eq!(account.realized_pl, dec!(-100));
        let position = &account.positions["AAPL"];
        assert_eq!(position.avg_entry_price(), dec!(90));
        assert_eq!(position.cost_basis, dec!(-1350));
        let wire = position.to_position("AAPL", dec!(80));
        assert_eq!(wire.side, PositionSide::Short);
        assert_eq!(wire.market_value, dec!(-1200));
        assert_eq!(wire.unrealized_pl, dec!(150));
        assert!(identity_holds(&account));
        account.apply_fill("AAPL", Side::Buy, dec!(15), dec!(80), dec!(0));
        assert!(account.positions.is_empty());
        assert_eq!(account.realized_pl, dec!(50));
        assert_eq!(account.cash, dec!(10050));
    }

    #[test]
    fn a_basis_that_does_not_divide_evenly_still_balances_exactly() {
        let mut account = Account::new(dec!(1000));
        account.apply_fill("AAPL", Side::Buy, dec!(1), dec!(10), dec!(0));
        account.apply_fill("AAPL", Side::Buy, dec!(2), dec!(10.01), dec!(0));
        account.apply_fill("AAPL", Side::Sell, dec!(1), dec!(10.02), dec!(0.01));
        assert!(identity_holds(&account));
        account.apply_fill("AAPL", Side::Sell, dec!(2), dec!(9.99), dec!(0.01));
        assert!(identity_holds(&account));
        assert!(account.positions.is_empty());
    }
}
