//! tickgate: a real-time market-data gateway.
//!
//! Code map (see `docs/ARCHITECTURE.md` for the invariants):
//! - [`market`]: wire shapes of market data, the symbol universe, validation.
//! - [`ingest`]: sources that publish into the hub (simulator, pollers, replay) and their health.
//! - [`hub`]: sequenced per-feed logs, replay window, snapshots, fan-out to bounded queues.
//! - [`transport`]: client transports (`sse` for public feeds, `ws` for the authenticated
//!   WebSocket with its socket-free `ws::session`, `account` for auth and account HTTP routes).
//! - [`trading`]: the simulated exchange (orders, book, accounts) behind `TradingApi`.
//! - [`cluster`]: multi-node operation on Redis (shared per-feed logs, leases with fencing).
//! - [`store`]: durable orders, accounts, bar history and feed positions (SQLite by default).
//! - [`routes`]: HTTP routes, CORS, health and metrics endpoints.
//! - [`server`]: builds the application from [`settings`] and runs it until shutdown.
//! - [`auth`]: JWT verification, the built-in token issuer, WebSocket tickets, session limits.
//! - [`error`]: the API error type and its stable codes.
//! - [`metrics`]: counters and gauges rendered as Prometheus text.

pub mod auth;
pub mod cluster;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod market;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod trading;
pub mod transport;
