//! Error codes and the HTTP error type. [`ErrorCode`] is the one table of every failure a client
//! can be told about, over HTTP (`{"code":...,"message":...}`, docs/protocol.md "Error codes")
//! and in WebSocket `error` frames (docs/websocket.md "Errors"): each code has one stable
//! number, one HTTP status and one name, and the numbers on the wire never change. 5xx bodies
//! say little; the log says everything once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Declares [`ErrorCode`]: one row per failure, giving its variant, its stable number (what
/// clients see in `code`), the HTTP status it is answered with, and a snake_case name for logs
/// and documentation. Every accessor is an exhaustive `match` generated from the one table.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $number:literal, $status:ident, $name:literal;)*) => {
        /// Every failure a client can be told about, over HTTP and over the WebSocket.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable number clients see in `code`.
            pub const fn number(self) -> u32 {
                match self {
                    $(ErrorCode::$variant => $number,)*
                }
            }

            /// The HTTP status a response with this code carries. Stream-level WebSocket codes
            /// travel in frames, never as a status; theirs is what an HTTP route failing the
            /// same way would answer.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }

            /// A stable snake_case name, for logs and the documentation.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    // HTTP and order-level codes (Alpaca style: the HTTP status followed by a detail number).
    BadRequest = 40010000, BAD_REQUEST, "bad_request";
    /// An order, cancel or replace refused by validation (HTTP and WebSocket).
    InvalidOrder = 40010001, BAD_REQUEST, "invalid_order";
    /// Alpaca's status for an invalid order (its `/v2` routes): the number of `InvalidOrder`,
    /// answered with 422 as Alpaca does.
    UnprocessableOrder = 40010001, UNPROCESSABLE_ENTITY, "unprocessable_order";
    UnknownSymbol = 40010002, BAD_REQUEST, "unknown_symbol";
    TooManySymbols = 40010003, BAD_REQUEST, "too_many_symbols";
    UnknownType = 40010004, BAD_REQUEST, "unknown_type";
    InvalidParameter = 40010005, BAD_REQUEST, "invalid_parameter";
    /// A query parameter Alpaca's trading routes refuse, or a bar timeframe tickgate does not
    /// have: the number of `InvalidParameter`, answered with 422 as Alpaca does.
    UnprocessableParameter = 40010005, UNPROCESSABLE_ENTITY, "unprocessable_parameter";
    InvalidBody = 40010006, BAD_REQUEST, "invalid_body";
    /// A body sent with another `Content-Type` than JSON. It shares its number with
    /// `InvalidBody` (clients have always seen 40010006 here) but answers 415.
    UnsupportedContentType = 40010006, UNSUPPORTED_MEDIA_TYPE, "unsupported_content_type";
    Unauthorized = 40110000, UNAUTHORIZED, "unauthorized";
    /// Insufficient buying power or quantity (HTTP and WebSocket).
    Insufficient = 40310000, FORBIDDEN, "insufficient";
    Forbidden = 40310001, FORBIDDEN, "forbidden";
    /// A route, or an order, that does not exist (HTTP and WebSocket).
    NotFound = 40410000, NOT_FOUND, "not_found";
    MethodNotAllowed = 40510000, METHOD_NOT_ALLOWED, "method_not_allowed";
    PayloadTooLarge = 41310000, PAYLOAD_TOO_LARGE, "payload_too_large";
    /// An order that can no longer be canceled or replaced (HTTP and WebSocket).
    NotCancelable = 42210000, UNPROCESSABLE_ENTITY, "not_cancelable";
    Unprocessable = 42210001, UNPROCESSABLE_ENTITY, "unprocessable";
    /// An order (or replace) naming a `client_order_id` the user already gave another order;
    /// the WebSocket error carries that order (HTTP and WebSocket).
    DuplicateClientOrderId = 42210002, UNPROCESSABLE_ENTITY, "client_order_id_not_unique";
    /// A published item with a field over its length limit (issue 13; numbered from
    /// 42210130 to stay clear of other 4221xxxx additions).
    FieldTooLong = 42210130, UNPROCESSABLE_ENTITY, "field_too_long";
    RateLimited = 42910000, TOO_MANY_REQUESTS, "rate_limited";
    Internal = 50010000, INTERNAL_SERVER_ERROR, "internal";
    NotReady = 50310000, SERVICE_UNAVAILABLE, "not_ready";
    /// The server is stopping: the publish API refuses items (retry once it is back).
    ShuttingDown = 50310001, SERVICE_UNAVAILABLE, "shutting_down";
    /// Cluster trading: no exchange answered an order, cancel, replace or read in time (it is
    /// failing over to another node). Retry; an order retried with the same
    /// `client_order_id` never executes twice (HTTP and WebSocket).
    ExchangeUnavailable = 50310002, SERVICE_UNAVAILABLE, "exchange_unavailable";
    // Stream-level WebSocket codes, in `{"T":"error","code":N,"msg":...}` frames.
    InvalidSyntax = 400, BAD_REQUEST, "invalid_syntax";
    NotAuthenticated = 401, UNAUTHORIZED, "not_authenticated";
    AuthFailed = 402, UNAUTHORIZED, "auth_failed";
    AlreadyAuthenticated = 403, CONFLICT, "already_authenticated";
    AuthTimeout = 404, REQUEST_TIMEOUT, "auth_timeout";
    SymbolLimit = 405, BAD_REQUEST, "symbol_limit";
    ConnectionLimit = 406, TOO_MANY_REQUESTS, "connection_limit";
    SlowClient = 407, TOO_MANY_REQUESTS, "slow_client";
    StreamRateLimited = 408, TOO_MANY_REQUESTS, "stream_rate_limited";
    /// The session's token expired before a fresh one arrived; the close code is 4001.
    TokenExpired = 409, UNAUTHORIZED, "token_expired";
    // Hardening codes (issue 13), numbered from 430 to stay clear of Alpaca's 409-412.
    /// Closed: messages kept coming far over the rate limit (`ws.max_dropped_actions`).
    RateLimitAbuse = 430, TOO_MANY_REQUESTS, "rate_limit_abuse";
    /// Closed: a fragmented message was not finished within `ws.fragment_timeout`.
    FragmentTimeout = 431, REQUEST_TIMEOUT, "fragment_timeout";
    /// An internal failure on the stream; also what the exchange answers when it is not
    /// running (an order-level code on both transports, mapped to `Internal` over HTTP).
    StreamInternal = 500, INTERNAL_SERVER_ERROR, "stream_internal";
}

/// On the wire a code is its number.
impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.number())
    }
}

impl ErrorCode {
    /// The code with this [`ErrorCode::name`] (names are unique; numbers are not).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.name() == name)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.name())
    }
}

/// An HTTP failure: the status comes from the code, the body is `{"code":N,"message":...}`.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// An internal failure: the cause is logged here, the client gets a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status()).json(self)
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
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            ErrorCode::UnsupportedContentType,
            "expected Content-Type: application/json",
        ),
        other => ApiError::new(
            ErrorCode::InvalidBody,
            format!("invalid JSON body: {other}"),
        ),
    };
    api.into()
}

pub fn query_error_handler(
    error: actix_web::error::QueryPayloadError,
    _request: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!("invalid query: {error}"),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The rows between the `error-codes` markers of docs/protocol.md: (code, status, name).
    fn documented_codes() -> Vec<(u32, u16, String)> {
        let page = include_str!("../docs/protocol.md");
        let begin = page
            .find("<!-- error-codes:begin -->")
            .expect("docs/protocol.md has the error-codes:begin marker");
        let end = page
            .find("<!-- error-codes:end -->")
            .expect("docs/protocol.md has the error-codes:end marker");
        page[begin..end]
            .lines()
            .filter(|line| line.starts_with("| ") && !line.starts_with("| code"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (
                    cells[1].parse().expect("a numeric code"),
                    cells[2].parse().expect("a numeric status"),
                    cells[3].trim_matches('`').to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_documented_error_code_table_is_the_enum_row_for_row() {
        let from_enum: Vec<(u32, u16, String)> = ErrorCode::ALL
            .iter()
            .map(|code| {
                (
                    code.number(),
                    code.status().as_u16(),
                    code.name().to_owned(),
                )
            })
            .collect();
        assert_eq!(documented_codes(), from_enum);
    }

    #[test]
    fn the_websocket_stream_code_table_lists_exactly_the_three_digit_codes() {
        let page = include_str!("../docs/websocket.md");
        let section = &page[page.find("## Errors").expect("an Errors section")..];
        let documented: BTreeSet<u32> = section
            .lines()
            .take_while(|line| !line.starts_with("Order-level codes"))
            .filter_map(|line| line.strip_prefix("| "))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect();
        let from_enum: BTreeSet<u32> = ErrorCode::ALL
            .iter()
            .map(|code| code.number())
            .filter(|number| *number < 1000)
            .collect();
        assert_eq!(documented, from_enum);
    }

    #[test]
    fn numbers_and_names_are_unique_except_the_documented_aliases() {
        // The same number answered with another status: a body of the wrong type, and the
        // statuses Alpaca's routes use for invalid orders and parameters.
        let aliases = [
            (ErrorCode::UnsupportedContentType, ErrorCode::InvalidBody),
            (ErrorCode::UnprocessableOrder, ErrorCode::InvalidOrder),
            (
                ErrorCode::UnprocessableParameter,
                ErrorCode::InvalidParameter,
            ),
        ];
        let mut numbers = BTreeSet::new();
        let mut names = BTreeSet::new();
        for code in ErrorCode::ALL {
            assert!(names.insert(code.name()), "{code} named twice");
            if !aliases.iter().any(|(alias, _)| alias == code) {
                assert!(numbers.insert(code.number()), "{code} numbered twice");
            }
        }
        for (alias, original) in aliases {
            assert_eq!(alias.number(), original.number());
            assert_ne!(alias.status(), original.status());
        }
    }

    #[test]
    fn an_api_error_is_its_codes_status_and_a_code_message_body() {
        let error = ApiError::new(ErrorCode::NotReady, "later");
        assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            serde_json::to_string(&error).expect("serializable"),
            r#"{"code":50310000,"message":"later"}"#
        );
    }
}
