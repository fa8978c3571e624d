//! The gateway's integration tests, one binary (one link) with a folder per topic. Each test
//! starts what it needs itself (the gateway in-process on port 0, the `tickgate` binary,
//! local upstreams), so tests share no state and run in parallel.
//!
//! Shared set-up: `common` (the app on port 0, the SSE client, typed requests), `ws_support`
//! (WebSocket clients and logins), `sources_support` (fake upstream HTTP servers, fixtures),
//! `redis_support` (a real `redis-server` on a free port) and `cluster_support` (gateway
//! processes joined to it).

mod cluster_support;
mod common;
mod redis_support;
mod sources_support;
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
    mod crash_recovery;
    mod exchange;
    mod full_disk;
    mod history;
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
}
