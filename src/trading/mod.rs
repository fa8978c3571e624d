//! The simulated exchange: order validation, matching against a synthetic Level 2 book per
//! symbol, accounts and positions. No actix, no sockets: transports reach it through
//! [`api::TradingApi`], implemented by [`ExchangeHandle`].
//!
//! - [`api`]: the shared contract (wire shapes and the trait).
//! - [`validate`]: request parsing with field-specific errors.
//! - [`book`]: the synthetic book, its walk and its deltas.
//! - [`config`]: the `[trading]` settings.
//! - [`account`]: cash, positions and the exact arithmetic of a fill.
//! - [`engine`]: the rules; a synchronous state machine.
//! - [`exchange`]: the actor's handle and start-up; `actor`: its loop; `intake`: the market
//!   data it follows.
//! - [`command`]: commands and replies between the nodes of a cluster, and the rule that runs
//!   each exactly once.
//! - [`persist`]: the event log in the store, the rebuild at start-up, the halt on a failed write.
//! - `recovery`: after a halt, probing the store with backoff and resuming trading by itself.
//! - `resume`: what a reconnecting client is told (replay or reset) and the order behind a
//!   retried `client_order_id`, read from the store off the actor.
//!
//! Invariants:
//! - One task owns all exchange state, so orders from every user and market data are applied
//!   in one order; with the same seed and inputs the same fills come out.
//! - Every state change is an [`engine::ExchangeEvent`] passed through
//!   [`engine::Engine::commit`]; announcements (trade updates, portfolio bumps, book deltas)
//!   are returned, not sent, so a store can persist the events of a command before its
//!   announcements are published.
//! - Every order transition produces exactly one trade update with the full order and the
//!   user's next `seq` (1, 2, 3, ... per user; replaying the events numbers them again).
//! - A `client_order_id` names at most one order per user, ever (42210002 for a repeat).
//! - A rejected request commits nothing.
//! - Following the market never makes the hub wait: the ingest task conflates to the newest
//!   trade and quote per symbol.
//!
//! The rules themselves are described in `docs/trading.md`.

pub mod account;
mod actor;
pub mod api;
pub mod book;
pub mod command;
pub mod config;
pub mod engine;
pub mod exchange;
mod intake;
pub mod persist;
mod recovery;
mod resume;
pub mod validate;

pub use exchange::{AnnouncementOutlet, ExchangeHandle, ExchangeTasks, MarketInput};

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sequence_tests;
