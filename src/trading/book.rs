//! The synthetic Level 2 book of one symbol: levels generated around the latest quote, taken
//! by marketable orders until the next refresh, and diffed into deltas with absolute sizes.
//!
//! Invariants: bids strictly descending, asks strictly ascending, every size positive, and the
//! best bid below the best ask (the book never crosses).

use rand::Rng;
use rust_decimal::Decimal;

use super::api::{BookLevels, Side};

/// One symbol's displayed liquidity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyntheticBook {
    /// Best (highest) first.
    pub bids: BookLevels,
    /// Best (lowest) first.
    pub asks: BookLevels,
}

/// How books are generated, from settings.
#[derive(Debug, Clone)]
pub struct BookShape {
    pub levels: usize,
    pub tick_size: Decimal,
}

fn floor_to_tick(price: Decimal, tick: Decimal) -> Decimal {
    ((price / tick).floor() * tick).normalize()
}

fn ceil_to_tick(price: Decimal, tick: Decimal) -> Decimal {
    ((price / tick).ceil() * tick).normalize()
}

/// A level size: mostly round lots growing away from the top, sometimes an odd lot.
fn level_size(rng: &mut impl Rng, depth: usize) -> Decimal {
    if rng.random_bool(0.2) {
        Decimal::from(rng.random_range(1..=99u32))
    } else {
        let lots = rng.random_range(1..=(5 + depth as u32));
        Decimal::from(lots * 100)
    }
}

impl SyntheticBook {
    /// Builds a fresh book around a top of book. The quote's sizes, when positive, are used for
    /// the top levels so the book agrees with the feed.
    pub fn generate(
        bid: Decimal,
        ask: Decimal,
        top_sizes: (Decimal, Decimal),
        shape: &BookShape,
        rng: &mut impl Rng,
    ) -> SyntheticBook {
        let tick = shape.tick_size;
        let best_bid = floor_to_tick(bid, tick);
        let mut best_ask = ceil_to_tick(ask, tick);
        if best_ask <= best_bid {
            best_ask = best_bid + tick;
        }
        let mut bids = Vec::with_capacity(shape.levels);
        let mut asks = Vec::with_capacity(shape.levels);
        for depth in 0..shape.levels {
            let step = tick * Decimal::from(depth as u64);
            let price = best_bid - step;
            if price > Decimal::ZERO {
                let size = match depth {
                    0 if top_sizes.0 >= Decimal::ONE => top_sizes.0.trunc(),
                    _ => level_size(rng, depth),
                };
                bids.push((price.normalize(), size));
            }
            let size = match depth {
                0 if top_sizes.1 >= Decimal::ONE => top_sizes.1.trunc(),
                _ => level_size(rng, depth),
            };
            asks.push(((best_ask + step).normalize(), size));
        }
        SyntheticBook { bids, asks }
    }

    pub fn best_bid(&self) -> Option<Decimal> {
        self.bids.first().map(|level| level.0)
    }

    pub fn best_ask(&self) -> Option<Decimal> {
        self.asks.first().map(|level| level.0)
    }

    /// The side an order of `side` takes liquidity from.
    pub fn opposite(&self, side: Side) -> &BookLevels {
        match side {
            Side::Buy => &self.asks,
            Side::Sell => &self.bids,
        }
    }

    /// The fills an order of `side` for `qty` would get walking the book, best level first,
    /// stopping at `limit` (inclusive). Does not change the book.
    pub fn plan_walk(
        &self,
        side: Side,
        qty: Decimal,
        limit: Option<Decimal>,
    ) -> Vec<(Decimal, Decimal)> {
        let mut left = qty;
        let mut fills = Vec::new();
        for &(price, size) in self.opposite(side) {
            if left <= Decimal::ZERO {
                break;
            }
            let acceptable = match (side, limit) {
                (_, None) => true,
                (Side::Buy, Some(limit)) => price <= limit,
                (Side::Sell, Some(limit)) => price >= limit,
            };
            if !acceptable {
                break;
            }
            let take = left.min(size);
            fills.push((price, take));
            left -= take;
        }
        fills
    }

    /// Removes `qty` from the level at `price` on the side an order of `side` takes from.
    /// Returns the level's new size (zero when it is gone), or `None` if there is no such level.
    pub fn take(&mut self, side: Side, price: Decimal, qty: Decimal) -> Option<Decimal> {
        let levels = match side {
            Side::Buy => &mut self.asks,
            Side::Sell => &mut self.bids,
        };
        let index = levels.iter().position(|level| level.0 == price)?;
        let left = (levels[index].1 - qty).max(Decimal::ZERO);
        if left.is_zero() {
            levels.remove(index);
        } else {
            levels[index].1 = left;
        }
        Some(left)
    }

    /// The changes that turn `self` into `next`: changed or new levels with their new size,
    /// vanished levels with size zero. Each side sorted best first.
    pub fn diff(&self, next: &SyntheticBook) -> (BookLevels, BookLevels) {
        (
            diff_side(&self.bids, &next.bids, true),
            diff_side(&self.asks, &next.asks, false),
        )
    }

    /// Applies a delta (absolute sizes, zero removes), keeping the sort order. Used by clients
    /// and by tests to check that deltas reproduce the server's book.
    pub fn apply_delta(&mut self, bids: &BookLevels, asks: &BookLevels) {
        apply_side(&mut self.bids, bids, true);
        apply_side(&mut self.asks, asks, false);
    }

    /// True when both sides are strictly sorted, sizes positive and the book is not crossed.
    pub fn is_well_formed(&self) -> bool {
        let sorted = |levels: &BookLevels, descending: bool| {
            levels.windows(2).all(|pair| {
                if descending {
                    pair[0].0 > pair[1].0
                } else {
                    pair[0].0 < pair[1].0
                }
            }) && levels.iter().all(|level| level.1 > Decimal::ZERO)
        };
        let uncrossed = match (self.best_bid(), self.best_ask()) {
            (Some(bid), Some(ask)) => bid < ask,
            _ => true,
        };
        sorted(&self.bids, true) && sorted(&self.asks, false) && uncrossed
    }
}

fn diff_side(old: &BookLevels, new: &BookLevels, descending: bool) -> BookLevels {
    let mut changes: BookLevels = new
        .iter()
        .filter(|level| !old.contains(level))
        .copied()
        .collect();
    changes.extend(
        old.iter()
            .filter(|(price, _)| !new.iter().any(|(p, _)| p == price))
            .map(|(price, _)| (*price, Decimal::ZERO)),
    );
    sort_side(&mut changes, descending);
    changes
}

fn sort_side(levels: &mut BookLevels, descending: bool) {
    if descending {
        levels.sort_by_key(|level| std::cmp::Reverse(level.0));
    } else {
        levels.sort_by_key(|level| level.0);
    }
}

fn apply_side(levels: &mut BookLevels, changes: &BookLevels, descending: bool) {
    for &(price, size) in changes {
        levels.retain(|level| level.0 != price);
        if size > Decimal::ZERO {
            levels.push((price, size));
        }
    }
    sort_side(levels, descending);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rust_decimal_macros::dec;

    fn shape() -> BookShape {
        BookShape {
            levels: 10,
            tick_size: dec!(0.01),
        }
    }

    #[test]
    fn a_generated_book_has_ten_sorted_levels_per_side_around_the_quote() {
        let mut rng = StdRng::seed_from_u64(1);
        let book = SyntheticBook::generate(
            dec!(100.00),
            dec!(100.02),
            (dec!(300), dec!(200)),
            &shape(),
            &mut rng,
        );
        assert_eq!(book.bids.len(), 10);
        assert_eq!(book.asks.len(), 10);
        assert_eq!(book.bids[0], (dec!(100), dec!(300)));
        assert_eq!(book.asks[0], (dec!(100.02), dec!(200)));
        assert_eq!(book.bids[9].0, dec!(99.91));
        assert_eq!(book.asks[9].0, dec!(100.11));
        assert!(book.is_well_formed());
        let odd = book
            .bids
            .iter()
            .chain(&book.asks)
            .any(|level| level.1 < dec!(100));
        let round = book
            .bids
            .iter()
            .chain(&book.asks)
            .any(|level| (level.1 % dec!(100)).is_zero());
        assert!(odd && round, "expected odd and round lots in {book:?}");
    }

    #[test]
    fn a_locked_quote_still_gives_an_uncrossed_book() {
        let mut rng = StdRng::seed_from_u64(2);
        let book = SyntheticBook::generate(
            dec!(50.005),
            dec!(50.005),
            (Decimal::ZERO, Decimal::ZERO),
            &shape(),
            &mut rng,
        );
        assert!(book.is_well_formed());
        assert_eq!(book.best_bid(), Some(dec!(50)));
        assert_eq!(book.best_ask(), Some(dec!(50.01)));
    }

    #[test]
    fn walking_stops_at_the_limit_and_taking_removes_emptied_levels() {
        let mut book = SyntheticBook {
            bids: vec![(dec!(9.99), dec!(100))],
            asks: vec![
                (dec!(10.00), dec!(100)),
                (dec!(10.01), dec!(50)),
                (dec!(10.02), dec!(500)),
            ],
        };
        assert_eq!(
            book.plan_walk(Side::Buy, dec!(300), Some(dec!(10.01))),
            vec![(dec!(10.00), dec!(100)), (dec!(10.01), dec!(50))]
        );
        assert_eq!(book.take(Side::Buy, dec!(10.00), dec!(100)), Some(dec!(0)));
        assert_eq!(book.take(Side::Buy, dec!(10.02), dec!(20)), Some(dec!(480)));
        assert_eq!(
            book.asks,
            vec![(dec!(10.01), dec!(50)), (dec!(10.02), dec!(480))]
        );
    }

    #[test]
    fn deltas_applied_to_the_old_book_reproduce_the_new_one() {
        let mut rng = StdRng::seed_from_u64(3);
        let old = SyntheticBook::generate(
            dec!(100),
            dec!(100.01),
            (dec!(0), dec!(0)),
            &shape(),
            &mut rng,
        );
        let new = SyntheticBook::generate(
            dec!(100.03),
            dec!(100.05),
            (dec!(0), dec!(0)),
            &shape(),
            &mut rng,
        );
        let (bids, asks) = old.diff(&new);
        let mut rebuilt = old.clone();
        rebuilt.apply_delta(&bids, &asks);
        assert_eq!(rebuilt, new);
        assert!(bids.iter().any(|level| level.1.is_zero()));
    }
}
