//! HTTP routes: public REST (`/v1/snapshot`, `/v1/symbols`, `/v1/bars`), health, metrics, the
//! static dashboard, and the JSON error handlers that keep every failure in the API's shape.

use actix_cors::Cors;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::server::AppState;

/// Registers every route. Transport modules add their own.
pub fn configure(cfg: &mut web::ServiceConfig, state: &AppState) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(state.settings.server.max_body_bytes)
            .error_handler(crate::error::json_error_handler),
    )
    .app_data(web::QueryConfig::default().error_handler(crate::error::query_error_handler))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(metrics))
    // Uptime monitors and load balancers often probe with HEAD, which `web::get()` refuses.
    .route("/healthz", web::head().to(healthz))
    .route("/readyz", web::head().to(readyz))
    .route("/v1/symbols", web::get().to(symbols))
    .route("/v1/snapshot", web::get().to(snapshot))
    .route("/v1/bars", web::get().to(bars))
    .configure(crate::transport::sse::configure)
    .configure(crate::transport::ws::configure)
    .configure(crate::transport::account::configure);
    let max_body_bytes = state.settings.server.max_body_bytes;
    cfg.configure(|cfg| crate::transport::publish::configure(cfg, max_body_bytes));
    let web_root = &state.settings.server.web_root;
    if web_root.is_dir() {
        let chart_module = web_root.join(CHART_MODULE_PATH);
        cfg.route(
            "/vendor/lightweight-charts.mjs",
            web::get().to(move || {
                let path = chart_module.clone();
                async move { serve_vendor_file(&path) }
            }),
        );
        cfg.service(
            actix_files::Files::new("/", web_root)
                .index_file("index.html")
                .use_etag(true)
                .prefer_utf8(true)
                .path_filter(|path, _| is_public_web_path(path)),
        );
    }
    cfg.default_service(web::to(not_found));
}

/// CORS for the public API from the configured origin allowlist.
pub fn cors(state: &AppState) -> Cors {
    let origins = &state.settings.server.allowed_origins;
    // A foreign origin simply gets no CORS headers (the browser then refuses the response);
    // failing the request instead would give a plain-text error outside the JSON shape.
    let mut cors = Cors::default()
        .block_on_origin_mismatch(false)
        .allowed_methods(["GET", "POST", "DELETE", "PATCH", "OPTIONS"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("last-event-id"),
        ])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}

/// The chart library's self-contained ES module inside the dashboard's npm install.
const CHART_MODULE_PATH: &str =
    "node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.mjs";

/// npm's install tree and manifests live under the web root but are not part of the site:
/// only the one vendored file above is served from `node_modules`.
fn is_public_web_path(path: &std::path::Path) -> bool {
    !path.components().any(|c| {
        matches!(
            c.as_os_str().to_str(),
            Some("node_modules" | "package.json" | "package-lock.json" | "test")
        )
    })
}

fn serve_vendor_file(path: &std::path::Path) -> Result<HttpResponse, ApiError> {
    let body = std::fs::read(path).map_err(|_| {
        ApiError::not_found(
            "the chart library is not installed: run scripts/setup (npm ci in web/)",
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let sources = state.sources.snapshot();
    let hub_running = !state.shutdown.is_cancelled();
    // No registered source is fine: the publish API alone can feed the hub.
    // In a cluster the node must also be connected to Redis and caught up with the shared log.
    let cluster = state.cluster.as_ref().map(|node| node.health());
    let cluster_ok = cluster.as_ref().is_none_or(Result::is_ok);
    let ready = hub_running && state.sources.all_serving() && cluster_ok;
    let degraded: Vec<&String> = sources
        .iter()
        .filter(|(_, h)| matches!(h, crate::ingest::SourceHealth::Degraded { .. }))
        .map(|(n, _)| n)
        .collect();
    let store = state
        .store
        .as_ref()
        .map_or(crate::store::StoreStatus::Disabled, |store| store.status());
    let store_degraded = matches!(store, crate::store::StoreStatus::Degraded { .. });
    let status = if !ready {
        "not_ready"
    } else if degraded.is_empty() && !store_degraded {
        "ready"
    } else {
        "degraded"
    };
    let body = json!({
        "status": status,
        "hub": if hub_running { "running" } else { "stopping" },
        "sources": sources,
        "store": store,
    });
    let mut body = body;
    if let (Some(node), Some(health)) = (&state.cluster, cluster) {
        body["cluster"] = match health {
            Ok(()) => json!({"state": "up", "node": node.node_id()}),
            Err(reason) => json!({"state": "down", "node": node.node_id(), "reason": reason}),
        };
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
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

async fn snapshot(
    query: crate::transport::params::RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = crate::transport::params::query_params(query.into_inner(), &["symbols"])?;
    let universe = state.universe();
    let filter = crate::transport::sse::parse_symbols(
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
    for (index, kind) in [EventKind::Trade, EventKind::Quote, EventKind::Bar]
        .into_iter()
        .enumerate()
    {
        if index == 1 {
            body.extend_from_slice(b",\"quotes\":");
        } else if index == 2 {
            body.extend_from_slice(b",\"bars\":");
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

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BarsQuery {
    symbol: Option<String>,
    timeframe: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    /// The `next_page_token` of the previous page: the start time of its first missing bar.
    page_token: Option<String>,
}

fn parse_time(name: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
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

async fn bars(
    query: web::Query<BarsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
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
    let start = start.max(page_start);
    // One bar more than asked says whether the page was cut short; its start time is where
    // the next page begins, so a client that follows the token misses nothing.
    let mut bars = state.hub.bars(id, start, end, limit + 1);
    if let Some(store) = &state.store {
        let stored = store
            .history
            .bars(crate::store::BarQuery {
                symbol: symbol.clone(),
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
    let next_page_token = if bars.len() > limit {
        bars.pop().map(|next| {
            next.time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        })
    } else {
        None
    };
    Ok(HttpResponse::build(StatusCode::OK).json(json!({
        "symbol": symbol,
        "timeframe": "1Min",
        "bars": bars,
        "next_page_token": next_page_token,
    })))
}
