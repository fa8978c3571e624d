//! Client transports: Server-Sent Events for public feeds, the authenticated WebSocket
//! (`ws` glue around the socket-free `ws_session`), and the auth/account HTTP routes. Only
//! this module and `routes` know about actix (`ws_session` does not).

pub mod account;
pub mod alpaca;
pub mod params;
pub mod publish;
pub mod sse;
pub mod ws;
pub mod ws_session;
pub mod ws_wire;
