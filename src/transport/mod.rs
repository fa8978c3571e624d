//! Client transports: Server-Sent Events for public feeds (and, later, the authenticated
//! WebSocket). Only this module and `routes` know about actix.

pub mod publish;
pub mod sse;
