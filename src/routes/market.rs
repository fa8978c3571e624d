//! Public market REST: `/v1/symbols`, `/v1/snapshot` (latest values, the hub's shared JSON
//! joined without re-encoding) and `/v1/bars` (in-memory bars merged with the store's).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::routes::params::{RawQuery, parse_symbols, query_params};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/symbols", web::get().to(symbols))
        .route("/v1/snapshot", web::get().to(snapshot))
        .route("/v1/bars", web::get().to(bars));
}

async fn symbols(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "symbols": state.universe().names() }))
}

/// Joins JSON objects that are already encoded into a JSON array.
fn json_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (index, item) in items.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

async fn snapshot(query: RawQuery, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query = query_params(query.into_inner(), &["symbols"])?;
    let universe = state.universe();
    let filter = parse_symbols(
        query.get("symbols").map(String::as_str),
        universe,
        universe.len().max(1),
        false,
    )?;
    let ids = filter.ids(universe);
    let entries = state.hub.latest(Some(&ids));
    let cursor = state.hub.cursor(crate::hub::Feed::Market);
    let mut body = Vec::new();
    body.extend_from_slice(format!("{{\"cursor\":\"{cursor}\",\"trades\":").as_bytes());
    use crate::market::EventKind;
    // `statuses`: the newest session, upstream, halt and trading status of the requested
    // symbols and of `*` (the whole market), oldest first.
    for (index, kind) in [
        EventKind::Trade,
        EventKind::Quote,
        EventKind::Bar,
        EventKind::Status,
    ]
    .into_iter()
    .enumerate()
    {
        if index == 1 {
            body.extend_from_slice(b",\"quotes\":");
        } else if index == 2 {
            body.extend_from_slice(b",\"bars\":");
        } else if index == 3 {
            body.extend_from_slice(b",\"statuses\":");
        }
        body.extend_from_slice(&json_array(
            entries
                .iter()
                .filter(|e| e.kind == kind)
                .map(|e| e.json.as_ref()),
        ));
    }
    body.push(b'}');
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[derive(Debug)]
struct BarsQuery {
    symbol: Option<String>,
    timeframe: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    /// The `next_page_token` of the previous page: the start time of its first missing bar.
    page_token: Option<String>,
}

impl BarsQuery {
    const NAMES: &[&str] = &["symbol", "timeframe", "start", "end", "limit", "page_token"];
}

pub fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("{name} must be an RFC 3339 time, e.g. 2026-01-02T14:30:00Z"),
                    )
                })
        })
        .transpose()
}

/// Up to `limit` one-minute bars of one symbol with `start <= t < end`, oldest first, from
/// memory and the store, and the start time of the next bar when there are more (the
/// `next_page_token` of `/v1/bars` and of Alpaca's bar routes).
pub async fn bar_page(
    state: &AppState,
    id: crate::market::SymbolId,
    symbol: &str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    limit: usize,
) -> Result<(Vec<crate::market::Bar>, Option<DateTime<Utc>>), ApiError> {
    // One bar more than asked says whether the page was cut short; its start time is where
    // the next page begins, so a client that follows the token misses nothing.
    let mut bars = state.hub.bars(id, start, end, limit + 1);
    if let Some(store) = &state.store {
        let stored = store
            .history
            .bars(crate::store::BarQuery {
                symbol: symbol.to_owned(),
                start,
                end,
                limit: limit + 1,
            })
            .await
            .map_err(|error| {
                tracing::error!(%error, "bar history query failed");
                ApiError::new(ErrorCode::NotReady, "bar history is unavailable right now")
            })?;
        // Both lists are sorted and start at `start`; the in-memory bars are the newest
        // (they may not be flushed to the store yet), so they win for the same minute.
        let mut merged: std::collections::BTreeMap<DateTime<Utc>, crate::market::Bar> =
            stored.into_iter().map(|bar| (bar.time, bar)).collect();
        merged.extend(bars.into_iter().map(|bar| (bar.time, bar)));
        bars = merged.into_values().take(limit + 1).collect();
    }
    let next = if bars.len() > limit {
        bars.pop().map(|next| next.time)
    } else {
        None
    };
    Ok((bars, next))
}

async fn bars(query: RawQuery, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Strict names, and empty values (`start=&end=`) count as absent.
    let query = query_params(query.into_inner(), BarsQuery::NAMES)?;
    let query = BarsQuery {
        symbol: query.get("symbol").cloned(),
        timeframe: query.get("timeframe").cloned(),
        start: query.get("start").cloned(),
        end: query.get("end").cloned(),
        limit: query.get("limit").cloned(),
        page_token: query.get("page_token").cloned(),
    };
    let symbol = query
        .symbol
        .as_deref()
        .map(|s| s.trim().to_ascii_uppercase())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidParameter, "symbol is required"))?;
    let id = state.universe().id(&symbol).ok_or_else(|| {
        ApiError::new(ErrorCode::UnknownSymbol, format!("unknown symbol {symbol}"))
    })?;
    match query.timeframe.as_deref() {
        None | Some("1Min") | Some("1m") => {}
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("unsupported timeframe {other:?}; supported: 1Min"),
            ));
        }
    }
    let start = parse_time("start", query.start.as_deref())?;
    let end = parse_time("end", query.end.as_deref())?;
    let limit = match query.limit.as_deref() {
        None => 1000,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    "limit must be an integer from 1 to 10000",
                ));
            }
        },
    };
    let page_start = parse_time("page_token", query.page_token.as_deref())?;
    let (bars, next_page_token) =
        bar_page(&state, id, &symbol, start.max(page_start), end, limit).await?;
    Ok(HttpResponse::build(StatusCode::OK).json(json!({
        "symbol": symbol,
        "timeframe": "1Min",
        // Tagged like every other market object on the wire (`"T":"b"`).
        "bars": bars.into_iter().map(crate::market::MarketEvent::Bar).collect::<Vec<_>>(),
        "next_page_token": next_page_token.map(|time| {
            time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        }),
    })))
}
