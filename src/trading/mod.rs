//! The simulated exchange: order validation, per-symbol matching against a synthetic Level 2
//! book, accounts and positions. No actix, no sockets: transports reach it through
//! [`api::TradingApi`].

pub mod api;
