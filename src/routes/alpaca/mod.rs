//! Alpaca's REST API on tickgate (`docs/alpaca.md`): the trading routes under `/v2` (orders,
//! account, positions, assets, clock) and the market-data routes under `/v2/stocks`. They
//! authenticate like every REST route (`routes::api_keys::identity`) and reuse tickgate's
//! implementations; only the shapes (`transport::alpaca::shapes`) and the statuses of order
//! errors are Alpaca's.

mod market;
mod trading;

use actix_web::http::StatusCode;
use actix_web::web;

use crate::error::ApiError;
use crate::trading::api::OrderError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    trading::configure(cfg);
    market::configure(cfg);
}

/// Alpaca's statuses for order errors: an order it cannot take is 422, not 400.
fn order_error(error: OrderError) -> ApiError {
    let status = match error.code {
        OrderError::INVALID | OrderError::NOT_CANCELABLE => StatusCode::UNPROCESSABLE_ENTITY,
        OrderError::INSUFFICIENT => StatusCode::FORBIDDEN,
        OrderError::NOT_FOUND => StatusCode::NOT_FOUND,
        _ => return ApiError::internal(&error),
    };
    ApiError::new(status, error.code, error.message)
}
