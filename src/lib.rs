//! tickgate: a real-time market-data gateway.
//!
//! Code map (see `docs/ARCHITECTURE.md` for the invariants and which way imports point):
//! - [`market`]: wire shapes of market data, the symbol universe, validation.
//! - [`ingest`]: sources (simulator, pollers, replay) and their health; every source, the
//!   publish API too, publishes through [`ingest::source::SourceContext`].
//! - [`hub`]: sequenced per-feed logs, replay window, snapshots, encode-once frames
//!   ([`hub::entry`]), bounded subscriber queues, the shared sweeps.
//! - [`trading`]: the simulated exchange (orders, book, accounts) behind `TradingApi`, started
//!   by [`trading::exchange::start`].
//! - [`cluster`]: multi-node operation on Redis (one shared log per feed, leases with fencing
//!   tokens); below `state`, it reaches the hub only through `cluster::SequencedSink`.
//! - [`store`]: durable orders, accounts, bar history and feed positions (SQLite by default,
//!   PostgreSQL for a cluster).
//! - [`auth`]: JWT verification, the built-in token issuer, WebSocket tickets, session limits;
//!   [`subject`]: the rule every account name (username, token subject) follows.
//! - [`state`]: `AppState`, the handles request handlers share (below routes and transports).
//! - [`routes`]: HTTP routes (market REST, account, publish), CORS, health and metrics.
//! - [`transport`]: client transports (`sse` for public feeds, `ws` for the authenticated
//!   WebSocket: `ws::wire` and the socket-free `ws::session`).
//! - [`startup`]: builds the application from [`settings`] and runs it until shutdown.
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
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod subject;
pub mod telemetry;
pub mod trading;
pub mod transport;
