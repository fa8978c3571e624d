//! `POST /v1/publish`: external producers push trades, quotes, bars, news and alerts into the
//! hub with the admin token. Each item is validated like any other source's; the reply counts
//! what was accepted and says why each refused item was refused.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::error::{ApiError, codes};
use crate::hub::{EventSink, PublishError};
use crate::market::MarketEvent;
use crate::server::AppState;

pub const SOURCE_NAME: &str = "publish_api";

pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.service(
        web::resource("/v1/publish")
            .app_data(web::PayloadConfig::new(max_body_bytes))
            .route(web::post().to(publish)),
    );
}

#[derive(Debug, Serialize)]
struct Rejected {
    index: usize,
    code: u32,
    message: String,
}

#[derive(Debug, Serialize)]
struct PublishReply {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// Compares without an early exit, so timing does not reveal how much of a token matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <admin token>`.
pub fn require_admin(request: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let expected = state.settings.publish.admin_token.as_bytes();
    if expected.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            codes::FORBIDDEN,
            "the publish API is disabled: set publish.admin_token",
        ));
    }
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <admin token>"))?;
    if constant_time_eq(given.trim().as_bytes(), expected) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

async fn publish(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&request, &state)?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(codes::INVALID_BODY, format!("body is not valid JSON: {e}"))
    })?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        object @ serde_json::Value::Object(_) => vec![object],
        _ => {
            return Err(ApiError::bad_request(
                codes::INVALID_BODY,
                "body must be a JSON object or an array of objects",
            ));
        }
    };
    let mut reply = PublishReply {
        accepted: 0,
        rejected: Vec::new(),
    };
    for (index, item) in items.into_iter().enumerate() {
        let event: MarketEvent = match serde_json::from_value(item) {
            Ok(event) => event,
            Err(error) => {
                state.metrics.ingest_rejected(SOURCE_NAME, "malformed");
                reply.rejected.push(Rejected {
                    index,
                    code: codes::INVALID_BODY,
                    message: format!("malformed item: {error}"),
                });
                continue;
            }
        };
        match state.hub.publish(event) {
            Ok(_) => reply.accepted += 1,
            Err(error) => {
                let (code, label) = match &error {
                    PublishError::Invalid(invalid) => (
                        match invalid {
                            crate::market::InvalidEvent::UnknownSymbol(_) => codes::UNKNOWN_SYMBOL,
                            _ => codes::UNPROCESSABLE,
                        },
                        invalid.reason_label(),
                    ),
                    PublishError::Encode(_) => (codes::INTERNAL, "encode"),
                };
                state.metrics.ingest_rejected(SOURCE_NAME, label);
                reply.rejected.push(Rejected {
                    index,
                    code,
                    message: error.to_string(),
                });
            }
        }
    }
    let status = if reply.accepted == 0 && !reply.rejected.is_empty() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(reply))
}
