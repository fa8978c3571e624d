//! Alpaca's REST API on tickgate (`docs/alpaca.md`): the trading routes under `/v2` (orders,
//! account, positions, assets, clock) and the market-data routes under `/v2/stocks`. They
//! authenticate like every REST route (`routes::api_keys::identity`) and reuse tickgate's
//! implementations; only the shapes ([`shapes`], which the trading stream uses too) and the
//! statuses of order errors are Alpaca's.

mod market;
pub mod shapes;
mod trading;

use actix_web::web;

use crate::error::{ApiError, ErrorCode};
use crate::trading::api::OrderError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    trading::configure(cfg);
    market::configure(cfg);
}

/// Alpaca's statuses for order errors: an order it cannot take is 422, not 400.
fn order_error(error: OrderError) -> ApiError {
    match error.code {
        // Alpaca answers an invalid order (unknown symbol, bad field) and a repeated
        // client_order_id ("client_order_id must be unique") with 422 and this number.
        OrderError::INVALID | OrderError::DUPLICATE_CLIENT_ORDER_ID => {
            ApiError::new(ErrorCode::UnprocessableOrder, error.message)
        }
        // The other refusals keep their code and status (403, 404, 422); failures are 500s.
        _ => crate::routes::orders::order_error(error),
    }
}
