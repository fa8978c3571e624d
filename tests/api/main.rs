//! The gateway's integration tests, one binary (one link) with a folder per topic. Each test
//! starts what it needs itself (the gateway in-process on port 0, the `tickgate` binary,
//! local upstreams), so tests share no state and run in parallel.
//!
//! Shared set-up: `common` (the app on port 0, the SSE client, typed requests), `ws_support`
//! (WebSocket clients and logins), `sources_support` (fake upstream HTTP servers, fixtures),
//! `redis_support` (a real `redis-server` on a free port), `postgres_support` (a real
//! PostgreSQL server, a database per test) and `cluster_support` (gateway processes joined to
//! it).

mod cluster_support;
mod common;
mod postgres_support;
mod redis_support;
mod sources_support;
#[macro_use]
mod store_support;
mod ws_support;

mod cli;
mod documented_examples;
mod loadgen_smoke;
mod publish;
mod qa_regressions;
mod stalled_peers;
mod tidy;

mod alpaca {
    mod py;
    mod rest;
    mod streams;
}

mod cluster {
    mod engine;
    mod nodes;
    mod trading;
    mod trading_books;
    mod trading_nodes;
    mod trading_outage;
    mod ws_notices;
}

mod hub {
    mod props;
}

mod sources {
    mod finnhub;
    mod replay;
    mod schedule;
    mod settings;
    mod simulator;
    mod yahoo;
}

mod security {
    mod flood;
    mod fuzz;
    mod gateway;
    mod preauth_memory;
    mod publish_limits;
    mod subjects;
    mod tickets;
}

mod sse {
    mod feeds;
    mod input_props;
    mod restart;
    mod restart_under_load;
    mod smoke;
    mod throttled;
}

mod store {
    mod api_keys;
    mod crash_recovery;
    mod exchange;
    mod full_disk;
    mod history;
    mod postgres;
    mod replay;
    mod startup;
    mod trading;
    mod updates;
}

mod trading {
    mod exchange;
    mod rest;
}

mod ws {
    mod auth;
    mod protocol;
    mod resume;
    mod throttled;
    mod trading;
    mod trading_status;
    mod upgrade;
}
