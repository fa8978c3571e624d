//! Order entry over REST, once for every door: the order-body parser (which the WebSocket
//! session's `order` and `replace` actions use too) and the operations (submit, find, replace,
//! cancel, cancel all, list) that go to the exchange through `TradingApi`. tickgate's routes
//! (`/v1/orders…`) answer with tickgate's order shape; the Alpaca routes (`/v2/orders…`,
//! `routes::alpaca`) call the same operations and answer with Alpaca's.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::routes::api_keys::identity;
use crate::state::AppState;
use crate::trading::api::{
    Order, OrderError, OrderQuery, OrderRef, OrderRequest, ReplaceRequest, TradingApi,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/orders", web::post().to(submit_v1))
        .route("/v1/orders", web::delete().to(cancel_all_v1))
        .route("/v1/orders/{id}", web::get().to(get_v1))
        .route("/v1/orders/{id}", web::patch().to(replace_v1))
        .route("/v1/orders/{id}", web::delete().to(cancel_v1));
}

/// The exchange and the user a request trades for.
pub struct Desk {
    pub trading: Arc<dyn TradingApi>,
    pub user: String,
}

impl Desk {
    pub fn of(request: &HttpRequest, state: &AppState) -> Result<Desk, ApiError> {
        let identity = identity(request, state)?;
        Ok(Desk {
            trading: Arc::clone(&state.trading),
            user: identity.user,
        })
    }

    /// Places an order from a JSON body with the `order` action's fields.
    pub async fn submit(&self, body: Map<String, Value>) -> Result<Order, OrderError> {
        let request = parse_body(body, order_request)?;
        self.trading.submit(&self.user, request).await
    }

    /// Replaces an open order with the fields of a `replace` action's `data`.
    pub async fn replace(
        &self,
        target: OrderRef,
        body: Map<String, Value>,
    ) -> Result<Order, OrderError> {
        let patch = parse_body(body, replace_request)?;
        self.trading.replace(&self.user, target, patch).await
    }

    /// The user's account and positions, marked to market.
    pub async fn portfolio(&self) -> Result<crate::trading::api::Portfolio, OrderError> {
        self.trading.portfolio(&self.user).await
    }

    pub async fn cancel(&self, target: OrderRef) -> Result<Order, OrderError> {
        self.trading.cancel(&self.user, target).await
    }

    /// One order by id, among those the exchange keeps (`trading.closed_orders_kept`), or by
    /// client order id, which names one order per user: that one as it stands now, from the
    /// store when the exchange no longer keeps it.
    pub async fn find(&self, target: &OrderRef) -> Result<Order, OrderError> {
        let id = match target {
            OrderRef::Id(id) => id,
            OrderRef::ClientOrderId(client_order_id) => {
                return self
                    .trading
                    .order_by_client_id(&self.user, client_order_id)
                    .await;
            }
        };
        let orders = self.trading.orders(&self.user, OrderQuery::All).await?;
        orders
            .into_iter()
            .find(|o| &o.id == id)
            .ok_or_else(|| OrderError::new(OrderError::NOT_FOUND, "order not found"))
    }

    pub async fn list(&self, query: OrderQuery) -> Result<Vec<Order>, OrderError> {
        self.trading.orders(&self.user, query).await
    }

    /// Cancels every open order; one result per order, in the order they were listed.
    pub async fn cancel_all(&self) -> Result<Vec<(String, Result<Order, OrderError>)>, OrderError> {
        let open = self.trading.orders(&self.user, OrderQuery::Open).await?;
        let mut results = Vec::with_capacity(open.len());
        for order in open {
            let result = self.cancel(OrderRef::Id(order.id.clone())).await;
            results.push((order.id, result));
        }
        Ok(results)
    }
}

/// A decimal field of an order: a JSON string or number, kept as text for the engine.
pub fn decimal_text(data: &Map<String, Value>, key: &str) -> Result<Option<String>, OrderError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(OrderError::invalid(format!(
            "{key} must be a decimal string such as \"10\" or \"126.50\""
        ))),
    }
}

pub fn string_field(data: &Map<String, Value>, key: &str) -> Result<Option<String>, OrderError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(OrderError::invalid(format!("{key} must be a string"))),
    }
}

fn data_object<'a>(
    map: &'a Map<String, Value>,
    allowed: &[&str],
    what: &str,
) -> Result<&'a Map<String, Value>, OrderError> {
    let data = match map.get("data") {
        Some(Value::Object(data)) => data,
        Some(_) => return Err(OrderError::invalid("data must be an object")),
        None => return Err(OrderError::invalid(format!("data is required for {what}"))),
    };
    if let Some(key) = data.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(OrderError::invalid(format!(
            "unknown field {key:?} in {what} data; allowed: {}",
            allowed.join(", ")
        )));
    }
    Ok(data)
}

/// The `data` of an `order` action (or a REST order body): the fields the exchange takes,
/// as text, with a field-specific error for anything else.
pub fn order_request(map: &Map<String, Value>) -> Result<OrderRequest, OrderError> {
    const KEYS: [&str; 8] = [
        "symbol",
        "qty",
        "side",
        "type",
        "time_in_force",
        "limit_price",
        "stop_price",
        "client_order_id",
    ];
    let data = data_object(map, &KEYS, "order")?;
    Ok(OrderRequest {
        symbol: string_field(data, "symbol")?,
        qty: decimal_text(data, "qty")?,
        side: string_field(data, "side")?,
        order_type: string_field(data, "type")?,
        time_in_force: string_field(data, "time_in_force")?,
        limit_price: decimal_text(data, "limit_price")?,
        stop_price: decimal_text(data, "stop_price")?,
        client_order_id: string_field(data, "client_order_id")?,
    })
}

/// The `data` of a `replace` action (or a REST replace body).
pub fn replace_request(map: &Map<String, Value>) -> Result<ReplaceRequest, OrderError> {
    const KEYS: [&str; 5] = [
        "qty",
        "time_in_force",
        "limit_price",
        "stop_price",
        "client_order_id",
    ];
    let data = data_object(map, &KEYS, "replace")?;
    Ok(ReplaceRequest {
        qty: decimal_text(data, "qty")?,
        time_in_force: string_field(data, "time_in_force")?,
        limit_price: decimal_text(data, "limit_price")?,
        stop_price: decimal_text(data, "stop_price")?,
        client_order_id: string_field(data, "client_order_id")?,
    })
}

/// Runs the action parser on a REST body (the parser reads an action's `data`).
fn parse_body<T>(
    body: Map<String, Value>,
    parse: fn(&Map<String, Value>) -> Result<T, OrderError>,
) -> Result<T, OrderError> {
    let mut action = Map::with_capacity(1);
    action.insert("data".into(), Value::Object(body));
    parse(&action)
}

/// A JSON object body; anything else is a 400 in the API's shape.
pub fn object_body(body: web::Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the body must be a JSON object",
        )),
        Err(error) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("invalid JSON body: {error}"),
        )),
    }
}

/// An order error over tickgate's HTTP routes; the status comes from the one code table.
pub fn order_error(error: OrderError) -> ApiError {
    // A refusal (400, 403, 404, 422, … from the one table) is the client's to read, and so
    // is 50310002 (a cluster's exchange is failing over: retry); everything else is the
    // exchange failing: 50010000 over HTTP, the cause logged.
    if error.code.status().is_client_error() || error.code == OrderError::EXCHANGE_UNAVAILABLE {
        ApiError::new(error.code, error.message)
    } else {
        ApiError::internal(&error)
    }
}

fn order_json(order: &Order) -> HttpResponse {
    HttpResponse::Ok().json(order)
}

async fn submit_v1(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let order = desk.submit(object_body(body)?).await.map_err(order_error)?;
    Ok(order_json(&order))
}

async fn get_v1(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let order = desk
        .find(&OrderRef::Id(path.into_inner()))
        .await
        .map_err(order_error)?;
    Ok(order_json(&order))
}

async fn replace_v1(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let order = desk
        .replace(OrderRef::Id(path.into_inner()), object_body(body)?)
        .await
        .map_err(order_error)?;
    Ok(order_json(&order))
}

async fn cancel_v1(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let order = desk
        .cancel(OrderRef::Id(path.into_inner()))
        .await
        .map_err(order_error)?;
    Ok(order_json(&order))
}

async fn cancel_all_v1(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let results = desk.cancel_all().await.map_err(order_error)?;
    let body: Vec<Value> = results
        .into_iter()
        .map(|(id, result)| match result {
            Ok(order) => serde_json::json!({"id": id, "status": 200, "order": order}),
            Err(error) => {
                let api = order_error(error);
                serde_json::json!({
                    "id": id,
                    "status": api.status().as_u16(),
                    "error": {"code": api.code, "message": api.message},
                })
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn exchange_unavailable_reaches_http_clients_as_503_with_its_code_and_failures_stay_generic() {
        let retry = order_error(crate::trading::command::exchange_unavailable());
        assert_eq!(retry.code, ErrorCode::ExchangeUnavailable);
        assert_eq!(retry.status().as_u16(), 503);
        assert!(retry.message.contains("retry"));
        let failure = order_error(OrderError::new(OrderError::INTERNAL, "disk on fire"));
        assert_eq!(failure.code, ErrorCode::Internal);
        assert_eq!(failure.message, "internal error");
    }
}
