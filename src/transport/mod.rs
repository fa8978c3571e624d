//! Client transports: Server-Sent Events for public feeds (and, later, the authenticated
//! WebSocket). Only this module and `routes` know about actix.

pub mod account;
pub mod publish;
pub mod sse;
pub mod ws;
pub mod ws_session;
