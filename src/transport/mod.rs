//! Client transports: Server-Sent Events for public feeds, the authenticated WebSocket
//! (`ws`: actix glue and `ws::wire` around the socket-free `ws::session`), and the
//! auth/account HTTP routes. Only this module and `routes` know about actix (`ws::session`
//! does not).

pub mod account;
pub mod params;
pub mod publish;
pub mod sse;
pub mod ws;
