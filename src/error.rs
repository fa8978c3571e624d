//! The one API error type: every HTTP failure maps to a status and a stable numeric code, in
//! the JSON body `{"code":...,"message":...}` (PROTOCOL.md §5). 5xx bodies say little; the log
//! says everything once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Stable machine codes (Alpaca style: HTTP status followed by a detail number).
pub mod codes {
    pub const BAD_REQUEST: u32 = 40010000;
    pub const INVALID_ORDER: u32 = 40010001;
    pub const UNKNOWN_SYMBOL: u32 = 40010002;
    pub const TOO_MANY_SYMBOLS: u32 = 40010003;
    pub const UNKNOWN_TYPE: u32 = 40010004;
    pub const INVALID_PARAMETER: u32 = 40010005;
    pub const INVALID_BODY: u32 = 40010006;
    pub const UNAUTHORIZED: u32 = 40110000;
    pub const FORBIDDEN: u32 = 40310001;
    pub const INSUFFICIENT: u32 = 40310000;
    pub const NOT_FOUND: u32 = 40410000;
    pub const METHOD_NOT_ALLOWED: u32 = 40510000;
    pub const PAYLOAD_TOO_LARGE: u32 = 41310000;
    pub const NOT_CANCELABLE: u32 = 42210000;
    pub const UNPROCESSABLE: u32 = 42210001;
    pub const RATE_LIMITED: u32 = 42910000;
    pub const INTERNAL: u32 = 50010000;
    pub const NOT_READY: u32 = 50310000;
}

#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: u32, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, message)
    }

    /// An internal failure: the cause is logged here, the client gets a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "internal error",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(self)
    }
}

/// Turns actix's own extractor errors (bad JSON, bad query, body too large) into [`ApiError`]s.
pub fn json_error_handler(
    error: actix_web::error::JsonPayloadError,
    _request: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    let api = match &error {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::INVALID_BODY,
            "expected Content-Type: application/json",
        ),
        other => ApiError::bad_request(codes::INVALID_BODY, format!("invalid JSON body: {other}")),
    };
    api.into()
}

pub fn query_error_handler(
    error: actix_web::error::QueryPayloadError,
    _request: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::bad_request(codes::INVALID_PARAMETER, format!("invalid query: {error}")).into()
}
