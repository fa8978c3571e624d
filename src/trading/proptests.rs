//! Property tests of the engine's invariants over arbitrary sequences of orders, cancels,
//! replaces, quotes, trades and closes:
//! - cash + Σ positions at cost = starting cash − commissions + realized P&L, exactly;
//! - no order is ever filled beyond its quantity, and `filled` means fully filled;
//! - each position equals the signed sum of its account's fills;
//! - every book stays sorted and uncrossed, and deltas rebuild it;
//! - equity = cash + Σ qty × mark.

use chrono::Utc;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::api::{OrderQuery, OrderRef, OrderRequest, OrderStatus, ReplaceRequest, Side};
use super::book::{BookShape, SyntheticBook};
use super::engine::{Announcement, Engine, EngineSettings, Outcome};
use super::engine_tests::{engine_with, settings};

const USERS: [&str; 3] = ["ann", "ben", "cat"];
const SYMBOLS: [&str; 2] = ["AAPL", "MSFT"];

#[derive(Debug, Clone)]
enum Action {
    Submit {
        user: usize,
        symbol: usize,
        side: bool,
        kind: u8,
        tif: u8,
        qty: u32,
        limit_ticks: i32,
        stop_ticks: i32,
    },
    Cancel {
        user: usize,
        pick: usize,
    },
    Replace {
        user: usize,
        pick: usize,
        qty: u32,
        limit_ticks: i32,
    },
    Quote {
        symbol: usize,
        ticks: i32,
        spread: u32,
    },
    Trade {
        symbol: usize,
        ticks: i32,
        size: u32,
    },
    Close,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, any::<bool>(), 0..4u8, 0..4u8, 1..800u32, -150..150i32, -150..150i32)
            .prop_map(|(user, symbol, side, kind, tif, qty, limit_ticks, stop_ticks)| Action::Submit {
                user, symbol, side, kind, tif, qty, limit_ticks, stop_ticks
            }),
        1 => (0..3usize, 0..8usize).prop_map(|(user, pick)| Action::Cancel { user, pick }),
        1 => (0..3usize, 0..8usize, 1..800u32, -150..150i32)
            .prop_map(|(user, pick, qty, limit_ticks)| Action::Replace { user, pick, qty, limit_ticks }),
        3 => (0..2usize, -300..300i32, 1..5u32)
            .prop_map(|(symbol, ticks, spread)| Action::Quote { symbol, ticks, spread }),
        3 => (0..2usize, -300..300i32, 1..1000u32)
            .prop_map(|(symbol, ticks, size)| Action::Trade { symbol, ticks, size }),
        1 => Just(Action::Close),
    ]
}

/// A price `ticks` cents from 100, never below one cent.
fn price(ticks: i32) -> Decimal {
    (dec!(100) + Decimal::from(ticks) * dec!(0.01)).max(dec!(0.01))
}

fn run(engine: &mut Engine, action: &Action, out: &mut Outcome) {
    let now = Utc::now();
    match action {
        Action::Submit {
            user,
            symbol,
            side,
            kind,
            tif,
            qty,
            limit_ticks,
            stop_ticks,
        } => {
            let order_type = ["market", "limit", "stop", "stop_limit"][usize::from(*kind)];
            let needs_limit = matches!(order_type, "limit" | "stop_limit");
            let needs_stop = matches!(order_type, "stop" | "stop_limit");
            let tif = if needs_stop {
                ["day", "gtc"][usize::from(*tif % 2)]
            } else {
                ["day", "gtc", "ioc", "fok"][usize::from(*tif)]
            };
            let request = OrderRequest {
                symbol: Some(SYMBOLS[*symbol].into()),
                qty: Some(qty.to_string()),
                side: Some(if *side { "buy" } else { "sell" }.into()),
                order_type: Some(order_type.into()),
                time_in_force: Some(tif.into()),
                limit_price: needs_limit.then(|| price(*limit_ticks).to_string()),
                stop_price: needs_stop.then(|| price(*stop_ticks).to_string()),
                client_order_id: None,
            };
            // Refusals (buying power, shares) are part of the sequence; they must change
            // nothing, which the invariants below would catch.
            let _ = engine.submit(USERS[*user], &request, now, out);
        }
        Action::Cancel { user, pick } => {
            let open = engine.orders(USERS[*user], OrderQuery::Open);
            if let Some(order) = open.get(pick % open.len().max(1)) {
                let _ = engine.cancel(USERS[*user], &OrderRef::Id(order.id.clone()), now, out);
            }
        }
        Action::Replace {
            user,
            pick,
            qty,
            limit_ticks,
        } => {
            let open = engine.orders(USERS[*user], OrderQuery::Open);
            if let Some(order) = open.get(pick % open.len().max(1)) {
                let patch = ReplaceRequest {
                    qty: Some(qty.to_string()),
                    limit_price: order.limit_price.map(|_| price(*limit_ticks).to_string()),
                    ..ReplaceRequest::default()
                };
                let _ = engine.replace(
                    USERS[*user],
                    &OrderRef::Id(order.id.clone()),
                    &patch,
                    now,
                    out,
                );
            }
        }
        Action::Quote {
            symbol,
            ticks,
            spread,
        } => {
            let bid = price(*ticks);
            let ask = bid + Decimal::from(*spread) * dec!(0.01);
            engine.on_quote(SYMBOLS[*symbol], bid, ask, (dec!(0), dec!(0)), now, out);
        }
        Action::Trade {
            symbol,
            ticks,
            size,
        } => engine.on_trade(
            SYMBOLS[*symbol],
            price(*ticks),
            Decimal::from(*size),
            now,
            out,
        ),
        Action::Close => engine.close_session(now, out),
    }
}

fn check_invariants(engine: &Engine) -> Result<(), TestCaseError> {
    for user in USERS {
        let Some(account) = engine.account(user) else {
            continue;
        };
        let at_cost: Decimal = account.positions.values().map(|p| p.cost_basis).sum();
        prop_assert_eq!(
            account.cash + at_cost,
            account.starting_cash - account.commissions + account.realized_pl,
            "bookkeeping identity broken for {}",
            user
        );
        let orders = engine.orders(user, OrderQuery::All);
        let commissions: Decimal = orders.iter().map(|o| o.commission).sum();
        prop_assert_eq!(commissions, account.commissions);
        for symbol in SYMBOLS {
            let filled: Decimal = orders
                .iter()
                .filter(|o| o.symbol == symbol)
                .map(|o| match o.side {
                    Side::Buy => o.filled_qty,
                    Side::Sell => -o.filled_qty,
                })
                .sum();
            prop_assert_eq!(filled, account.position_qty(symbol));
        }
        let portfolio = engine.portfolio(user, Utc::now());
        let held: Decimal = account
            .positions
            .iter()
            .map(|(symbol, p)| p.qty * engine.mark_price(symbol).unwrap_or_default())
            .sum();
        prop_assert_eq!(portfolio.equity, portfolio.cash + held);
    }
    for order in engine.all_orders() {
        prop_assert!(order.filled_qty >= Decimal::ZERO);
        prop_assert!(
            order.filled_qty <= order.qty,
            "order {} filled {} of {}",
            order.id,
            order.filled_qty,
            order.qty
        );
        prop_assert_eq!(
            order.status == OrderStatus::Filled,
            order.filled_qty == order.qty
        );
    }
    for symbol in SYMBOLS {
        let book = engine.book(symbol).expect("every symbol has a book");
        prop_assert!(book.is_well_formed(), "{} book broken: {:?}", symbol, book);
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES raises it for a longer hunt.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn invariants_hold_for_any_sequence_of_orders_and_prices(
        actions in proptest::collection::vec(action(), 1..60),
        commission in prop_oneof![Just(dec!(0)), Just(dec!(0.005)), Just(dec!(0.01))],
        allow_short in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut engine = engine_with(EngineSettings {
            seed,
            commission_per_share: commission,
            allow_short,
            ..settings()
        });
        let mut books: Vec<SyntheticBook> = SYMBOLS
            .iter()
            .map(|s| engine.book(s).cloned().unwrap_or_default())
            .collect();
        for action in &actions {
            let mut out = Outcome::default();
            run(&mut engine, action, &mut out);
            // Deltas, applied in order to what a client held, give the engine's book.
            for announcement in &out.announcements {
                if let Announcement::Book { delta, .. } = announcement {
                    let index = SYMBOLS.iter().position(|s| *s == delta.symbol).unwrap_or(0);
                    books[index].apply_delta(&delta.bids, &delta.asks);
                    prop_assert!(books[index].is_well_formed());
                }
            }
            check_invariants(&engine)?;
            if !allow_short {
                for user in USERS {
                    if let Some(account) = engine.account(user) {
                        prop_assert!(account.positions.values().all(|p| p.qty > Decimal::ZERO));
                    }
                }
            }
        }
        for (index, symbol) in SYMBOLS.iter().enumerate() {
            prop_assert_eq!(Some(&books[index]), engine.book(symbol));
        }
    }

    #[test]
    fn generated_books_are_sorted_uncrossed_and_rebuilt_by_their_deltas(
        quotes in proptest::collection::vec((1..100_000i64, 0..20i64, 0..2000u32, 0..2000u32), 1..20),
        levels in 1..20usize,
        seed in any::<u64>(),
    ) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shape = BookShape { levels, tick_size: dec!(0.01) };
        let mut client = SyntheticBook::default();
        let mut server = SyntheticBook::default();
        for (bid_cents, spread, bid_size, ask_size) in quotes {
            let bid = Decimal::new(bid_cents, 2);
            let ask = bid + Decimal::new(spread, 2);
            let next = SyntheticBook::generate(
                bid,
                ask,
                (Decimal::from(bid_size), Decimal::from(ask_size)),
                &shape,
                &mut rng,
            );
            prop_assert!(next.is_well_formed(), "{:?}", next);
            prop_assert_eq!(next.asks.len(), levels);
            let (bids, asks) = server.diff(&next);
            client.apply_delta(&bids, &asks);
            server = next;
            prop_assert_eq!(&client, &server);
        }
    }
}
