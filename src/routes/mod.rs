//! HTTP routes: health, readiness, metrics, CORS, the static dashboard and the JSON error
//! handlers that keep every failure in the API's shape; the REST endpoints live in the
//! submodules. Routes sit above `state` and the domain and import no transport.
//!
//! - [`market`]: public REST (`/v1/symbols`, `/v1/snapshot`, `/v1/bars`).
//! - [`account`]: token, WebSocket ticket, account, positions and orders.
//! - [`publish`]: `POST /v1/publish` for external producers (admin token).
//! - [`params`]: strict query parsing shared by routes and transports.
//! - [`orders`]: REST order entry (`/v1/orders…`), one implementation for tickgate's routes,
//!   Alpaca's and the WebSocket's order parsing.
//! - [`api_keys`]: who a request is from (bearer token or API key pair) and `/v1/api-keys`.
//! - [`alpaca`]: Alpaca's REST API (`/v2/…`, docs/alpaca.md) and its JSON shapes.

pub mod account;
pub mod alpaca;
pub mod api_keys;
pub mod market;
pub mod orders;
pub mod params;
pub mod publish;

use actix_cors::Cors;
use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// Registers every route. `transports` registers the streaming endpoints (SSE, WebSocket;
/// `startup` passes `transport::configure`), so this module imports no transport and the
/// static files, registered last, never shadow them.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    state: &AppState,
    transports: fn(&mut web::ServiceConfig),
) {
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
    .configure(market::configure)
    .configure(transports)
    .configure(account::configure)
    .configure(orders::configure)
    .configure(api_keys::configure)
    .configure(alpaca::configure);
    let max_body_bytes = state.settings.server.max_body_bytes;
    cfg.configure(|cfg| publish::configure(cfg, max_body_bytes));
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
            header::HeaderName::from_static("apca-api-key-id"),
            header::HeaderName::from_static("apca-api-secret-key"),
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
    let mut body = json!({
        "status": status,
        "hub": if hub_running { "running" } else { "stopping" },
        "sources": sources,
        "store": store,
    });
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
