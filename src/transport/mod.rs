//! Client transports: Server-Sent Events for public feeds and the authenticated WebSocket
//! (`ws`: actix glue and `ws::wire` around the socket-free `ws::session`), whose connections
//! may speak an Alpaca dialect (`alpaca`: Alpaca's market-data and trading streams). Only this
//! module and `routes` know about actix (`ws::session` does not); the REST routes live in
//! `routes`.

pub mod alpaca;
pub mod sse;
mod sse_throttled;
pub mod ws;

/// Registers the streaming endpoints (handed to `routes::configure` by `startup`).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.configure(sse::configure).configure(ws::configure);
}
