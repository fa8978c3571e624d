//! HTTP routes for authentication and the account (docs/websocket.md, "Getting a token" and
//! "HTTP companions"): `POST /v1/auth/token` (built-in issuer), `POST /v1/auth/refresh` (a
//! fresh token for the holder of a valid one), `POST /v1/auth/ticket` (single-use WebSocket
//! ticket), and, with a bearer token or an API key pair, `GET /v1/account`,
//! `GET /v1/positions`, `GET /v1/orders?status=` and
//! `GET /v1/orders/by-client-id/{client_order_id}`.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::auth::{AuthError, Identity};
use crate::error::{ApiError, ErrorCode};
use crate::routes::orders::order_error;
use crate::routes::params::{Bearer, RawQuery, bearer, query_params};
use crate::state::AppState;
use crate::trading::api::{OrderQuery, TradingApi};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/auth/token", web::post().to(token))
        .route("/v1/auth/refresh", web::post().to(refresh))
        .route("/v1/auth/ticket", web::post().to(ticket))
        .route("/v1/account", web::get().to(account))
        .route("/v1/positions", web::get().to(positions))
        .route("/v1/orders", web::get().to(orders))
        .route(
            "/v1/orders/by-client-id/{client_order_id}",
            web::get().to(order_by_client_id),
        );
}

/// The simulated exchange.
fn trading(state: &AppState) -> Result<Arc<dyn TradingApi>, ApiError> {
    Ok(Arc::clone(&state.trading))
}

fn auth_error(error: AuthError) -> ApiError {
    match error {
        AuthError::IssuerDisabled => ApiError::new(ErrorCode::Forbidden, error.to_string()),
        AuthError::TooManyTickets | AuthError::TooManyLogins => {
            ApiError::new(ErrorCode::RateLimited, error.to_string())
        }
        AuthError::Internal => ApiError::internal(&"authentication failed internally"),
        other => ApiError::unauthorized(other.to_string()),
    }
}

/// Verifies `Authorization: Bearer <jwt>`.
pub fn bearer_identity(request: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    let Bearer::Token(token) = bearer(request) else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <token>",
        ));
    };
    state.auth.verify_token(token).map_err(auth_error)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    username: String,
    password: String,
}

async fn token(
    request: HttpRequest,
    body: web::Json<TokenRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(peer) = request.peer_addr() {
        state.auth.check_login_rate(peer.ip()).map_err(auth_error)?;
    }
    let TokenRequest { username, password } = body.into_inner();
    let auth = Arc::clone(&state.auth);
    // argon2 takes tens of milliseconds of CPU: keep it off the connection threads.
    let issued = web::block(move || auth.issue_token(&username, &password))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(auth_error)?;
    Ok(crate::routes::credential(HttpResponse::Ok(), issued))
}

async fn refresh(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = bearer_identity(&request, &state)?;
    let issued = state.auth.refresh_token(&identity).map_err(auth_error)?;
    Ok(crate::routes::credential(HttpResponse::Ok(), issued))
}

async fn order_by_client_id(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = crate::routes::api_keys::identity(&request, &state)?;
    let client_order_id = path.into_inner();
    let order = trading(&state)?
        .order_by_client_id(&identity.user, &client_order_id)
        .await
        .map_err(order_error)?;
    Ok(HttpResponse::Ok().json(order))
}

async fn ticket(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = bearer_identity(&request, &state)?;
    let issued = state.auth.issue_ticket(&identity).map_err(auth_error)?;
    Ok(crate::routes::credential(HttpResponse::Ok(), issued))
}

async fn account(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = crate::routes::api_keys::identity(&request, &state)?;
    let portfolio = trading(&state)?
        .portfolio(&identity.user)
        .await
        .map_err(order_error)?;
    let mut body = serde_json::to_value(&portfolio).map_err(|e| ApiError::internal(&e))?;
    if let Some(object) = body.as_object_mut() {
        object.remove("positions");
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn positions(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = crate::routes::api_keys::identity(&request, &state)?;
    let portfolio = trading(&state)?
        .portfolio(&identity.user)
        .await
        .map_err(order_error)?;
    Ok(HttpResponse::Ok().json(portfolio.positions))
}

async fn orders(
    request: HttpRequest,
    query: RawQuery,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = crate::routes::api_keys::identity(&request, &state)?;
    let query = query_params(query.into_inner(), &["status"])?;
    let which = match query.get("status").map(String::as_str) {
        None | Some("open") => OrderQuery::Open,
        Some("closed") => OrderQuery::Closed,
        Some("all") => OrderQuery::All,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("status must be open, closed or all, not {other:?}"),
            ));
        }
    };
    let orders = trading(&state)?
        .orders(&identity.user, which)
        .await
        .map_err(order_error)?;
    Ok(HttpResponse::Ok().json(orders))
}
