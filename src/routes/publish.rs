//! `POST /v1/publish`: external producers push trades, quotes, bars, news and alerts into the
//! hub with the admin token. Each item is validated like any other source's; the reply counts
//! what was accepted and says why each refused item was refused.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Serialize;

use crate::cluster::ClusterPublishError;
use crate::error::{ApiError, ErrorCode};
use crate::hub::PublishError;
use crate::market::{InvalidEvent, MarketEvent};
use crate::routes::params::{Bearer, bearer};
use crate::state::AppState;

pub const SOURCE_NAME: &str = "publish_api";

/// Status codes only the server sends: clients act on them (reconnect, expect a reset), so a
/// producer must not be able to send them to everyone. The trading ones also reach every
/// session that trades (see `hub::trading_status`).
const RESERVED_STATUS_CODES: &[&str] = &[
    "shutdown",
    "reset",
    "cluster_down",
    "cluster_ok",
    "trading_unavailable",
    "trading_available",
    "trading_halted",
    "trading_resumed",
];

/// How far ahead of the server clock a producer's trade, quote or bar may be dated. The hub
/// refuses ticks older than a symbol's newest, so one tick from a bad clock or a mistyped
/// year would otherwise lock that symbol for every source until a restart.
const MAX_FUTURE_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The largest body `POST /v1/publish` reads, stored on the resource.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.service(
        web::resource("/v1/publish")
            .app_data(BodyLimit(max_body_bytes))
            .route(web::post().to(publish))
            .default_service(web::to(method_not_allowed)),
    );
}

/// Without this, actix answers another method with an empty 405, outside the API's JSON shape.
async fn method_not_allowed() -> HttpResponse {
    let error = ApiError::new(ErrorCode::MethodNotAllowed, "/v1/publish accepts POST only");
    let mut response = actix_web::ResponseError::error_response(&error);
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("POST"),
    );
    response
}

#[derive(Debug, Serialize)]
struct Rejected {
    /// Position of the item in the request (0 for a single object).
    index: usize,
    code: ErrorCode,
    /// Stable short label, the same as in `tickgate_ingest_rejected_total`.
    reason: &'static str,
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
            ErrorCode::Forbidden,
            "the publish API is disabled: set publish.admin_token",
        ));
    }
    let Bearer::Token(given) = bearer(request) else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <admin token>",
        ));
    };
    if constant_time_eq(given.as_bytes(), expected) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {limit} bytes"),
    )
}

/// Reads the body up to `limit` bytes. The payload is read by hand (not with the `Bytes`
/// extractor) so an oversized body gets the API's JSON 413 rather than actix's plain text, and
/// the caller is authorized before a single body byte is read.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorCode::InvalidBody, format!("could not read body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A trade, quote or bar without `t` is dated when it is received. Times must not go
/// backwards per symbol, whichever source sent the previous tick, so a producer sharing
/// symbols with the simulator (the default configuration) cannot pick a time by hand that is
/// safely after the simulator's latest; the server's clock is.
fn stamp_missing_time(item: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = item
        && matches!(map.get("T").and_then(|t| t.as_str()), Some("t" | "q" | "b"))
        && !map.contains_key("t")
    {
        map.insert("t".to_owned(), serde_json::json!(chrono::Utc::now()));
    }
}

/// The per-item code and metric label for a refusal by the hub.
fn refusal(error: &PublishError) -> (ErrorCode, &'static str) {
    match error {
        PublishError::Invalid(invalid) => (
            match invalid {
                InvalidEvent::UnknownSymbol(_) => ErrorCode::UnknownSymbol,
                InvalidEvent::TooLong { .. } => ErrorCode::FieldTooLong,
                _ => ErrorCode::Unprocessable,
            },
            invalid.reason_label(),
        ),
        PublishError::Encode(_) => (ErrorCode::Internal, "encode"),
        PublishError::ShuttingDown => (ErrorCode::ShuttingDown, "shutting_down"),
        PublishError::Cluster(cluster) => (
            match cluster {
                ClusterPublishError::TimeWentBackwards => ErrorCode::Unprocessable,
                ClusterPublishError::Unavailable(_) | ClusterPublishError::Backlog => {
                    ErrorCode::NotReady
                }
                ClusterPublishError::Fenced | ClusterPublishError::Encode(_) => ErrorCode::Internal,
            },
            cluster.reason_label(),
        ),
    }
}

async fn publish(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Err(error) = require_admin(&request, &state) {
        let mut response = actix_web::ResponseError::error_response(&error);
        if error.code == ErrorCode::Unauthorized {
            // RFC 6750: tell the client which scheme to use.
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer realm=\"publish\""),
            );
        }
        return Ok(response);
    }
    // Once shutdown began the hub is (or is about to be) sealed at the head every stream was
    // told to resume from; an item accepted now would reach no one.
    if state.shutdown.is_cancelled() || state.hub.is_shut_down() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the server is shutting down; publish again once it is back",
        ));
    }
    let limit = request
        .app_data::<BodyLimit>()
        .map_or(state.settings.server.max_body_bytes, |l| l.0);
    let body = read_body(&request, payload, limit).await?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("body is not valid JSON: {e}"),
        )
    })?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        object @ serde_json::Value::Object(_) => vec![object],
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "body must be a JSON object or an array of objects",
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the array holds no items",
        ));
    }
    let source = state.publisher.context(SOURCE_NAME);
    let mut reply = PublishReply {
        accepted: 0,
        rejected: Vec::new(),
    };
    let source = &source;
    let mut publishing = Vec::new();
    for (index, mut item) in items.into_iter().enumerate() {
        stamp_missing_time(&mut item);
        // Producer fields (the trade id `i`, venues, news ids) pass through untouched: the
        // item is deserialized as is and only checked, never rewritten.
        let event: MarketEvent = match serde_json::from_value(item) {
            Ok(event) => event,
            Err(error) => {
                state.metrics.ingest_rejected(SOURCE_NAME, "malformed");
                reply.rejected.push(Rejected {
                    index,
                    code: ErrorCode::InvalidBody,
                    reason: "malformed",
                    message: format!("malformed item: {error}"),
                });
                continue;
            }
        };
        // `shutdown` and the cluster's statuses are the server's own words on a stream:
        // clients act on them, so a producer must not be able to send them to everyone.
        if let MarketEvent::Status(status) = &event
            && RESERVED_STATUS_CODES.contains(&status.code.as_str())
        {
            state
                .metrics
                .ingest_rejected(SOURCE_NAME, "reserved_status");
            reply.rejected.push(Rejected {
                index,
                code: ErrorCode::Unprocessable,
                reason: "reserved_status",
                message: format!("sc {:?} is reserved for the server", status.code),
            });
            continue;
        }
        if matches!(
            event,
            MarketEvent::Trade(_) | MarketEvent::Quote(_) | MarketEvent::Bar(_)
        ) && event.time() > chrono::Utc::now() + MAX_FUTURE_SKEW
        {
            state.metrics.ingest_rejected(SOURCE_NAME, "time_in_future");
            reply.rejected.push(Rejected {
                index,
                code: ErrorCode::Unprocessable,
                reason: "time_in_future",
                message: format!(
                    "t {} is more than {} minutes ahead of the server clock",
                    event.time().to_rfc3339(),
                    MAX_FUTURE_SKEW.num_minutes()
                ),
            });
            continue;
        }
        // The context counts the item as accepted or refused, like any source's. In a
        // cluster it waits for the publish script's answer; the futures are polled in order,
        // so items are published in request order and share round trips to Redis.
        publishing.push(async move { (index, source.publish_confirmed(event).await) });
    }
    for (index, outcome) in futures_util::future::join_all(publishing).await {
        match outcome {
            Ok(()) => reply.accepted += 1,
            Err(error) => {
                let (code, label) = refusal(&error);
                reply.rejected.push(Rejected {
                    index,
                    code,
                    reason: label,
                    message: error.to_string(),
                });
            }
        }
    }
    reply.rejected.sort_by_key(|rejected| rejected.index);
    let status = if reply.accepted == 0
        && reply
            .rejected
            .iter()
            .any(|r| r.code == ErrorCode::ShuttingDown)
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else if reply.accepted == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(reply))
}
