//! Turns the unparsed [`OrderRequest`] and [`ReplaceRequest`] into typed orders, saying which
//! field is wrong and why (code 40010001). Checks that need account or market state (buying
//! power, duplicate `client_order_id`) live in the engine.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::api::{OrderError, OrderRequest, OrderType, ReplaceRequest, Side, TimeInForce};
use crate::market::SymbolUniverse;

/// Longest accepted `client_order_id`, as in the usual trading APIs.
pub const MAX_CLIENT_ORDER_ID_LEN: usize = 128;

/// Limits that validation enforces, from [`crate::trading::config::TradingSettings`].
#[derive(Debug, Clone)]
pub struct OrderLimits {
    pub max_order_qty: Decimal,
    /// Decimal places allowed in `qty` (0 = whole shares).
    pub qty_decimals: u32,
    /// Prices must lie on this grid (and have no more decimals than it).
    pub tick_size: Decimal,
    pub max_price: Decimal,
}

/// A well-formed order, not yet checked against the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub symbol: String,
    pub side: Side,
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub qty: Decimal,
    pub limit_price: Option<Decimal>,
    pub stop_price: Option<Decimal>,
    /// `None` when the client did not send one; the engine generates it.
    pub client_order_id: Option<String>,
}

fn parse_side(text: &str) -> Result<Side, OrderError> {
    match text {
        "buy" => Ok(Side::Buy),
        "sell" => Ok(Side::Sell),
        other => Err(OrderError::invalid(format!(
            "side: {other:?} is not a side; use \"buy\" or \"sell\""
        ))),
    }
}

fn parse_type(text: &str) -> Result<OrderType, OrderError> {
    match text {
        "market" => Ok(OrderType::Market),
        "limit" => Ok(OrderType::Limit),
        "stop" => Ok(OrderType::Stop),
        "stop_limit" => Ok(OrderType::StopLimit),
        other => Err(OrderError::invalid(format!(
            "type: {other:?} is not an order type; use market, limit, stop or stop_limit"
        ))),
    }
}

fn parse_tif(text: &str) -> Result<TimeInForce, OrderError> {
    match text {
        "day" => Ok(TimeInForce::Day),
        "gtc" => Ok(TimeInForce::Gtc),
        "ioc" => Ok(TimeInForce::Ioc),
        "fok" => Ok(TimeInForce::Fok),
        other => Err(OrderError::invalid(format!(
            "time_in_force: {other:?} is not a time in force; use day, gtc, ioc or fok"
        ))),
    }
}

/// Parses a decimal the way it travels on the wire: plain digits with an optional fraction,
/// no exponent, no sign other than a leading minus (which the caller then refuses).
fn parse_decimal(field: &str, text: &str) -> Result<Decimal, OrderError> {
    let trimmed = text.trim();
    let plain = !trimmed.is_empty()
        && trimmed
            .trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
        && trimmed.chars().filter(|c| *c == '.').count() <= 1
        && trimmed.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return Err(OrderError::invalid(format!(
            "{field}: {text:?} is not a decimal number"
        )));
    }
    Decimal::from_str(trimmed)
        .map_err(|_| OrderError::invalid(format!("{field}: {text:?} is out of range")))
}

/// Parses and checks a quantity.
pub fn parse_qty(text: &str, limits: &OrderLimits) -> Result<Decimal, OrderError> {
    let qty = parse_decimal("qty", text)?;
    if qty <= Decimal::ZERO {
        return Err(OrderError::invalid(format!(
            "qty: must be greater than zero, got {text}"
        )));
    }
    if qty.normalize().scale() > limits.qty_decimals {
        return Err(OrderError::invalid(if limits.qty_decimals == 0 {
            format!("qty: must be a whole number of shares, got {text}")
        } else {
            format!(
                "qty: at most {} decimal places, got {text}",
                limits.qty_decimals
            )
        }));
    }
    if qty > limits.max_order_qty {
        return Err(OrderError::invalid(format!(
            "qty: at most {} per order, got {text}",
            limits.max_order_qty
        )));
    }
    Ok(qty.normalize())
}

/// Parses and checks a limit or stop price.
pub fn parse_price(field: &str, text: &str, limits: &OrderLimits) -> Result<Decimal, OrderError> {
    let price = parse_decimal(field, text)?;
    if price <= Decimal::ZERO {
        return Err(OrderError::invalid(format!(
            "{field}: must be greater than zero, got {text}"
        )));
    }
    if price > limits.max_price {
        return Err(OrderError::invalid(format!(
            "{field}: at most {}, got {text}",
            limits.max_price
        )));
    }
    if !(price % limits.tick_size).is_zero() {
        return Err(OrderError::invalid(format!(
            "{field}: must be a multiple of the tick size {}, got {text}",
            limits.tick_size
        )));
    }
    Ok(price.normalize())
}

fn parse_client_order_id(text: &str) -> Result<String, OrderError> {
    if text.is_empty() || text.len() > MAX_CLIENT_ORDER_ID_LEN {
        return Err(OrderError::invalid(format!(
            "client_order_id: must be 1 to {MAX_CLIENT_ORDER_ID_LEN} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(OrderError::invalid(
            "client_order_id: must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// Which prices an order type needs (`true`) or forbids (`false`): (limit, stop).
fn prices_for(order_type: OrderType) -> (bool, bool) {
    match order_type {
        OrderType::Market => (false, false),
        OrderType::Limit => (true, false),
        OrderType::Stop => (false, true),
        OrderType::StopLimit => (true, true),
    }
}

fn type_name(order_type: OrderType) -> &'static str {
    match order_type {
        OrderType::Market => "market",
        OrderType::Limit => "limit",
        OrderType::Stop => "stop",
        OrderType::StopLimit => "stop_limit",
    }
}

/// Checks that the prices match the type and the time in force is allowed for it.
fn check_shape(
    order_type: OrderType,
    time_in_force: TimeInForce,
    limit_price: Option<Decimal>,
    stop_price: Option<Decimal>,
) -> Result<(), OrderError> {
    let (needs_limit, needs_stop) = prices_for(order_type);
    let name = type_name(order_type);
    match (needs_limit, limit_price.is_some()) {
        (true, false) => {
            return Err(OrderError::invalid(format!(
                "limit_price: required for {name} orders"
            )));
        }
        (false, true) => {
            return Err(OrderError::invalid(format!(
                "limit_price: not allowed for {name} orders"
            )));
        }
        _ => {}
    }
    match (needs_stop, stop_price.is_some()) {
        (true, false) => {
            return Err(OrderError::invalid(format!(
                "stop_price: required for {name} orders"
            )));
        }
        (false, true) => {
            return Err(OrderError::invalid(format!(
                "stop_price: not allowed for {name} orders"
            )));
        }
        _ => {}
    }
    // A stop waits for a trigger, which contradicts "now or never".
    if matches!(order_type, OrderType::Stop | OrderType::StopLimit)
        && matches!(time_in_force, TimeInForce::Ioc | TimeInForce::Fok)
    {
        return Err(OrderError::invalid(format!(
            "time_in_force: {name} orders accept day or gtc only"
        )));
    }
    Ok(())
}

/// Validates a new order request. The first problem found is reported.
pub fn validate_order(
    request: &OrderRequest,
    universe: &SymbolUniverse,
    limits: &OrderLimits,
) -> Result<NewOrder, OrderError> {
    let symbol = request
        .symbol
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| OrderError::invalid("symbol: required"))?
        .to_ascii_uppercase();
    if !universe.contains(&symbol) {
        return Err(OrderError::invalid(format!(
            "symbol: {symbol:?} is not traded here"
        )));
    }
    let qty = parse_qty(
        request
            .qty
            .as_deref()
            .ok_or_else(|| OrderError::invalid("qty: required"))?,
        limits,
    )?;
    let side = parse_side(
        request
            .side
            .as_deref()
            .ok_or_else(|| OrderError::invalid("side: required"))?,
    )?;
    let order_type = parse_type(
        request
            .order_type
            .as_deref()
            .ok_or_else(|| OrderError::invalid("type: required"))?,
    )?;
    let time_in_force = parse_tif(
        request
            .time_in_force
            .as_deref()
            .ok_or_else(|| OrderError::invalid("time_in_force: required"))?,
    )?;
    let limit_price = request
        .limit_price
        .as_deref()
        .map(|text| parse_price("limit_price", text, limits))
        .transpose()?;
    let stop_price = request
        .stop_price
        .as_deref()
        .map(|text| parse_price("stop_price", text, limits))
        .transpose()?;
    check_shape(order_type, time_in_force, limit_price, stop_price)?;
    let client_order_id = request
        .client_order_id
        .as_deref()
        .map(parse_client_order_id)
        .transpose()?;
    Ok(NewOrder {
        symbol,
        side,
        order_type,
        time_in_force,
        qty,
        limit_price,
        stop_price,
        client_order_id,
    })
}

/// Applies a replace patch to the order being replaced, giving the replacement's terms.
/// `remaining` is the old order's unfilled quantity, the default for the new one.
pub fn validate_replace(
    patch: &ReplaceRequest,
    old: &NewOrder,
    remaining: Decimal,
    limits: &OrderLimits,
) -> Result<NewOrder, OrderError> {
    if patch.qty.is_none()
        && patch.time_in_force.is_none()
        && patch.limit_price.is_none()
        && patch.stop_price.is_none()
        && patch.client_order_id.is_none()
    {
        return Err(OrderError::invalid(
            "replace: give at least one of qty, time_in_force, limit_price, stop_price, client_order_id",
        ));
    }
    let qty = match patch.qty.as_deref() {
        Some(text) => parse_qty(text, limits)?,
        None => remaining,
    };
    let time_in_force = match patch.time_in_force.as_deref() {
        Some(text) => parse_tif(text)?,
        None => old.time_in_force,
    };
    let limit_price = match patch.limit_price.as_deref() {
        Some(text) => Some(parse_price("limit_price", text, limits)?),
        None => old.limit_price,
    };
    let stop_price = match patch.stop_price.as_deref() {
        Some(text) => Some(parse_price("stop_price", text, limits)?),
        None => old.stop_price,
    };
    check_shape(old.order_type, time_in_force, limit_price, stop_price)?;
    let client_order_id = patch
        .client_order_id
        .as_deref()
        .map(parse_client_order_id)
        .transpose()?;
    Ok(NewOrder {
        symbol: old.symbol.clone(),
        side: old.side,
        order_type: old.order_type,
        time_in_force,
        qty,
        limit_price,
        stop_price,
        client_order_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn limits() -> OrderLimits {
        OrderLimits {
            max_order_qty: dec!(1000000),
            qty_decimals: 0,
            tick_size: dec!(0.01),
            max_price: dec!(1000000),
        }
    }

    fn universe() -> SymbolUniverse {
        SymbolUniverse::new(["AAPL", "MSFT"])
    }

    fn request() -> OrderRequest {
        OrderRequest {
            symbol: Some("AAPL".into()),
            qty: Some("10".into()),
            side: Some("buy".into()),
            order_type: Some("limit".into()),
            time_in_force: Some("day".into()),
            limit_price: Some("126.50".into()),
            stop_price: None,
            client_order_id: Some("my-1".into()),
        }
    }

    fn error_of(request: OrderRequest) -> OrderError {
        match validate_order(&request, &universe(), &limits()) {
            Ok(order) => panic!("expected an error, got {order:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn a_well_formed_limit_order_parses_into_exact_decimals() {
        let order = validate_order(&request(), &universe(), &limits()).expect("valid");
        assert_eq!(order.qty, dec!(10));
        assert_eq!(order.limit_price, Some(dec!(126.5)));
        assert_eq!(order.side, Side::Buy);
        assert_eq!(order.client_order_id.as_deref(), Some("my-1"));
    }

    #[test]
    fn each_bad_field_is_named_in_the_message_with_the_invalid_order_code() {
        type Mutation = Box<dyn Fn(&mut OrderRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|r| r.qty = Some("0".into())),
                "qty: must be greater",
            ),
            (
                Box::new(|r| r.qty = Some("-5".into())),
                "qty: must be greater",
            ),
            (
                Box::new(|r| r.qty = Some("1.5".into())),
                "qty: must be a whole",
            ),
            (
                Box::new(|r| r.qty = Some("1e3".into())),
                "qty: \"1e3\" is not",
            ),
            (Box::new(|r| r.qty = Some("2000000".into())), "qty: at most"),
            (Box::new(|r| r.qty = None), "qty: required"),
            (
                Box::new(|r| r.symbol = Some("ZZZZ".into())),
                "symbol: \"ZZZZ\"",
            ),
            (Box::new(|r| r.symbol = None), "symbol: required"),
            (Box::new(|r| r.side = Some("hold".into())), "side: \"hold\""),
            (Box::new(|r| r.order_type = Some("pegged".into())), "type: "),
            (
                Box::new(|r| r.time_in_force = Some("gtd".into())),
                "time_in_force: ",
            ),
            (Box::new(|r| r.limit_price = None), "limit_price: required"),
            (
                Box::new(|r| r.limit_price = Some("126.505".into())),
                "limit_price: must be a multiple",
            ),
            (
                Box::new(|r| r.limit_price = Some("-1".into())),
                "limit_price: must be greater",
            ),
            (
                Box::new(|r| r.stop_price = Some("120".into())),
                "stop_price: not allowed for limit",
            ),
            (
                Box::new(|r| r.client_order_id = Some(String::new())),
                "client_order_id: must be 1 to",
            ),
        ];
        for (mutate, needle) in cases {
            let mut bad = request();
            mutate(&mut bad);
            let error = error_of(bad.clone());
            assert_eq!(error.code, OrderError::INVALID, "{bad:?}");
            assert!(
                error.message.starts_with(needle),
                "{:?} does not start with {needle:?}",
                error.message
            );
        }
    }

    #[test]
    fn prices_must_match_the_order_type() {
        let mut market = request();
        market.order_type = Some("market".into());
        assert!(
            error_of(market.clone())
                .message
                .contains("not allowed for market")
        );
        market.limit_price = None;
        assert!(validate_order(&market, &universe(), &limits()).is_ok());

        let mut stop = market.clone();
        stop.order_type = Some("stop".into());
        assert!(
            error_of(stop.clone())
                .message
                .starts_with("stop_price: required")
        );
        stop.stop_price = Some("120".into());
        assert!(validate_order(&stop, &universe(), &limits()).is_ok());
        stop.time_in_force = Some("ioc".into());
        assert!(error_of(stop).message.contains("day or gtc"));

        let mut stop_limit = request();
        stop_limit.order_type = Some("stop_limit".into());
        assert!(
            error_of(stop_limit.clone())
                .message
                .starts_with("stop_price: required")
        );
        stop_limit.stop_price = Some("125".into());
        assert!(validate_order(&stop_limit, &universe(), &limits()).is_ok());
    }

    #[test]
    fn a_replace_keeps_unpatched_terms_and_checks_the_patched_ones() {
        let old = validate_order(&request(), &universe(), &limits()).expect("valid");
        let patch = ReplaceRequest {
            qty: Some("5".into()),
            ..ReplaceRequest::default()
        };
        let new = validate_replace(&patch, &old, dec!(10), &limits()).expect("valid");
        assert_eq!(new.qty, dec!(5));
        assert_eq!(new.limit_price, Some(dec!(126.5)));
        let bad = ReplaceRequest {
            stop_price: Some("1".into()),
            ..ReplaceRequest::default()
        };
        let error = validate_replace(&bad, &old, dec!(10), &limits()).expect_err("extra price");
        assert!(error.message.starts_with("stop_price: not allowed"));
        let empty = validate_replace(&ReplaceRequest::default(), &old, dec!(10), &limits())
            .expect_err("empty patch");
        assert_eq!(empty.code, OrderError::INVALID);
    }
}
