//! Alpaca's stock market-data routes: bars (`/v2/stocks/bars`, `/v2/stocks/{symbol}/bars`) and
//! the latest trade, quote and bar, for many symbols or one. Bars are tickgate's one-minute
//! bars (memory and store, like `GET /v1/bars`); the latest values are the hub's.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};
use crate::market::{EventKind, SymbolId};
use crate::routes::api_keys::identity;
use crate::routes::params::{RawQuery, echo, query_params};
use crate::state::AppState;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/stocks/bars", web::get().to(bars))
        .route("/v2/stocks/bars/latest", web::get().to(latest_bars))
        .route("/v2/stocks/trades/latest", web::get().to(latest_trades))
        .route("/v2/stocks/quotes/latest", web::get().to(latest_quotes))
        .route("/v2/stocks/{symbol}/bars", web::get().to(symbol_bars))
        .route(
            "/v2/stocks/{symbol}/bars/latest",
            web::get().to(symbol_latest_bar),
        )
        .route(
            "/v2/stocks/{symbol}/trades/latest",
            web::get().to(symbol_latest_trade),
        )
        .route(
            "/v2/stocks/{symbol}/quotes/latest",
            web::get().to(symbol_latest_quote),
        );
}

/// Query parameters Alpaca's clients send that change nothing here: there is one feed, no
/// corporate actions to adjust for, and prices are in dollars.
const IGNORED: &[&str] = &["feed", "adjustment", "asof", "currency"];

fn bad_parameter(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, message)
}

fn symbol_id(state: &AppState, raw: &str) -> Result<(SymbolId, String), ApiError> {
    let symbol = raw.trim().to_ascii_uppercase();
    match state.universe().id(&symbol) {
        Some(id) => Ok((id, symbol)),
        None => Err(ApiError::new(
            ErrorCode::UnknownSymbol,
            format!("unknown symbol {}", echo(&symbol)),
        )),
    }
}

fn symbol_list(
    state: &AppState,
    raw: Option<&String>,
) -> Result<Vec<(SymbolId, String)>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
        return Err(bad_parameter("symbols is required"));
    };
    let mut out: Vec<(SymbolId, String)> = Vec::new();
    for symbol in raw.split(',') {
        let entry = symbol_id(state, symbol)?;
        if !out.iter().any(|(id, _)| *id == entry.0) {
            out.push(entry);
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// tickgate keeps one-minute bars only.
fn check_timeframe(raw: Option<&String>) -> Result<(), ApiError> {
    match raw.map(String::as_str) {
        Some("1Min" | "1T" | "1min") => Ok(()),
        None => Err(bad_parameter(
            "timeframe is required (tickgate has 1Min bars)",
        )),
        Some(other) => Err(ApiError::new(
            ErrorCode::UnprocessableParameter,
            format!(
                "timeframe {} is not available; tickgate has 1Min bars",
                echo(other)
            ),
        )),
    }
}

fn time_param(
    query: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    crate::routes::market::parse_time(name, query.get(name).map(String::as_str))
}

fn limit_param(query: &std::collections::HashMap<String, String>) -> Result<usize, ApiError> {
    match query.get("limit").map(String::as_str) {
        None | Some("") => Ok(1000),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(bad_parameter("limit must be an integer from 1 to 10000")),
        },
    }
}

fn descending(query: &std::collections::HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("sort").map(String::as_str) {
        None | Some("asc") => Ok(false),
        Some("desc") => Err(bad_parameter(
            "sort=desc is not supported; bars come oldest first",
        )),
        Some(other) => Err(bad_parameter(format!(
            "sort must be asc, not {}",
            echo(other)
        ))),
    }
}

/// A bar without its symbol and tag: Alpaca's REST bar.
fn bar_json(bar: &crate::market::Bar) -> Value {
    let mut value = serde_json::to_value(bar).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.remove("S");
        object.remove("T");
    }
    value
}

fn token(symbol: &str, time: DateTime<Utc>) -> String {
    format!(
        "{symbol}|{}",
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// Multi-symbol bars: symbols in alphabetical order, each oldest first, `limit` bars in all;
/// the page token names the symbol and time where the next page starts.
async fn bars(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    let mut allowed = vec![
        "symbols",
        "timeframe",
        "start",
        "end",
        "limit",
        "page_token",
        "sort",
    ];
    allowed.extend_from_slice(IGNORED);
    let query = query_params(query.into_inner(), &allowed)?;
    let symbols = symbol_list(&state, query.get("symbols"))?;
    check_timeframe(query.get("timeframe"))?;
    descending(&query)?;
    let start = time_param(&query, "start")?;
    let end = time_param(&query, "end")?;
    let mut remaining = limit_param(&query)?;
    let resume = match query.get("page_token").filter(|t| !t.is_empty()) {
        None => None,
        Some(raw) => {
            let (symbol, time) = raw
                .split_once('|')
                .ok_or_else(|| bad_parameter("page_token is not one this server gave"))?;
            let time = crate::routes::market::parse_time("page_token", Some(time))?
                .ok_or_else(|| bad_parameter("page_token is not one this server gave"))?;
            Some((symbol.to_owned(), time))
        }
    };
    let mut out = Map::new();
    let mut next_page_token = None;
    for (id, symbol) in symbols {
        let from = match &resume {
            Some((at, _)) if symbol < *at => continue,
            Some((at, time)) if symbol == *at => start.max(Some(*time)),
            _ => start,
        };
        if remaining == 0 {
            // The previous symbol filled the page exactly; this one starts the next.
            next_page_token = Some(match from {
                Some(time) => token(&symbol, time),
                None => token(&symbol, DateTime::<Utc>::UNIX_EPOCH),
            });
            break;
        }
        let (page, next) =
            crate::routes::market::bar_page(&state, id, &symbol, from, end, remaining).await?;
        remaining -= page.len();
        if !page.is_empty() {
            out.insert(
                symbol.clone(),
                Value::Array(page.iter().map(bar_json).collect()),
            );
        }
        if let Some(time) = next {
            next_page_token = Some(token(&symbol, time));
            break;
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "bars": out,
        "next_page_token": next_page_token,
    })))
}

async fn symbol_bars(
    request: HttpRequest,
    path: web::Path<String>,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    let mut allowed = vec!["timeframe", "start", "end", "limit", "page_token", "sort"];
    allowed.extend_from_slice(IGNORED);
    let query = query_params(query.into_inner(), &allowed)?;
    let (id, symbol) = symbol_id(&state, &path.into_inner())?;
    check_timeframe(query.get("timeframe"))?;
    descending(&query)?;
    let start = time_param(&query, "start")?;
    let end = time_param(&query, "end")?;
    let limit = limit_param(&query)?;
    let page_start = time_param(&query, "page_token")?;
    let (page, next) =
        crate::routes::market::bar_page(&state, id, &symbol, start.max(page_start), end, limit)
            .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "symbol": symbol,
        "bars": page.iter().map(bar_json).collect::<Vec<_>>(),
        "next_page_token": next.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    })))
}

/// The hub's latest value of `kind` per symbol, as Alpaca's objects (no `T`, no `S`).
fn latest(state: &AppState, ids: &[SymbolId], kind: EventKind) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for entry in state.hub.latest(Some(ids)) {
        if entry.kind != kind {
            continue;
        }
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&entry.json) else {
            continue;
        };
        let Some(Value::String(symbol)) = object.remove("S") else {
            continue;
        };
        object.remove("T");
        out.insert(symbol, Value::Object(object));
    }
    out
}

async fn latest_many(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
    kind: EventKind,
    key: &str,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    let mut allowed = vec!["symbols"];
    allowed.extend_from_slice(IGNORED);
    let query = query_params(query.into_inner(), &allowed)?;
    let ids: Vec<SymbolId> = symbol_list(&state, query.get("symbols"))?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ key: latest(&state, &ids, kind) })))
}

async fn latest_one(
    request: HttpRequest,
    path: web::Path<String>,
    query: RawQuery,
    state: web::Data<AppState>,
    kind: EventKind,
    key: &str,
) -> Result<HttpResponse, ApiError> {
    identity(&request, &state)?;
    query_params(query.into_inner(), IGNORED)?;
    let (id, symbol) = symbol_id(&state, &path.into_inner())?;
    let value = latest(&state, &[id], kind).remove(&symbol);
    match value {
        Some(value) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({"symbol": symbol, key: value})))
        }
        None => Err(ApiError::not_found(format!("no {key} of {symbol} yet"))),
    }
}

async fn latest_trades(
    r: HttpRequest,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_many(r, q, s, EventKind::Trade, "trades").await
}

async fn latest_quotes(
    r: HttpRequest,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_many(r, q, s, EventKind::Quote, "quotes").await
}

async fn latest_bars(
    r: HttpRequest,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_many(r, q, s, EventKind::Bar, "bars").await
}

async fn symbol_latest_trade(
    r: HttpRequest,
    p: web::Path<String>,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_one(r, p, q, s, EventKind::Trade, "trade").await
}

async fn symbol_latest_quote(
    r: HttpRequest,
    p: web::Path<String>,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_one(r, p, q, s, EventKind::Quote, "quote").await
}

async fn symbol_latest_bar(
    r: HttpRequest,
    p: web::Path<String>,
    q: RawQuery,
    s: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    latest_one(r, p, q, s, EventKind::Bar, "bar").await
}
