//! Unit tests of the engine's rules: each order type and time in force, walking the book,
//! resting fills, stops, cancel and replace, expiry, validation codes and buying power.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::api::{
    Order, OrderError, OrderQuery, OrderRef, OrderRequest, OrderStatus, ReplaceRequest, TradeEvent,
    TradeUpdate, UserEvent,
};
use super::book::{BookShape, SyntheticBook};
use super::engine::{Announcement, Engine, EngineSettings, ExchangeEvent, Outcome};
use super::validate::OrderLimits;
use crate::market::SymbolUniverse;

pub(super) fn settings() -> EngineSettings {
    EngineSettings {
        seed: 11,
        starting_cash: dec!(100000),
        commission_per_share: Decimal::ZERO,
        allow_short: true,
        max_open_orders: 50,
        closed_orders_kept: 1000,
        limits: OrderLimits {
            max_order_qty: dec!(1000000),
            qty_decimals: 0,
            tick_size: dec!(0.01),
            max_price: dec!(1000000),
        },
        book: BookShape {
            levels: 10,
            tick_size: dec!(0.01),
        },
        initial_prices: [("AAPL".to_string(), dec!(100))].into_iter().collect(),
    }
}

pub(super) fn engine_with(settings: EngineSettings) -> Engine {
    Engine::new(settings, SymbolUniverse::new(["AAPL", "MSFT"]))
}

pub(super) fn engine() -> Engine {
    engine_with(settings())
}

pub(super) fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Replaces the AAPL book with known levels.
fn set_book(engine: &mut Engine, bids: &[(Decimal, Decimal)], asks: &[(Decimal, Decimal)]) {
    let mut out = Outcome::default();
    engine.commit(
        ExchangeEvent::BookRefreshed {
            symbol: "AAPL".into(),
            book: SyntheticBook {
                bids: bids.to_vec(),
                asks: asks.to_vec(),
            },
            at: now(),
        },
        &mut out,
    );
}

pub(super) fn standard_book(engine: &mut Engine) {
    set_book(
        engine,
        &[
            (dec!(99.99), dec!(100)),
            (dec!(99.98), dec!(50)),
            (dec!(99.97), dec!(500)),
        ],
        &[
            (dec!(100.01), dec!(100)),
            (dec!(100.02), dec!(50)),
            (dec!(100.03), dec!(500)),
        ],
    );
}

pub(super) fn order(side: &str, order_type: &str, qty: &str, tif: &str) -> OrderRequest {
    OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some(qty.into()),
        side: Some(side.into()),
        order_type: Some(order_type.into()),
        time_in_force: Some(tif.into()),
        ..OrderRequest::default()
    }
}

pub(super) fn limit(side: &str, qty: &str, price: &str, tif: &str) -> OrderRequest {
    OrderRequest {
        limit_price: Some(price.into()),
        ..order(side, "limit", qty, tif)
    }
}

pub(super) fn submit(engine: &mut Engine, request: OrderRequest) -> (Order, Vec<TradeUpdate>) {
    let mut out = Outcome::default();
    let order = engine
        .submit("alice", &request, now(), &mut out)
        .expect("order accepted");
    (order, updates(&out))
}

pub(super) fn submit_err(engine: &mut Engine, request: OrderRequest) -> OrderError {
    let mut out = Outcome::default();
    let error = engine
        .submit("alice", &request, now(), &mut out)
        .expect_err("order refused");
    assert!(
        out.events
            .iter()
            .all(|e| matches!(e, ExchangeEvent::AccountOpened { .. })),
        "a refused order committed {:?}",
        out.events
    );
    error
}

fn updates(out: &Outcome) -> Vec<TradeUpdate> {
    out.announcements
        .iter()
        .filter_map(|a| match a {
            Announcement::User {
                event: UserEvent::TradeUpdate(update),
                ..
            } => Some((**update).clone()),
            _ => None,
        })
        .collect()
}

fn kinds(updates: &[TradeUpdate]) -> Vec<TradeEvent> {
    updates.iter().map(|u| u.event).collect()
}

fn quote(engine: &mut Engine, bid: Decimal, ask: Decimal) -> Vec<TradeUpdate> {
    let mut out = Outcome::default();
    engine.on_quote(
        "AAPL",
        bid,
        ask,
        (Decimal::ZERO, Decimal::ZERO),
        now(),
        &mut out,
    );
    updates(&out)
}

fn trade(engine: &mut Engine, price: Decimal, size: Decimal) -> Vec<TradeUpdate> {
    let mut out = Outcome::default();
    engine.on_trade("AAPL", price, size, now(), &mut out);
    updates(&out)
}

fn current(engine: &Engine, id: &str) -> Order {
    engine.order(id).expect("order exists")
}

#[test]
fn a_market_buy_walks_several_levels_with_partial_fills_and_the_right_average_price() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, order("buy", "market", "200", "day"));
    assert_eq!(order.status, OrderStatus::New);
    assert_eq!(
        kinds(&updates),
        vec![
            TradeEvent::New,
            TradeEvent::PartialFill,
            TradeEvent::PartialFill,
            TradeEvent::Fill
        ]
    );
    let fills: Vec<(Decimal, Decimal)> = updates[1..]
        .iter()
        .map(|u| (u.price.expect("price"), u.qty.expect("qty")))
        .collect();
    assert_eq!(
        fills,
        vec![
            (dec!(100.01), dec!(100)),
            (dec!(100.02), dec!(50)),
            (dec!(100.03), dec!(50))
        ]
    );
    let last = &updates[3].order;
    assert_eq!(last.filled_qty, dec!(200));
    // (10001 + 5001 + 5001.50) / 200
    assert_eq!(last.filled_avg_price, Some(dec!(100.0175)));
    assert_eq!(updates[3].position_qty, Some(dec!(200)));
    let book = engine.book("AAPL").expect("book");
    assert_eq!(book.asks, vec![(dec!(100.03), dec!(450))]);
    let portfolio = engine.portfolio("alice", now());
    assert_eq!(portfolio.cash, dec!(100000) - dec!(20003.50));
}

#[test]
fn taking_liquidity_announces_book_deltas_with_absolute_sizes() {
    let mut engine = engine();
    standard_book(&mut engine);
    let mut out = Outcome::default();
    engine
        .submit(
            "alice",
            &order("buy", "market", "120", "day"),
            now(),
            &mut out,
        )
        .expect("accepted");
    let deltas: Vec<_> = out
        .announcements
        .iter()
        .filter_map(|a| match a {
            Announcement::Book { delta, .. } => Some(delta.asks.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deltas,
        vec![
            vec![(dec!(100.01), dec!(0))],
            vec![(dec!(100.02), dec!(30))]
        ]
    );
}

#[test]
fn a_market_order_larger_than_the_book_fills_what_is_shown_and_cancels_the_rest() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, order("sell", "market", "1000", "gtc"));
    assert_eq!(kinds(&updates).last(), Some(&TradeEvent::Canceled));
    let done = current(&engine, &order.id);
    assert_eq!(done.status, OrderStatus::Canceled);
    assert_eq!(done.filled_qty, dec!(650));
    assert!(engine.book("AAPL").expect("book").bids.is_empty());
}

#[test]
fn a_limit_order_fills_its_marketable_part_and_rests_the_rest() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, limit("buy", "300", "100.02", "day"));
    assert_eq!(
        kinds(&updates),
        vec![
            TradeEvent::New,
            TradeEvent::PartialFill,
            TradeEvent::PartialFill
        ]
    );
    let resting = current(&engine, &order.id);
    assert_eq!(resting.status, OrderStatus::PartiallyFilled);
    assert_eq!(resting.filled_qty, dec!(150));
    assert_eq!(engine.orders("alice", OrderQuery::Open).len(), 1);
}

#[test]
fn a_resting_limit_fills_at_its_price_when_the_quote_crosses_it() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, limit("buy", "100", "99.50", "gtc"));
    assert_eq!(kinds(&updates), vec![TradeEvent::New]);
    assert!(quote(&mut engine, dec!(99.60), dec!(99.70)).is_empty());
    let fills = quote(&mut engine, dec!(99.40), dec!(99.45));
    assert_eq!(kinds(&fills).last(), Some(&TradeEvent::Fill));
    assert!(fills.iter().all(|u| u.price == Some(dec!(99.50))));
    let filled = current(&engine, &order.id);
    assert_eq!(filled.status, OrderStatus::Filled);
    assert_eq!(filled.filled_avg_price, Some(dec!(99.50)));
}

#[test]
fn a_trade_through_a_resting_limit_fills_it_up_to_the_trade_size() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, _) = submit(&mut engine, limit("sell", "500", "100.50", "gtc"));
    // A book that does not reach the limit, so only trades can fill it.
    set_book(
        &mut engine,
        &[(dec!(100.49), dec!(100))],
        &[(dec!(100.51), dec!(100))],
    );
    // At the limit is not through it.
    assert!(trade(&mut engine, dec!(100.50), dec!(300)).is_empty());
    let fills = trade(&mut engine, dec!(100.51), dec!(300));
    assert_eq!(kinds(&fills), vec![TradeEvent::PartialFill]);
    assert_eq!(fills[0].price, Some(dec!(100.50)));
    let partly = current(&engine, &order.id);
    assert_eq!(partly.status, OrderStatus::PartiallyFilled);
    assert_eq!(partly.filled_qty, dec!(300));
    let fills = trade(&mut engine, dec!(100.51), dec!(1000));
    assert_eq!(fills[0].qty, Some(dec!(200)));
    assert_eq!(current(&engine, &order.id).status, OrderStatus::Filled);
    assert_eq!(current(&engine, &order.id).filled_qty, dec!(500));
}

#[test]
fn ioc_takes_what_is_there_and_cancels_the_rest() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, limit("buy", "300", "100.02", "ioc"));
    assert_eq!(
        kinds(&updates),
        vec![
            TradeEvent::New,
            TradeEvent::PartialFill,
            TradeEvent::PartialFill,
            TradeEvent::Canceled
        ]
    );
    let done = current(&engine, &order.id);
    assert_eq!(done.filled_qty, dec!(150));
    assert_eq!(done.status, OrderStatus::Canceled);
}

#[test]
fn fok_fills_entirely_or_is_canceled_without_any_fill() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(&mut engine, limit("buy", "300", "100.02", "fok"));
    assert_eq!(kinds(&updates), vec![TradeEvent::New, TradeEvent::Canceled]);
    assert_eq!(current(&engine, &order.id).filled_qty, Decimal::ZERO);
    assert_eq!(engine.book("AAPL").expect("book").asks.len(), 3);
    assert!(engine.portfolio("alice", now()).positions.is_empty());

    let (order, updates) = submit(&mut engine, limit("buy", "300", "100.03", "fok"));
    assert_eq!(kinds(&updates).last(), Some(&TradeEvent::Fill));
    assert_eq!(current(&engine, &order.id).filled_qty, dec!(300));
}

#[test]
fn a_buy_stop_triggers_on_a_trade_at_or_above_it_and_fills_as_a_market_order() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, updates) = submit(
        &mut engine,
        OrderRequest {
            stop_price: Some("101".into()),
            ..order("buy", "stop", "50", "gtc")
        },
    );
    assert_eq!(kinds(&updates), vec![TradeEvent::New]);
    // Quotes never trigger a stop; only trades do.
    assert!(quote(&mut engine, dec!(101.50), dec!(101.52)).is_empty());
    assert!(trade(&mut engine, dec!(100.99), dec!(100)).is_empty());
    let fills = trade(&mut engine, dec!(101.00), dec!(100));
    assert_eq!(kinds(&fills).last(), Some(&TradeEvent::Fill));
    let filled = current(&engine, &order.id);
    assert_eq!(filled.status, OrderStatus::Filled);
    assert!(filled.filled_avg_price.expect("avg") >= dec!(100.99));
}

#[test]
fn a_sell_stop_limit_triggers_below_and_then_rests_as_a_limit() {
    let mut engine = engine();
    standard_book(&mut engine);
    submit(&mut engine, order("buy", "market", "100", "day"));
    let (order, _) = submit(
        &mut engine,
        OrderRequest {
            stop_price: Some("99".into()),
            limit_price: Some("98.90".into()),
            ..order("sell", "stop_limit", "100", "gtc")
        },
    );
    // The trade re-centres the book at 98.49/98.51, under the limit: nothing to sell into.
    let updates = trade(&mut engine, dec!(98.50), dec!(10));
    assert!(updates.is_empty(), "{updates:?}");
    assert_eq!(current(&engine, &order.id).status, OrderStatus::New);
    let fills = quote(&mut engine, dec!(98.95), dec!(98.97));
    assert_eq!(kinds(&fills).last(), Some(&TradeEvent::Fill));
    assert!(fills.iter().all(|u| u.price == Some(dec!(98.90))));
}

#[test]
fn cancel_closes_an_open_order_once_and_refuses_unknown_or_finished_ones() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (order, _) = submit(
        &mut engine,
        OrderRequest {
            client_order_id: Some("c-1".into()),
            ..limit("buy", "10", "90", "gtc")
        },
    );
    let mut out = Outcome::default();
    let canceled = engine
        .cancel(
            "alice",
            &OrderRef::ClientOrderId("c-1".into()),
            now(),
            &mut out,
        )
        .expect("canceled");
    assert_eq!(canceled.status, OrderStatus::Canceled);
    assert!(canceled.canceled_at.is_some());
    assert_eq!(kinds(&updates(&out)), vec![TradeEvent::Canceled]);
    let again = engine
        .cancel("alice", &OrderRef::Id(order.id.clone()), now(), &mut out)
        .expect_err("already canceled");
    assert_eq!(again.code, OrderError::NOT_CANCELABLE);
    assert!(again.message.contains("canceled"), "{}", again.message);
    let unknown = engine
        .cancel("alice", &OrderRef::Id("nope".into()), now(), &mut out)
        .expect_err("unknown");
    assert_eq!(unknown.code, OrderError::NOT_FOUND);
    // Another user's order is as good as unknown.
    let foreign = engine
        .cancel("bob", &OrderRef::Id(order.id), now(), &mut out)
        .expect_err("foreign");
    assert_eq!(foreign.code, OrderError::NOT_FOUND);
}

#[test]
fn replace_closes_the_old_order_as_replaced_and_links_the_new_one() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (old, _) = submit(&mut engine, limit("buy", "10", "90", "gtc"));
    let mut out = Outcome::default();
    let new = engine
        .replace(
            "alice",
            &OrderRef::Id(old.id.clone()),
            &ReplaceRequest {
                qty: Some("20".into()),
                limit_price: Some("91".into()),
                ..ReplaceRequest::default()
            },
            now(),
            &mut out,
        )
        .expect("replaced");
    assert_eq!(new.replaces.as_deref(), Some(old.id.as_str()));
    assert_eq!((new.qty, new.limit_price), (dec!(20), Some(dec!(91))));
    let updates = updates(&out);
    assert_eq!(kinds(&updates), vec![TradeEvent::Replaced, TradeEvent::New]);
    let old_now = current(&engine, &old.id);
    assert_eq!(old_now.status, OrderStatus::Replaced);
    assert_eq!(old_now.replaced_by.as_deref(), Some(new.id.as_str()));
    let again = engine
        .replace(
            "alice",
            &OrderRef::Id(old.id),
            &ReplaceRequest {
                qty: Some("5".into()),
                ..ReplaceRequest::default()
            },
            now(),
            &mut out,
        )
        .expect_err("replaced orders are final");
    assert_eq!(again.code, OrderError::NOT_CANCELABLE);
    let unknown = engine
        .replace(
            "alice",
            &OrderRef::Id("missing".into()),
            &ReplaceRequest::default(),
            now(),
            &mut out,
        )
        .expect_err("unknown");
    assert_eq!(unknown.code, OrderError::NOT_FOUND);
}

#[test]
fn a_marketable_replacement_fills_at_once() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (old, _) = submit(&mut engine, limit("buy", "10", "90", "day"));
    let mut out = Outcome::default();
    let new = engine
        .replace(
            "alice",
            &OrderRef::Id(old.id),
            &ReplaceRequest {
                limit_price: Some("100.01".into()),
                ..ReplaceRequest::default()
            },
            now(),
            &mut out,
        )
        .expect("replaced");
    assert_eq!(current(&engine, &new.id).status, OrderStatus::Filled);
}

#[test]
fn day_orders_expire_at_the_close_and_gtc_orders_stay() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (day, _) = submit(&mut engine, limit("buy", "10", "90", "day"));
    let (gtc, _) = submit(&mut engine, limit("buy", "10", "90", "gtc"));
    let mut out = Outcome::default();
    engine.close_session(now(), &mut out);
    assert_eq!(kinds(&updates(&out)), vec![TradeEvent::Expired]);
    let expired = current(&engine, &day.id);
    assert_eq!(expired.status, OrderStatus::Expired);
    assert!(expired.expired_at.is_some());
    assert_eq!(current(&engine, &gtc.id).status, OrderStatus::New);
}

#[test]
fn a_client_order_id_is_unique_among_all_orders_of_a_user_and_generated_when_absent() {
    let mut engine = engine();
    standard_book(&mut engine);
    let with_id = |id: &str| OrderRequest {
        client_order_id: Some(id.into()),
        ..limit("buy", "1", "90", "gtc")
    };
    let (first, _) = submit(&mut engine, with_id("dup"));
    let error = submit_err(&mut engine, with_id("dup"));
    assert_eq!(error.code, OrderError::DUPLICATE_CLIENT_ORDER_ID);
    assert!(
        error
            .message
            .starts_with("client_order_id must be unique: \"dup\""),
        "{}",
        error.message
    );
    assert_eq!(
        error.order.as_deref(),
        Some(&first),
        "the reply carries the order"
    );
    let mut out = Outcome::default();
    let canceled = engine
        .cancel("alice", &OrderRef::Id(first.id.clone()), now(), &mut out)
        .expect("canceled");
    // A finished order keeps its client_order_id: the retry learns it was canceled.
    let error = submit_err(&mut engine, with_id("dup"));
    assert_eq!(error.code, OrderError::DUPLICATE_CLIENT_ORDER_ID);
    assert_eq!(error.order.as_deref(), Some(&canceled));
    assert_eq!(
        engine.order_id_by_client_id("alice", "dup"),
        Some(first.id.as_str())
    );
    // Other users have their own namespace.
    let mut out = Outcome::default();
    engine
        .submit("bob", &with_id("dup"), now(), &mut out)
        .expect("bob's own dup");
    let (generated, _) = submit(&mut engine, limit("buy", "1", "90", "gtc"));
    assert!(!generated.client_order_id.is_empty());
}

#[test]
fn a_refused_order_creates_nothing_and_changes_no_balance() {
    let mut engine = engine();
    standard_book(&mut engine);
    submit(&mut engine, limit("buy", "10", "90", "gtc"));
    let before = engine.portfolio("alice", now());
    let orders_before = engine.orders("alice", OrderQuery::All);
    let too_big = submit_err(&mut engine, limit("buy", "2000", "90", "gtc"));
    assert_eq!(too_big.code, OrderError::INSUFFICIENT);
    assert!(
        too_big.message.contains("buying power"),
        "{}",
        too_big.message
    );
    let bad = submit_err(&mut engine, order("buy", "market", "0", "day"));
    assert_eq!(bad.code, OrderError::INVALID);
    let mut after = engine.portfolio("alice", now());
    after.t = before.t;
    assert_eq!(after, before);
    assert_eq!(engine.orders("alice", OrderQuery::All), orders_before);
}

#[test]
fn open_buy_orders_reserve_buying_power() {
    let mut engine = engine();
    standard_book(&mut engine);
    let before = engine.portfolio("alice", now()).buying_power;
    submit(&mut engine, limit("buy", "100", "90", "gtc"));
    let after = engine.portfolio("alice", now()).buying_power;
    assert_eq!(before - after, dec!(9000));
    // Just over what is left.
    let error = submit_err(&mut engine, limit("buy", "1000", "91.01", "gtc"));
    assert_eq!(error.code, OrderError::INSUFFICIENT);
    submit(&mut engine, limit("buy", "1000", "91", "gtc"));
}

#[test]
fn with_shorting_off_a_sale_beyond_the_shares_held_is_refused() {
    let mut engine = engine_with(EngineSettings {
        allow_short: false,
        ..settings()
    });
    standard_book(&mut engine);
    submit(&mut engine, order("buy", "market", "100", "day"));
    submit(&mut engine, limit("sell", "60", "200", "gtc"));
    let error = submit_err(&mut engine, limit("sell", "50", "200", "gtc"));
    assert_eq!(error.code, OrderError::INSUFFICIENT);
    assert!(
        error.message.starts_with("insufficient qty: 40 AAPL"),
        "{}",
        error.message
    );
    submit(&mut engine, limit("sell", "40", "200", "gtc"));
}

#[test]
fn a_short_sale_opens_a_short_position_and_holds_collateral() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (_, updates) = submit(&mut engine, order("sell", "market", "100", "day"));
    assert_eq!(
        updates.last().and_then(|u| u.position_qty),
        Some(dec!(-100))
    );
    let portfolio = engine.portfolio("alice", now());
    let position = &portfolio.positions[0];
    assert_eq!(position.qty, dec!(-100));
    assert_eq!(position.avg_entry_price, dec!(99.99));
    assert_eq!(portfolio.cash, dec!(100000) + dec!(9999));
    // Proceeds plus an equal amount are held against the short, at the mark (100).
    assert_eq!(
        portfolio.buying_power,
        portfolio.cash - dec!(2) * dec!(10000)
    );
    assert_eq!(portfolio.short_market_value, dec!(-10000));
    // Covering needs no buying power beyond the commission.
    let (_, updates) = submit(&mut engine, order("buy", "market", "100", "day"));
    assert_eq!(updates.last().and_then(|u| u.position_qty), Some(dec!(0)));
}

#[test]
fn commissions_are_charged_per_share_on_every_fill() {
    let mut engine = engine_with(EngineSettings {
        commission_per_share: dec!(0.005),
        ..settings()
    });
    standard_book(&mut engine);
    let (order, _) = submit(&mut engine, order("buy", "market", "200", "day"));
    let filled = current(&engine, &order.id);
    assert_eq!(filled.commission, dec!(1.000));
    let portfolio = engine.portfolio("alice", now());
    assert_eq!(portfolio.cash, dec!(100000) - dec!(20003.50) - dec!(1));
}

#[test]
fn the_portfolio_is_marked_to_the_last_trade() {
    let mut engine = engine();
    standard_book(&mut engine);
    submit(&mut engine, order("buy", "market", "100", "day"));
    trade(&mut engine, dec!(100.50), dec!(10));
    let portfolio = engine.portfolio("alice", now());
    let held: Decimal = portfolio
        .positions
        .iter()
        .map(|p| p.qty * p.current_price)
        .sum();
    assert_eq!(portfolio.equity, portfolio.cash + held);
    assert_eq!(portfolio.positions[0].current_price, dec!(100.50));
    assert_eq!(portfolio.positions[0].unrealized_pl, dec!(49));
}

#[test]
fn a_price_move_of_a_held_symbol_announces_a_portfolio_change_and_others_do_not() {
    let mut engine = engine();
    standard_book(&mut engine);
    submit(&mut engine, order("buy", "market", "10", "day"));
    let mut out = Outcome::default();
    engine.on_trade("MSFT", dec!(50), dec!(1), now(), &mut out);
    assert!(
        !out.announcements
            .iter()
            .any(|a| matches!(a, Announcement::Portfolio { .. }))
    );
    engine.on_trade("AAPL", dec!(100.02), dec!(1), now(), &mut out);
    assert!(
        out.announcements
            .iter()
            .any(|a| matches!(a, Announcement::Portfolio { user } if user == "alice"))
    );
}

#[test]
fn every_transition_of_an_order_emits_exactly_one_trade_update() {
    let mut engine = engine();
    standard_book(&mut engine);
    let mut out = Outcome::default();
    let order = engine
        .submit(
            "alice",
            &limit("buy", "300", "100.02", "gtc"),
            now(),
            &mut out,
        )
        .expect("accepted");
    engine
        .cancel("alice", &OrderRef::Id(order.id.clone()), now(), &mut out)
        .expect("canceled");
    let for_order: Vec<_> = updates(&out)
        .into_iter()
        .filter(|u| u.order.id == order.id)
        .collect();
    // new, two partial fills, canceled: four transitions, four updates, each with the state
    // after its transition.
    assert_eq!(for_order.len(), 4);
    let statuses: Vec<_> = for_order.iter().map(|u| u.order.status).collect();
    assert_eq!(
        statuses,
        vec![
            OrderStatus::New,
            OrderStatus::PartiallyFilled,
            OrderStatus::PartiallyFilled,
            OrderStatus::Canceled
        ]
    );
}

#[test]
fn refused_requests_carry_the_protocol_codes() {
    let mut engine = engine();
    standard_book(&mut engine);
    let cases = [
        (order("buy", "market", "-1", "day"), OrderError::INVALID),
        (order("buy", "market", "1.5", "day"), OrderError::INVALID),
        (limit("buy", "1", "1.001", "day"), OrderError::INVALID),
        (
            OrderRequest {
                symbol: Some("ZZZZ".into()),
                ..order("buy", "market", "1", "day")
            },
            OrderError::INVALID,
        ),
        (order("buy", "market", "1", "forever"), OrderError::INVALID),
        (order("buy", "iceberg", "1", "day"), OrderError::INVALID),
        (order("short", "market", "1", "day"), OrderError::INVALID),
        (
            limit("buy", "100000", "100", "day"),
            OrderError::INSUFFICIENT,
        ),
        (
            order("buy", "market", "650", "day"),
            OrderError::INSUFFICIENT,
        ),
    ];
    // 650 shares at ~100 is 65k: affordable. Make the market order unaffordable first.
    submit(&mut engine, limit("buy", "400", "90", "gtc"));
    for (request, code) in cases {
        let error = submit_err(&mut engine, request.clone());
        assert_eq!(error.code, code, "{request:?}: {}", error.message);
    }
}

#[test]
fn market_data_outside_the_price_range_is_ignored_rather_than_overflowing() {
    let mut engine = engine();
    standard_book(&mut engine);
    submit(&mut engine, order("buy", "market", "10", "day"));
    let huge = Decimal::MAX / dec!(10);
    assert!(trade(&mut engine, huge, dec!(1)).is_empty());
    assert!(quote(&mut engine, huge, huge).is_empty());
    assert_eq!(engine.mark_price("AAPL"), Some(dec!(100)));
    let portfolio = engine.portfolio("alice", now());
    assert_eq!(portfolio.positions[0].current_price, dec!(100));
}

#[test]
fn old_finished_orders_are_forgotten_beyond_the_history_limit() {
    let mut engine = engine_with(EngineSettings {
        closed_orders_kept: 1,
        ..settings()
    });
    standard_book(&mut engine);
    let (first, _) = submit(&mut engine, limit("buy", "1", "90", "gtc"));
    let (second, _) = submit(&mut engine, limit("buy", "1", "90", "gtc"));
    let mut out = Outcome::default();
    engine
        .cancel("alice", &OrderRef::Id(second.id.clone()), now(), &mut out)
        .expect("second canceled");
    let canceled = engine
        .cancel("alice", &OrderRef::Id(first.id.clone()), now(), &mut out)
        .expect("first canceled and returned");
    assert_eq!(canceled.status, OrderStatus::Canceled);
    let kept: Vec<String> = engine
        .orders("alice", OrderQuery::All)
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(kept, vec![first.id]);
}
