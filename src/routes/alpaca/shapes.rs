//! Alpaca's JSON shapes, built from tickgate's own: orders, trade updates, the account,
//! positions, assets and the market clock, plus the adaptation of Alpaca's order bodies to
//! the fields tickgate's order parser takes. Pure functions; the routes and the trading
//! stream call them.
//!
//! Fields tickgate has no notion of get fixed, documented values (`docs/alpaca.md`):
//! `order_class` is `simple`, `extended_hours` is `false`, margins and day-trade counters are
//! zero, every asset trades on `NASDAQ`.

use chrono::{DateTime, FixedOffset, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::trading::api::{
    Order, OrderError, OrderStatus, Portfolio, Position, PositionSide, TradeUpdate,
};

/// A stable UUID for a name (an asset or an account): Alpaca clients expect UUIDs where
/// tickgate has names. Version 8 (custom), from the name's SHA-256.
pub fn stable_uuid(namespace: &str, name: &str) -> Uuid {
    let text = format!("tickgate:{namespace}:{name}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

pub fn asset_id(symbol: &str) -> Uuid {
    stable_uuid("asset", symbol)
}

/// Every asset trades on this exchange in the Alpaca shapes.
pub const EXCHANGE: &str = "NASDAQ";
pub const ASSET_CLASS: &str = "us_equity";

fn enum_text<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn decimal(value: Decimal) -> Value {
    Value::String(value.normalize().to_string())
}

fn optional_decimal(value: Option<Decimal>) -> Value {
    value.map_or(Value::Null, decimal)
}

fn time(value: DateTime<Utc>) -> Value {
    Value::String(value.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn optional_time(value: Option<DateTime<Utc>>) -> Value {
    value.map_or(Value::Null, time)
}

/// An order as Alpaca's `Order` entity.
pub fn order(order: &Order) -> Value {
    let order_type = enum_text(&order.order_type);
    let replaced_at = (order.status == OrderStatus::Replaced).then_some(order.updated_at);
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    put("id", Value::String(order.id.clone()));
    put(
        "client_order_id",
        Value::String(order.client_order_id.clone()),
    );
    put("created_at", time(order.created_at));
    put("updated_at", time(order.updated_at));
    put("submitted_at", time(order.submitted_at));
    put("filled_at", optional_time(order.filled_at));
    put("expired_at", optional_time(order.expired_at));
    put("canceled_at", optional_time(order.canceled_at));
    put("failed_at", Value::Null);
    put("replaced_at", optional_time(replaced_at));
    put(
        "replaced_by",
        order.replaced_by.clone().map_or(Value::Null, Value::String),
    );
    put(
        "replaces",
        order.replaces.clone().map_or(Value::Null, Value::String),
    );
    put(
        "asset_id",
        Value::String(asset_id(&order.symbol).to_string()),
    );
    put("symbol", Value::String(order.symbol.clone()));
    put("asset_class", Value::String(ASSET_CLASS.into()));
    put("notional", Value::Null);
    put("qty", decimal(order.qty));
    put("filled_qty", decimal(order.filled_qty));
    put("filled_avg_price", optional_decimal(order.filled_avg_price));
    put("order_class", Value::String("simple".into()));
    put("order_type", order_type.clone());
    put("type", order_type);
    put("side", enum_text(&order.side));
    put("time_in_force", enum_text(&order.time_in_force));
    put("limit_price", optional_decimal(order.limit_price));
    put("stop_price", optional_decimal(order.stop_price));
    put("status", enum_text(&order.status));
    put("extended_hours", Value::Bool(false));
    put("legs", Value::Null);
    put("trail_percent", Value::Null);
    put("trail_price", Value::Null);
    put("hwm", Value::Null);
    put("commission", decimal(order.commission));
    Value::Object(out)
}

/// A trade update as the trading stream's `data`.
pub fn trade_update(update: &TradeUpdate) -> Value {
    let mut out = Map::new();
    out.insert("event".into(), enum_text(&update.event));
    if let Some(execution_id) = &update.execution_id {
        out.insert("execution_id".into(), Value::String(execution_id.clone()));
    }
    if let Some(price) = update.price {
        out.insert("price".into(), decimal(price));
    }
    if let Some(qty) = update.qty {
        out.insert("qty".into(), decimal(qty));
    }
    if let Some(position_qty) = update.position_qty {
        out.insert("position_qty".into(), decimal(position_qty));
    }
    out.insert("timestamp".into(), time(update.timestamp));
    out.insert("order".into(), order(&update.order));
    Value::Object(out)
}

/// The account as Alpaca's `TradeAccount`.
pub fn account(user: &str, portfolio: &Portfolio, shorting_enabled: bool) -> Value {
    let id = stable_uuid("account", user);
    let number = id.simple().to_string()[..10].to_ascii_uppercase();
    let zero = || decimal(Decimal::ZERO);
    serde_json::json!({
        "id": id.to_string(),
        "account_number": format!("TG{number}"),
        "status": "ACTIVE",
        "crypto_status": null,
        "currency": "USD",
        "buying_power": decimal(portfolio.buying_power),
        "regt_buying_power": decimal(portfolio.buying_power),
        "non_marginable_buying_power": decimal(portfolio.buying_power),
        "options_buying_power": zero(),
        "cash": decimal(portfolio.cash),
        "accrued_fees": zero(),
        "pending_transfer_in": zero(),
        "pending_transfer_out": zero(),
        "portfolio_value": decimal(portfolio.equity),
        "equity": decimal(portfolio.equity),
        "last_equity": decimal(portfolio.equity),
        "long_market_value": decimal(portfolio.long_market_value),
        "short_market_value": decimal(portfolio.short_market_value),
        "initial_margin": zero(),
        "maintenance_margin": zero(),
        "last_maintenance_margin": zero(),
        "sma": zero(),
        "multiplier": "1",
        "shorting_enabled": shorting_enabled,
        "trading_blocked": false,
        "transfers_blocked": false,
        "account_blocked": false,
        "trade_suspended_by_user": false,
        "pattern_day_trader": false,
        "daytrade_count": 0,
        "options_approved_level": 0,
        "options_trading_level": 0,
        "realized_pl": decimal(portfolio.realized_pl),
    })
}

/// A position as Alpaca's `Position`. tickgate keeps no previous close, so the intraday
/// figures equal the totals and `change_today` is zero.
pub fn position(position: &Position) -> Value {
    serde_json::json!({
        "asset_id": asset_id(&position.symbol).to_string(),
        "symbol": position.symbol,
        "exchange": EXCHANGE,
        "asset_class": ASSET_CLASS,
        "asset_marginable": true,
        "qty": decimal(position.qty),
        "qty_available": decimal(position.qty),
        "side": match position.side {
            PositionSide::Long => "long",
            PositionSide::Short => "short",
        },
        "avg_entry_price": decimal(position.avg_entry_price),
        "market_value": decimal(position.market_value),
        "cost_basis": decimal(position.cost_basis),
        "unrealized_pl": decimal(position.unrealized_pl),
        "unrealized_plpc": decimal(position.unrealized_plpc),
        "unrealized_intraday_pl": decimal(position.unrealized_pl),
        "unrealized_intraday_plpc": decimal(position.unrealized_plpc),
        "current_price": decimal(position.current_price),
        "lastday_price": decimal(position.current_price),
        "change_today": decimal(Decimal::ZERO),
    })
}

/// How the exchange treats every asset (from `[trading]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetTerms {
    pub shortable: bool,
    pub qty_decimals: u32,
    pub tick_size: Decimal,
}

/// A symbol of the universe as Alpaca's `Asset`.
pub fn asset(symbol: &str, terms: AssetTerms) -> Value {
    serde_json::json!({
        "id": asset_id(symbol).to_string(),
        "class": ASSET_CLASS,
        "exchange": EXCHANGE,
        "symbol": symbol,
        "name": symbol,
        "status": "active",
        "tradable": true,
        "marginable": true,
        "shortable": terms.shortable,
        "easy_to_borrow": terms.shortable,
        "fractionable": terms.qty_decimals > 0,
        "min_trade_increment": decimal(Decimal::new(1, terms.qty_decimals)),
        "price_increment": decimal(terms.tick_size),
        "attributes": [],
    })
}

/// The market clock: `is_open` and the next regular open and close of the New York calendar,
/// in New York time as Alpaca gives them. `always_open` (the simulator's demo setting) keeps
/// `is_open` true; the next open and close still follow the calendar.
pub fn clock(now: DateTime<Utc>, always_open: bool) -> Value {
    use crate::market::{MarketSession, next_session_change, session_at};
    let local = |t: DateTime<Utc>| {
        let offset = crate::market::new_york_utc_offset(t).num_seconds() as i32;
        FixedOffset::east_opt(offset)
            .map(|zone| Value::String(t.with_timezone(&zone).to_rfc3339()))
            .unwrap_or_else(|| time(t))
    };
    let mut next_open = None;
    let mut next_close = None;
    let mut cursor = now;
    // A week holds at most 20 session changes; 40 steps always find both.
    for _ in 0..40 {
        let Some(change) = next_session_change(cursor, false) else {
            break;
        };
        let after = session_at(change, false);
        let before = session_at(cursor, false);
        if after == MarketSession::Regular && next_open.is_none() {
            next_open = Some(change);
        }
        if before == MarketSession::Regular && next_close.is_none() {
            next_close = Some(change);
        }
        if next_open.is_some() && next_close.is_some() {
            break;
        }
        cursor = change;
    }
    let is_open = always_open || session_at(now, false) == MarketSession::Regular;
    serde_json::json!({
        "timestamp": local(now),
        "is_open": is_open,
        "next_open": next_open.map_or(Value::Null, local),
        "next_close": next_close.map_or(Value::Null, local),
    })
}

/// Fields of Alpaca's order body that tickgate's order parser does not take, with what they
/// may hold: absent, null or the value that means "nothing special".
const ALPACA_ONLY: &[&str] = &[
    "notional",
    "trail_price",
    "trail_percent",
    "take_profit",
    "stop_loss",
    "legs",
    "order_class",
    "extended_hours",
    "position_intent",
];

/// Turns Alpaca's order (or replace) body into the fields tickgate's order parser takes,
/// refusing the features tickgate does not simulate with a message that names them.
pub fn adapt_order_body(mut body: Map<String, Value>) -> Result<Map<String, Value>, OrderError> {
    for key in ALPACA_ONLY {
        let Some(value) = body.remove(*key) else {
            continue;
        };
        let harmless = match (*key, &value) {
            (_, Value::Null) => true,
            ("order_class", Value::String(class)) => class.is_empty() || class == "simple",
            ("extended_hours", Value::Bool(_)) => true,
            ("position_intent", Value::String(_)) => true,
            _ => false,
        };
        if !harmless {
            return Err(OrderError::invalid(format!(
                "{key} is not supported by tickgate (simple orders only; docs/alpaca.md)"
            )));
        }
    }
    // alpaca-py sends quantities and prices as JSON numbers; the parser takes their text.
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::api::{OrderType, Side, TimeInForce, TradeEvent};
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn sample_order() -> Order {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 4, 15, 0, 0)
            .single()
            .expect("t");
        Order {
            id: Uuid::new_v4().to_string(),
            client_order_id: "mine-1".into(),
            symbol: "AAPL".into(),
            side: Side::Buy,
            order_type: OrderType::Limit,
            time_in_force: TimeInForce::Day,
            qty: dec!(10),
            filled_qty: dec!(4),
            filled_avg_price: Some(dec!(126.500000)),
            limit_price: Some(dec!(126.50)),
            stop_price: None,
            status: OrderStatus::PartiallyFilled,
            created_at: t,
            updated_at: t,
            submitted_at: t,
            filled_at: None,
            canceled_at: None,
            expired_at: None,
            replaced_by: None,
            replaces: None,
            commission: dec!(0.04),
        }
    }

    #[test]
    fn an_order_has_alpacas_fields_with_decimal_strings() {
        let value = order(&sample_order());
        assert_eq!(value["qty"], "10");
        assert_eq!(value["filled_avg_price"], "126.5");
        assert_eq!(value["limit_price"], "126.5");
        assert_eq!(value["stop_price"], Value::Null);
        assert_eq!(value["type"], "limit");
        assert_eq!(value["order_type"], "limit");
        assert_eq!(value["status"], "partially_filled");
        assert_eq!(value["order_class"], "simple");
        assert_eq!(value["extended_hours"], false);
        assert_eq!(value["asset_class"], "us_equity");
        assert_eq!(value["asset_id"], asset_id("AAPL").to_string());
        assert!(Uuid::parse_str(value["asset_id"].as_str().expect("id")).is_ok());
    }

    #[test]
    fn stable_uuids_are_stable_and_distinct() {
        assert_eq!(asset_id("AAPL"), asset_id("AAPL"));
        assert_ne!(asset_id("AAPL"), asset_id("MSFT"));
        assert_ne!(stable_uuid("account", "AAPL"), asset_id("AAPL"));
        assert_eq!(asset_id("AAPL").get_version_num(), 8);
    }

    #[test]
    fn a_fill_update_carries_price_qty_and_position_as_strings() {
        let update = TradeUpdate {
            seq: 1,
            event: TradeEvent::PartialFill,
            execution_id: Some(Uuid::new_v4().to_string()),
            price: Some(dec!(126.50)),
            qty: Some(dec!(4)),
            position_qty: Some(dec!(4)),
            timestamp: Utc::now(),
            order: sample_order(),
        };
        let value = trade_update(&update);
        assert_eq!(value["event"], "partial_fill");
        assert_eq!(value["price"], "126.5");
        assert_eq!(value["position_qty"], "4");
        assert_eq!(value["order"]["symbol"], "AAPL");
        let new = TradeUpdate {
            seq: 2,
            event: TradeEvent::New,
            execution_id: None,
            price: None,
            qty: None,
            position_qty: None,
            timestamp: Utc::now(),
            order: sample_order(),
        };
        let value = trade_update(&new);
        assert!(value.get("execution_id").is_none() && value.get("price").is_none());
    }

    #[test]
    fn the_account_and_positions_use_alpacas_names() {
        let portfolio = Portfolio {
            cash: dec!(98734.5),
            equity: dec!(100012.25),
            long_market_value: dec!(1277.75),
            short_market_value: dec!(0),
            buying_power: dec!(98734.5),
            realized_pl: dec!(0),
            t: Utc::now(),
            positions: vec![Position {
                symbol: "AAPL".into(),
                qty: dec!(-10),
                side: PositionSide::Short,
                avg_entry_price: dec!(127.775),
                current_price: dec!(127.775),
                market_value: dec!(-1277.75),
                cost_basis: dec!(-1277.75),
                unrealized_pl: dec!(0),
                unrealized_plpc: dec!(0),
            }],
        };
        let value = account("demo", &portfolio, true);
        assert_eq!(value["status"], "ACTIVE");
        assert_eq!(value["cash"], "98734.5");
        assert_eq!(value["portfolio_value"], value["equity"]);
        assert_eq!(value["id"], stable_uuid("account", "demo").to_string());
        let held = position(&portfolio.positions[0]);
        assert_eq!(held["side"], "short");
        assert_eq!(held["qty"], "-10");
        assert_eq!(held["exchange"], "NASDAQ");
    }

    #[test]
    fn the_clock_names_the_next_regular_open_and_close_in_new_york_time() {
        // Friday 2026-12-04 15:00 UTC is 10:00 in New York (EST): open, closes at 16:00 and
        // opens next on Monday 09:30.
        let friday = Utc
            .with_ymd_and_hms(2026, 12, 4, 15, 0, 0)
            .single()
            .expect("t");
        let value = clock(friday, false);
        assert_eq!(value["is_open"], true);
        assert_eq!(value["timestamp"], "2026-12-04T10:00:00-05:00");
        assert_eq!(value["next_close"], "2026-12-04T16:00:00-05:00");
        assert_eq!(value["next_open"], "2026-12-07T09:30:00-05:00");
        let saturday = Utc
            .with_ymd_and_hms(2026, 12, 5, 15, 0, 0)
            .single()
            .expect("t");
        assert_eq!(clock(saturday, false)["is_open"], false);
        assert_eq!(clock(saturday, true)["is_open"], true);
    }

    #[test]
    fn assets_report_the_exchange_terms() {
        let value = asset(
            "AAPL",
            AssetTerms {
                shortable: false,
                qty_decimals: 0,
                tick_size: dec!(0.01),
            },
        );
        assert_eq!(value["class"], "us_equity");
        assert_eq!(value["shortable"], false);
        assert_eq!(value["fractionable"], false);
        assert_eq!(value["min_trade_increment"], "1");
        assert_eq!(value["price_increment"], "0.01");
    }

    #[test]
    fn alpaca_only_order_fields_are_dropped_when_harmless_and_refused_otherwise() {
        let body = |value: Value| value.as_object().cloned().expect("object");
        let adapted = adapt_order_body(body(serde_json::json!({
            "symbol": "AAPL", "qty": 1.0, "side": "buy", "type": "market",
            "time_in_force": "day", "order_class": "simple", "extended_hours": false,
            "notional": null
        })))
        .expect("simple order");
        assert!(!adapted.contains_key("order_class") && !adapted.contains_key("notional"));
        assert_eq!(adapted["qty"], 1.0);
        for (key, value) in [
            ("notional", serde_json::json!(100.0)),
            ("order_class", serde_json::json!("bracket")),
            ("trail_percent", serde_json::json!(1.5)),
            ("take_profit", serde_json::json!({"limit_price": 130})),
        ] {
            let mut order = body(serde_json::json!({"symbol": "AAPL"}));
            order.insert(key.to_owned(), value);
            let error = adapt_order_body(order).expect_err(key);
            assert_eq!(error.code, OrderError::INVALID);
            assert!(error.message.contains(key), "{}", error.message);
        }
    }

    #[test]
    fn shared_enum_names_match_alpacas() {
        assert_eq!(
            [
                enum_text(&Side::Buy),
                enum_text(&OrderType::StopLimit),
                enum_text(&TimeInForce::Gtc),
                enum_text(&OrderStatus::PartiallyFilled),
            ],
            [
                Value::from("buy"),
                Value::from("stop_limit"),
                Value::from("gtc"),
                Value::from("partially_filled")
            ]
        );
        assert_eq!(enum_text(&TradeEvent::PartialFill), "partial_fill");
    }
}
