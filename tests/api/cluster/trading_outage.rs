//! What traders see while the exchange is unreachable without a failover: its node paused
//! (`SIGSTOP`) for a few heartbeats but well within its lease, then continued. The sessions of
//! the other node are told `trading_unavailable` and then `trading_available`, once each; a
//! session opened meanwhile is told at once; the sessions of the paused node itself (which
//! heard nothing because it was paused too) are told nothing; and the orders sent meanwhile
//! wait and run once when the exchange is back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::trading_nodes::{
    Ledger, Trader, exchange_holder, exchange_index, stored_seqs, trading_node_with,
};
use crate::postgres_support::TestDatabase;
use crate::redis_support::RedisServer;

/// Checks that every trader connected to a surviving node across a kill (from the kill to the
/// next one) was told `trading_unavailable` then `trading_available` in that span, once each,
/// at least `gap` apart, and that no connection was ever told the same availability twice in
/// a row.
pub(super) fn check_outages_told(
    ledgers: &BTreeMap<&str, Ledger>,
    kills: &[(Instant, u16)],
    end: Instant,
    gap: Duration,
) {
    // Traders checked around each kill: those on the two surviving nodes' slots.
    let mut checked = vec![0; kills.len()];
    for (user, ledger) in ledgers {
        for (index, (killed_at, killed_port)) in kills.iter().enumerate() {
            let until = kills.get(index + 1).map_or(end, |(next, _)| *next);
            // The connection open at the kill, if it was to a surviving node and lasted.
            let Some(connection) = ledger
                .connections
                .iter()
                .rposition(|(at, _)| at < killed_at)
            else {
                continue;
            };
            let port = ledger.connections[connection].1;
            let replaced = ledger
                .connections
                .get(connection + 1)
                .is_some_and(|(at, _)| *at < until);
            if port == *killed_port || replaced {
                continue;
            }
            let told: Vec<&str> = ledger
                .availability
                .iter()
                .filter(|(at, on, _)| *on == connection && at >= killed_at && *at < until)
                .map(|(_, _, code)| code.as_str())
                .collect();
            assert_eq!(
                told,
                vec!["trading_unavailable", "trading_available"],
                "{user} on port {port} around kill {index}: {:?}",
                ledger.availability
            );
            let times: Vec<Instant> = ledger
                .availability
                .iter()
                .filter(|(at, on, _)| *on == connection && at >= killed_at && *at < until)
                .map(|(at, _, _)| *at)
                .collect();
            assert!(
                times[1].duration_since(times[0]) >= gap,
                "{user}: told unavailable and available within {gap:?} around kill {index}"
            );
            checked[index] += 1;
            let after_kill: Vec<_> = ledger
                .availability
                .iter()
                .filter(|(at, on, _)| *on == connection && at >= killed_at && *at < until)
                .map(|(at, _, code)| format!("{code} +{:?}", at.duration_since(*killed_at)))
                .collect();
            eprintln!("kill {index}, {user}: {after_kill:?}");
        }
        for connection in 0..ledger.connections.len() {
            let told: Vec<&str> = ledger
                .availability
                .iter()
                .filter(|(_, on, _)| *on == connection)
                .map(|(_, _, code)| code.as_str())
                .collect();
            for (position, code) in told.iter().enumerate() {
                let expected = if position % 2 == 0 {
                    "trading_unavailable"
                } else {
                    "trading_available"
                };
                assert_eq!(
                    *code, expected,
                    "{user}'s connection {connection}: {told:?}"
                );
            }
        }
    }
    assert!(
        checked.iter().all(|count| *count >= 2),
        "traders on surviving nodes around each kill: {checked:?}"
    );
}

/// A lease far longer than the pause: the paused exchange keeps it (a renewal every 2 s, the
/// key lives 6 s), so this is an outage without a takeover. Heartbeats every 250 ms; the nodes'
/// silence limit is its default, 1 s.
const LONG_LEASE: [(&str, &str); 1] = [("TICKGATE__CLUSTER__LEASE_TTL", "6s")];

impl Trader {
    /// Follows a book and reads everything until `stop`, reconnecting (to its slot's port)
    /// when its node dies; returns `label` and what it saw.
    pub(super) async fn watch(
        mut self,
        label: &'static str,
        stop: Arc<AtomicBool>,
    ) -> (&'static str, Ledger) {
        while !stop.load(Ordering::Relaxed) {
            if self.socket.is_none() {
                let subscribe = json!({"action": "subscribe", "orderbooks": ["AAPL"]});
                if !self.dial().await || !self.send(subscribe).await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
            // A quiet book is no reason to reconnect: only a closed connection is.
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                self.next(Duration::from_secs(60)),
            )
            .await;
        }
        (label, self.ledger)
    }
}

/// The trading availability statuses `trader` was told, in order.
fn availability(trader: &Trader) -> Vec<&str> {
    trader
        .ledger
        .availability
        .iter()
        .map(|(_, _, code)| code.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_paused_within_its_lease_is_told_unavailable_then_available_and_its_orders_run_once()
 {
    let redis = RedisServer::start();
    let database = TestDatabase::create();
    let nodes = [
        trading_node_with(&redis, &database, "node-s", &LONG_LEASE),
        trading_node_with(&redis, &database, "node-t", &LONG_LEASE),
    ];
    let paused = exchange_index(&redis, &nodes).await;
    let other = &nodes[1 - paused];
    // Alice trades on the other node all along; bob watches there, carol on the paused node.
    let stop = Arc::new(AtomicBool::new(false));
    let running = tokio::spawn(Trader::on("alice", other.port).run(Arc::clone(&stop)));
    let mut watcher = Trader::on("bob", other.port);
    let mut on_paused = Trader::on("carol", nodes[paused].port);
    assert!(watcher.connect().await && on_paused.connect().await);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    nodes[paused].signal("STOP");
    let stopped = Instant::now();
    watcher
        .until_status("trading_unavailable", Duration::from_secs(5))
        .await;
    let noticed = stopped.elapsed();
    // A session opened during the outage is told at once, not at the next change.
    // It follows a book, which the node serves from its own copy; trade updates and the
    // portfolio start with a call to the exchange, so their subscription's reply (and the
    // status after it) would wait for the exchange (see docs/websocket.md).
    let mut late = Trader::on("dave", other.port);
    assert!(late.dial().await, "dave connects during the outage");
    assert!(
        late.send(json!({"action": "subscribe", "orderbooks": ["AAPL"]}))
            .await
    );
    late.until_status("trading_unavailable", Duration::from_millis(500))
        .await;
    let paused_for = stopped.elapsed();
    eprintln!("the other node said unavailable {noticed:?} after the pause began");
    assert!(
        paused_for < Duration::from_secs(3),
        "paused {paused_for:?}: the test needs the exchange back well within its lease"
    );
    let continued = Instant::now();
    nodes[paused].signal("CONT");
    for trader in [&mut watcher, &mut late] {
        trader
            .until_status("trading_available", Duration::from_secs(10))
            .await;
    }
    // Trading goes on after the pause, then everyone's frames are read to the end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, ledger) = running.await.expect("alice finished");
    for trader in [&mut watcher, &mut late, &mut on_paused] {
        while trader.next(Duration::from_millis(700)).await.is_some() {}
    }

    assert_eq!(
        exchange_holder(&redis).as_deref(),
        Some(nodes[paused].id.as_str()),
        "no takeover: the paused exchange kept its lease"
    );
    let told = vec!["trading_unavailable", "trading_available"];
    assert_eq!(availability(&watcher), told, "bob on the other node");
    assert_eq!(availability(&late), told, "dave, opened during the outage");
    let alice: Vec<&str> = ledger
        .availability
        .iter()
        .map(|(_, _, code)| code.as_str())
        .collect();
    assert_eq!(alice, told, "alice, trading on the other node");
    // Alice had an order waiting for the paused exchange through the pause (she sends one
    // every 60 ms): she is told while it waits, not after its answer.
    let alice_told = ledger
        .availability
        .iter()
        .find(|(_, _, code)| code == "trading_unavailable")
        .map(|(at, _, _)| *at);
    assert!(
        alice_told.is_some_and(|at| at < continued),
        "alice, whose order waited for the paused exchange, was told unavailable only after it \
         continued ({:?} after the pause began, continued after {:?})",
        alice_told.map(|at| at.duration_since(stopped)),
        continued.duration_since(stopped)
    );
    assert!(
        availability(&on_paused).is_empty(),
        "carol's node was paused with the exchange: nothing to tell her"
    );
    // Nothing lost: no order was answered 50310002 (the one sent during the pause waited and
    // ran), every acknowledged order is stored once, alice saw every update once in order.
    assert_eq!(ledger.retries, 0, "{ledger:?}");
    assert!(ledger.acked.len() >= 4, "{ledger:?}");
    for (client_order_id, id) in &ledger.acked {
        let stored = database.psql(&format!(
            "SELECT client_order_id FROM orders WHERE id = '{id}' AND username = 'alice'"
        ));
        assert_eq!(stored.trim(), client_order_id, "acknowledged order {id}");
    }
    let duplicates = database
        .psql("SELECT username, client_order_id FROM orders GROUP BY 1, 2 HAVING count(*) > 1");
    assert!(duplicates.trim().is_empty(), "{duplicates}");
    let seqs = stored_seqs(&database, "alice");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let expected: Vec<u64> = (1..=ledger.seen.len() as u64).collect();
    assert_eq!(
        ledger.seen, expected,
        "alice saw every update once, in order"
    );
}
