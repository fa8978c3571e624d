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
//! - [`assets`]: the dashboard built into the binary, served when `server.web_root` is absent.

pub mod account;
pub mod alpaca;
pub mod api_keys;
pub mod assets;
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

/// Target of the access log lines (the request logger in `startup`, and the upgrade
/// service's line for an upgrade it refuses before any route, `transport::ws`).
pub const ACCESS_LOG_TARGET: &str = "tickgate::http";

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
    // The chart library: from the web root's npm install when there is one, else the copy
    // built into the binary, else a 404 saying how to install it.
    let chart_module = web_root.join(CHART_MODULE_PATH);
    cfg.route(
        "/vendor/lightweight-charts.mjs",
        web::get().to(move || {
            let path = chart_module.clone();
            async move { serve_vendor_file(&path) }
        }),
    );
    if web_root.is_dir() {
        cfg.service(
            actix_files::Files::new("/", web_root)
                .index_file("index.html")
                .use_etag(true)
                .prefer_utf8(true)
                .path_filter(|path, _| is_public_web_path(path)),
        );
        cfg.default_service(web::to(not_found));
    } else {
        // No web root here (the binary started from another directory): the dashboard that
        // was built into it, behind every route; anything else is the JSON 404.
        cfg.default_service(web::to(assets::serve));
    }
}

/// Keeps actix's own refusals in the API's JSON shape: a route asked with a method it does not
/// take answers `{"code":40510000,...}` (and keeps the `Allow` header) instead of an empty 405.
/// Refusals inside actix-http's request parser (an over-long or non-ASCII request line or
/// header) happen before any application code runs and keep actix's plain answer; see
/// docs/protocol.md.
pub fn json_errors<B: actix_web::body::MessageBody + 'static>()
-> actix_web::middleware::ErrorHandlers<B> {
    actix_web::middleware::ErrorHandlers::new().handler(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        method_not_allowed_json,
    )
}

fn method_not_allowed_json<B: actix_web::body::MessageBody>(
    response: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    // A route that answered 405 itself already wrote the JSON body; actix's own 405s (the
    // static files service's plain text, a resource's empty body) are rewritten.
    let is_json = response
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let (request, original) = response.into_parts();
    let error = ApiError::new(
        crate::error::ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take {}",
            params::echo(request.path()),
            request.method()
        ),
    );
    let mut json = actix_web::ResponseError::error_response(&error);
    if let Some(allow) = original.headers().get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    Ok(ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(request, json).map_into_right_body(),
    ))
}

/// A response carrying a credential (a token, a ticket, a new API secret): JSON that no
/// cache, shared or private, may keep.
pub fn credential(
    mut response: actix_web::HttpResponseBuilder,
    body: impl serde::Serialize,
) -> HttpResponse {
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
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
    let body = match std::fs::read(path) {
        Ok(body) => bytes::Bytes::from(body),
        Err(_) => assets::chart_module()
            .map(bytes::Bytes::from_static)
            .ok_or_else(|| {
                ApiError::not_found(
                    "the chart library is not installed: run scripts/setup (npm ci in web/), then rebuild to embed it",
                )
            })?,
    };
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

/// Ready (200) unless something in `not_ready` holds; each reason is a short sentence in the
/// body's `reasons` list, so a new dependency adds a line here and nothing else changes.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let sources = state.sources.snapshot();
    let hub_running = !state.shutdown.is_cancelled();
    let trading_halted = state.trading.halted();
    let mut not_ready: Vec<String> = Vec::new();
    if !hub_running {
        not_ready.push("the server is shutting down".to_owned());
    }
    // No registered source is fine: the publish API alone can feed the hub.
    if !state.sources.all_serving() {
        not_ready.push("a source is down (see sources)".to_owned());
    }
    if trading_halted {
        not_ready.push(
            "trading is halted: the store refuses writes (see store); it resumes by itself once they succeed"
                .to_owned(),
        );
    }
    // In a cluster the node must also be connected to Redis and caught up with the shared log.
    let cluster = state.cluster.as_ref().map(|node| node.health());
    if let Some(Err(reason)) = &cluster {
        not_ready.push(format!(
            "the cluster is unavailable: {reason} (see cluster)"
        ));
    }
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
    let status = if !not_ready.is_empty() {
        "not_ready"
    } else if degraded.is_empty() && !store_degraded {
        "ready"
    } else {
        "degraded"
    };
    let mut body = json!({
        "status": status,
        "reasons": not_ready,
        "hub": if hub_running { "running" } else { "stopping" },
        "trading": if trading_halted { "halted" } else { "running" },
        "sources": sources,
        "store": store,
    });
    if let (Some(node), Some(health)) = (&state.cluster, cluster) {
        body["cluster"] = match health {
            Ok(()) => json!({"state": "up", "node": node.node_id()}),
            Err(reason) => json!({"state": "down", "node": node.node_id(), "reason": reason}),
        };
    }
    if not_ready.is_empty() {
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
