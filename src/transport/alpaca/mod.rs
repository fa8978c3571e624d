//! The Alpaca dialect of the streams: what Alpaca clients (alpaca-py and the like) need, on
//! the same hub, exchange and accounts as tickgate's own API (see `docs/alpaca.md`).
//!
//! - [`msgpack`]: MessagePack control messages and client messages of the market-data stream
//!   (the market events themselves are encoded by the hub, `hub::msgpack`).
//! - [`stream`]: the market-data and trading dialects of the WebSocket session.

pub mod msgpack;
pub mod stream;
