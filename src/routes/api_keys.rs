//! Who a REST request is from (a bearer JWT, or an API key pair in Alpaca's
//! `APCA-API-KEY-ID`/`APCA-API-SECRET-KEY` headers), and the routes through which users issue,
//! list and revoke their API key pairs: `POST /v1/api-keys`, `GET /v1/api-keys`,
//! `DELETE /v1/api-keys/{key_id}`.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Identity;
use crate::auth::api_keys::ApiKeyError;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

pub const KEY_ID_HEADER: &str = "APCA-API-KEY-ID";
pub const SECRET_HEADER: &str = "APCA-API-SECRET-KEY";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/api-keys", web::post().to(issue))
        .route("/v1/api-keys", web::get().to(list))
        .route("/v1/api-keys/{key_id}", web::delete().to(revoke));
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

pub fn api_key_error(error: ApiKeyError) -> ApiError {
    match error {
        ApiKeyError::Invalid => ApiError::unauthorized(error.to_string()),
        ApiKeyError::NotFound(_) => ApiError::not_found(error.to_string()),
        ApiKeyError::Configured(_) => ApiError::new(ErrorCode::Forbidden, error.to_string()),
        ApiKeyError::TooMany(_) => ApiError::new(ErrorCode::Forbidden, error.to_string()),
        ApiKeyError::Store(cause) => ApiError::internal(&cause),
    }
}

/// The caller: an API key pair when its headers are present, else a bearer JWT.
pub fn identity(request: &HttpRequest, state: &AppState) -> Result<Identity, ApiError> {
    match (
        header(request, KEY_ID_HEADER),
        header(request, SECRET_HEADER),
    ) {
        (Some(key_id), Some(secret)) => {
            let peer = request.peer_addr().map(|address| address.ip());
            state
                .api_keys
                .verify(key_id, secret, peer)
                .map_err(api_key_error)
        }
        (Some(_), None) | (None, Some(_)) => Err(ApiError::unauthorized(format!(
            "send both {KEY_ID_HEADER} and {SECRET_HEADER}"
        ))),
        (None, None) => crate::routes::account::bearer_identity(request, state),
    }
}

/// Issuing a key needs a bearer token: an API key cannot mint more keys.
async fn issue(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let identity = crate::routes::account::bearer_identity(&request, &state)?;
    let issued = state
        .api_keys
        .issue(&identity.user)
        .await
        .map_err(api_key_error)?;
    Ok(crate::routes::credential(HttpResponse::Created(), issued))
}

async fn list(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let identity = identity(&request, &state)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "api_keys": state.api_keys.list(&identity.user)
    })))
}

async fn revoke(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = identity(&request, &state)?;
    state
        .api_keys
        .revoke(&identity.user, &path.into_inner())
        .await
        .map_err(api_key_error)?;
    Ok(HttpResponse::NoContent().finish())
}
