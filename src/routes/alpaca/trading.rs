//! Alpaca's trading routes: `/v2/orders…`, `/v2/account`, `/v2/positions…`, `/v2/assets…`,
//! `/v2/clock`, on the shared order operations of `routes::orders`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::order_error;
use crate::error::{ApiError, ErrorCode};
use crate::routes::alpaca::shapes;
use crate::routes::api_keys::identity;
use crate::routes::orders::{Desk, object_body};
use crate::routes::params::{RawQuery, echo, query_params};
use crate::state::AppState;
use crate::trading::api::{Order, OrderQuery, OrderRef, Side};

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/orders", web::post().to(submit))
        .route("/v2/orders", web::get().to(list))
        .route("/v2/orders", web::delete().to(cancel_all))
        .route(
            "/v2/orders:by_client_order_id",
            web::get().to(by_client_order_id),
        )
        .route("/v2/orders/{id}", web::get().to(get))
        .route("/v2/orders/{id}", web::patch().to(replace))
        .route("/v2/orders/{id}", web::delete().to(cancel))
        .route("/v2/account", web::get().to(account))
        .route("/v2/positions", web::get().to(positions))
        .route("/v2/positions/{symbol}", web::get().to(position))
        .route("/v2/assets", web::get().to(assets))
        .route("/v2/assets/{symbol}", web::get().to(asset))
        .route("/v2/clock", web::get().to(clock));
}

fn order_json(order: &Order) -> HttpResponse {
    HttpResponse::Ok().json(shapes::order(order))
}

async fn submit(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let body = shapes::adapt_order_body(object_body(body)?).map_err(order_error)?;
    let order = desk.submit(body).await.map_err(order_error)?;
    Ok(order_json(&order))
}

fn bad_parameter(message: String) -> ApiError {
    ApiError::new(ErrorCode::UnprocessableParameter, message)
}

fn parse_time(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad_parameter(format!(
                "{name} must be an RFC 3339 time, not {}",
                echo(raw)
            ))
        })
}

/// `GET /v2/orders` with Alpaca's filters: `status` (open, closed, all), `limit` (1-500,
/// default 50), `after`, `until`, `direction` (asc, desc), `side`, `symbols`; `nested` is
/// accepted and has no effect (tickgate has no multi-leg orders).
async fn list(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let query = query_params(
        query.into_inner(),
        &[
            "status",
            "limit",
            "after",
            "until",
            "direction",
            "nested",
            "side",
            "symbols",
        ],
    )?;
    let which = match query.get("status").map(String::as_str) {
        None | Some("open") => OrderQuery::Open,
        Some("closed") => OrderQuery::Closed,
        Some("all") => OrderQuery::All,
        Some(other) => {
            return Err(bad_parameter(format!(
                "status must be open, closed or all, not {}",
                echo(other)
            )));
        }
    };
    let limit = match query.get("limit") {
        None => 50,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => return Err(bad_parameter("limit must be from 1 to 500".into())),
        },
    };
    let after = query
        .get("after")
        .map(|t| parse_time("after", t))
        .transpose()?;
    let until = query
        .get("until")
        .map(|t| parse_time("until", t))
        .transpose()?;
    let ascending = match query.get("direction").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(bad_parameter(format!(
                "direction must be asc or desc, not {}",
                echo(other)
            )));
        }
    };
    let side = match query.get("side").map(String::as_str) {
        None => None,
        Some("buy") => Some(Side::Buy),
        Some("sell") => Some(Side::Sell),
        Some(other) => {
            return Err(bad_parameter(format!(
                "side must be buy or sell, not {}",
                echo(other)
            )));
        }
    };
    let symbols: Option<Vec<String>> = query.get("symbols").map(|list| {
        list.split(',')
            .map(|s| s.trim().to_ascii_uppercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    // The exchange lists newest first.
    let mut orders: Vec<Order> = desk
        .list(which)
        .await
        .map_err(order_error)?
        .into_iter()
        .filter(|o| after.is_none_or(|t| o.submitted_at > t))
        .filter(|o| until.is_none_or(|t| o.submitted_at <= t))
        .filter(|o| side.is_none_or(|s| o.side == s))
        .filter(|o| symbols.as_ref().is_none_or(|list| list.contains(&o.symbol)))
        .collect();
    orders.truncate(limit);
    if ascending {
        orders.reverse();
    }
    let body: Vec<Value> = orders.iter().map(shapes::order).collect();
    Ok(HttpResponse::Ok().json(body))
}

async fn get(
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

async fn by_client_order_id(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let query = query_params(query.into_inner(), &["client_order_id"])?;
    let Some(client_order_id) = query.get("client_order_id") else {
        return Err(bad_parameter("client_order_id is required".into()));
    };
    let order = desk
        .find(&OrderRef::ClientOrderId(client_order_id.clone()))
        .await
        .map_err(order_error)?;
    Ok(order_json(&order))
}

async fn replace(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let mut body = object_body(body)?;
    if body.get("trail").is_some_and(|v| !v.is_null()) {
        return Err(order_error(crate::trading::api::OrderError::invalid(
            "trail is not supported by tickgate (no trailing stops)",
        )));
    }
    body.remove("trail");
    let order = desk
        .replace(OrderRef::Id(path.into_inner()), body)
        .await
        .map_err(order_error)?;
    Ok(order_json(&order))
}

/// Alpaca answers a successful cancel with 204 and no body.
async fn cancel(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    desk.cancel(OrderRef::Id(path.into_inner()))
        .await
        .map_err(order_error)?;
    Ok(HttpResponse::NoContent().finish())
}

/// 207 Multi-Status: one `{id, status, body}` per open order.
async fn cancel_all(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let results = desk.cancel_all().await.map_err(order_error)?;
    let body: Vec<Value> = results
        .into_iter()
        .map(|(id, result)| match result {
            Ok(order) => serde_json::json!({
                "id": id, "status": 200, "body": shapes::order(&order)
            }),
            Err(error) => {
                let api = order_error(error);
                serde_json::json!({
                    "id": id,
                    "status": api.status().as_u16(),
                    "body": {"code": api.code, "message": api.message},
                })
            }
        })
        .collect();
    Ok(HttpResponse::build(StatusCode::MULTI_STATUS).json(body))
}

async fn account(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let portfolio = desk.portfolio().await.map_err(order_error)?;
    Ok(HttpResponse::Ok().json(shapes::account(
        &desk.user,
        &portfolio,
        state.settings.trading.allow_short,
    )))
}

async fn positions(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let portfolio = desk.portfolio().await.map_err(order_error)?;
    let body: Vec<Value> = portfolio.positions.iter().map(shapes::position).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// One position by symbol or asset id.
async fn position(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let desk = Desk::of(&request, &state)?;
    let wanted = path.into_inner();
    let portfolio = desk.portfolio().await.map_err(order_error)?;
    let found = portfolio.positions.iter().find(|p| {
        p.symbol.eq_ignore_ascii_case(&wanted)
            || shapes::asset_id(&p.symbol).to_string() == wanted.to_ascii_lowercase()
    });
    match found {
        Some(position) => Ok(HttpResponse::Ok().json(shapes::position(position))),
        None => Err(ApiError::not_found("position does not exist")),
    }
}

fn asset_terms(state: &AppState) -> shapes::AssetTerms {
    let trading = &state.settings.trading;
    shapes::AssetTerms {
        shortable: trading.allow_short,
        qty_decimals: trading.qty_decimals,
        tick_size: trading.tick_size,
    }
}

/// Every symbol of the universe; `status=inactive` and asset classes other than `us_equity`
/// are empty lists. Market data needs no account, but Alpaca asks for a key here too.
async fn assets(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    let query = query_params(
        query.into_inner(),
        &["status", "asset_class", "exchange", "attributes"],
    )?;
    let none = query.get("status").is_some_and(|s| s != "active")
        || query
            .get("asset_class")
            .is_some_and(|c| c != shapes::ASSET_CLASS)
        || query.get("exchange").is_some_and(|e| e != shapes::EXCHANGE)
        || query.get("attributes").is_some_and(|a| !a.is_empty());
    let terms = asset_terms(&state);
    let body: Vec<Value> = if none {
        Vec::new()
    } else {
        state
            .universe()
            .names()
            .iter()
            .map(|symbol| shapes::asset(symbol, terms))
            .collect()
    };
    Ok(HttpResponse::Ok().json(body))
}

async fn asset(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    let wanted = path.into_inner();
    let symbol = state.universe().names().iter().find(|symbol| {
        symbol.eq_ignore_ascii_case(&wanted)
            || shapes::asset_id(symbol).to_string() == wanted.to_ascii_lowercase()
    });
    match symbol {
        Some(symbol) => Ok(HttpResponse::Ok().json(shapes::asset(symbol, asset_terms(&state)))),
        None => Err(ApiError::not_found("asset not found")),
    }
}

async fn clock(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    Ok(HttpResponse::Ok().json(shapes::clock(
        Utc::now(),
        state.settings.simulator.always_open,
    )))
}
