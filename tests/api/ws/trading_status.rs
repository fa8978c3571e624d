//! Trading statuses over real WebSockets: `trading_unavailable` / `trading_available` (a
//! cluster node's notices, sent the way `cluster::trading` sends them, through
//! `Hub::notify_status`) and `trading_halted` / `trading_resumed` (the single node's
//! sequenced statuses, published the way `trading::recovery` publishes them) reach every
//! session that trades, also one that follows no market data, and each session once.

use chrono::Utc;
use serde_json::{Value, json};
use tickgate::market::{MarketEvent, Status};

use crate::common::{Backend, TestApp, spawn_app_on, spawn_app_with};
use crate::ws_support::{WsClient, connect_as, ws_settings};

/// The `sc` of the session's next status, skipping anything else (portfolio, books).
async fn next_status(client: &mut WsClient) -> Value {
    let (status, _) = client.until("s").await;
    assert_eq!(status["S"], "*", "{status}");
    status["sc"].clone()
}

fn publish_trading_status(app: &TestApp, code: &str) {
    app.state
        .hub
        .publish_event(MarketEvent::Status(Status {
            symbol: "*".into(),
            code: code.into(),
            message: format!("test: {code}"),
            time: Utc::now(),
        }))
        .expect("published");
}

/// Sessions that follow only trade updates, only the portfolio, only a book, and one that
/// follows trade updates and market data.
async fn trading_sessions(app: &TestApp) -> Vec<(&'static str, WsClient)> {
    let mut sessions = Vec::new();
    for (name, request) in [
        ("trade updates only", json!({"trade_updates": true})),
        ("portfolio only", json!({"portfolio": true})),
        ("order book only", json!({"orderbooks": ["AAPL"]})),
        (
            "trade updates and trades",
            json!({"trade_updates": true, "trades": ["AAPL"]}),
        ),
    ] {
        let mut client = connect_as(app, "alice").await;
        client.subscribe(request).await;
        sessions.push((name, client));
    }
    sessions
}

async fn cluster_trading_notices_reach_every_trading_session_once_with_or_without_market_data(
    backend: Backend,
) {
    let app = spawn_app_on(backend, ws_settings()).await;
    // On a cluster node the exchange has answered (so its heartbeats are heard) before the
    // sessions open: the node's own statuses come only after a second of silence, which a
    // running exchange's heartbeat every 250 ms never leaves, so the order is the test's.
    app.state
        .trading
        .portfolio("alice")
        .await
        .expect("the exchange answers");
    let mut sessions = trading_sessions(&app).await;
    let hub = &app.state.hub;
    hub.notify_status("trading_unavailable", "no exchange answers");
    // Not about trading: sessions that follow no market data do not hear it.
    hub.notify_status("cluster_down", "redis unreachable");
    hub.notify_status("trading_available", "an exchange answers again");
    for (name, client) in &mut sessions {
        assert_eq!(next_status(client).await, "trading_unavailable", "{name}");
        let mut next = next_status(client).await;
        if *name == "trade updates and trades" {
            // It follows market data, so the cluster notice reaches it as before.
            assert_eq!(next, "cluster_down", "{name}");
            next = next_status(client).await;
        }
        // A second `trading_unavailable` here would be a duplicate.
        assert_eq!(next, "trading_available", "{name}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_single_node_trading_halt_reaches_every_trading_session_once() {
    let app = spawn_app_with(ws_settings()).await;
    let mut sessions = trading_sessions(&app).await;
    publish_trading_status(&app, "trading_halted");
    publish_trading_status(&app, "trading_resumed");
    for (name, client) in &mut sessions {
        assert_eq!(next_status(client).await, "trading_halted", "{name}");
        assert_eq!(next_status(client).await, "trading_resumed", "{name}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_session_that_starts_trading_during_a_halt_or_an_outage_is_told_at_once() {
    let app = spawn_app_with(ws_settings()).await;
    publish_trading_status(&app, "trading_halted");
    let hub = &app.state.hub;
    hub.notify_status("trading_unavailable", "no exchange answers");
    // Opened during both: told of both at once, after its subscription's reply, then of
    // their ends like everyone.
    let mut late = connect_as(&app, "alice").await;
    late.subscribe(json!({"portfolio": true})).await;
    assert_eq!(next_status(&mut late).await, "trading_halted");
    assert_eq!(next_status(&mut late).await, "trading_unavailable");
    hub.notify_status("trading_available", "an exchange answers again");
    assert_eq!(next_status(&mut late).await, "trading_available");
    // Opened while only the halt lasts: told of it alone, once.
    let mut later = connect_as(&app, "bob").await;
    later.subscribe(json!({"trade_updates": true})).await;
    assert_eq!(next_status(&mut later).await, "trading_halted");
    publish_trading_status(&app, "trading_resumed");
    assert_eq!(next_status(&mut later).await, "trading_resumed");
    assert_eq!(next_status(&mut late).await, "trading_resumed");
    // Opened after both ended: nothing to tell (the next thing it hears is a later reply).
    let mut after = connect_as(&app, "carol").await;
    after.subscribe(json!({"orderbooks": ["AAPL"]})).await;
    after
        .send_json(json!({"action": "subscribe", "id": 7, "statuses": ["AAPL"]}))
        .await;
    loop {
        let next = after.next_object(std::time::Duration::from_secs(5)).await;
        assert_ne!(
            next["T"], "s",
            "no status after the halt and the outage ended: {next}"
        );
        if next["T"] == "subscription" && next["id"] == 7 {
            break;
        }
    }
    app.stop().await.expect("stop");
}

// On a single node and on a cluster node. The single node's halt test stays single-node: it
// publishes `trading_halted` into the hub's market feed as a single node's exchange does,
// while a cluster node's hub takes events only from the shared log and its exchange sends the
// halt as a notice (`Hub::notify_status`, `trading::recovery`), the path the notices test
// drives; making the shared test database fail for one test is not possible (the cluster's
// halts are tested across processes in `tests/api/cluster/`). The hand-made
// `trading_unavailable`/`trading_available` of the notices test can run on a cluster node
// since a node says it only after `cluster.exchange_silence` (1 s) without the exchange's
// heartbeat (every 250 ms), not after a lease's life as before.
crate::on_both_backends!(
    cluster_trading_notices_reach_every_trading_session_once_with_or_without_market_data,
    a_session_that_stopped_trading_hears_no_trading_status,
    a_producer_cannot_publish_a_trading_status,
);

async fn a_session_that_stopped_trading_hears_no_trading_status(backend: Backend) {
    let app = spawn_app_on(backend, ws_settings()).await;
    let mut quiet = connect_as(&app, "alice").await;
    quiet.subscribe(json!({"trade_updates": true})).await;
    quiet
        .send_json(json!({"action": "unsubscribe", "trade_updates": true}))
        .await;
    let (reply, _) = quiet.until("subscription").await;
    assert_eq!(reply["trade_updates"], false, "{reply}");
    app.state
        .hub
        .notify_status("trading_unavailable", "no exchange answers");
    // The next thing it hears is the reply to a later request, not the status.
    quiet
        .send_json(json!({"action": "subscribe", "id": 7, "statuses": ["AAPL"]}))
        .await;
    let next = quiet.next_object(std::time::Duration::from_secs(5)).await;
    assert_eq!(next["T"], "subscription", "{next}");
    assert_eq!(next["id"], 7, "{next}");
    app.stop().await.expect("stop");
}

async fn a_producer_cannot_publish_a_trading_status(backend: Backend) {
    let app = spawn_app_on(backend, ws_settings()).await;
    for code in [
        "trading_halted",
        "trading_resumed",
        "trading_unavailable",
        "trading_available",
    ] {
        let (status, reply) = crate::common::publish(
            &app,
            json!({"T":"s","S":"*","sc":code,"sm":"fake","t":"2026-01-02T14:30:00Z"}),
        )
        .await;
        assert_eq!(status, 422, "{code}: {reply}");
        assert_eq!(reply["rejected"][0]["reason"], "reserved_status", "{reply}");
    }
    app.stop().await.expect("stop");
}
