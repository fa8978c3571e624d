//! Client transports: Server-Sent Events for public feeds and the authenticated WebSocket
//! (`ws` glue around the socket-free `ws_session`). Only this module and `routes` know about
//! actix (`ws_session` does not); the REST routes live in `routes`.

pub mod sse;
pub mod ws;
pub mod ws_session;
pub mod ws_wire;

/// Registers the streaming endpoints (handed to `routes::configure` by `startup`).
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    cfg.configure(sse::configure).configure(ws::configure);
}
