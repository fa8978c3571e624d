//! The Alpaca dialect: what Alpaca clients (alpaca-py and the like) need from tickgate, on
//! the same hub, exchange and accounts as tickgate's own API (see `docs/alpaca.md`).
//!
//! - [`msgpack`]: the MessagePack encoding of the market-data stream.
//! - [`shapes`]: Alpaca's JSON shapes of orders, trade updates, accounts, positions, assets
//!   and the clock, built from tickgate's own.
//! - [`stream`]: the market-data and trading dialects of the WebSocket session.

pub mod msgpack;
pub mod shapes;
pub mod stream;
