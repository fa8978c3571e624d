//! Throttled WebSocket subscriptions (`max_rate` in `subscribe`) over real sockets: the
//! value's checks and where it applies, and market data conflated to the newest trade with
//! every bar and status kept.

use crate::common;
use crate::ws_support;

use std::time::{Duration, Instant};

use common::{publish, spawn_app_with};
use serde_json::{Value, json};
use ws_support::{connect_as, ws_settings};

fn trade(symbol: &str, id: u64) -> Value {
    json!({"T":"t","S":symbol,"i":id,"x":"V","p":100.0 + id as f64,"s":5,
           "t":format!("2026-01-02T14:30:{:02}Z", id % 60),"c":[]})
}

fn bar(symbol: &str, minute: u64) -> Value {
    json!({"T":"b","S":symbol,"o":10,"h":11,"l":9.5,"c":10.5,"v":1000,"n":12,"vw":10.2,
           "t":format!("2026-01-02T14:{minute:02}:00Z")})
}

#[tokio::test]
async fn max_rate_is_checked_applies_to_the_channels_named_and_shows_in_the_subscription() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    for bad in [
        json!(0),
        json!(1001),
        json!(2.5),
        json!(-1),
        json!("5"),
        json!(true),
    ] {
        client
            .send_json(json!({"action":"subscribe","id":"r","trades":["AAPL"],"max_rate":bad}))
            .await;
        let error = client.expect_error(400).await;
        assert_eq!(error["id"], "r");
        assert!(
            error["msg"]
                .as_str()
                .is_some_and(|m| m.contains("max_rate") && m.contains("1 to 1000")),
            "{bad}: {error}"
        );
    }
    // A refused message changes nothing: no rate, no trades.
    let reply = client.subscribe(json!({"quotes":["MSFT"]})).await;
    assert_eq!(reply["trades"], json!([]));
    assert!(reply.get("max_rate").is_none(), "{reply}");
    // Named market channels: the market rate only.
    let reply = client
        .subscribe(json!({"trades":["AAPL"],"max_rate":5}))
        .await;
    assert_eq!(reply["max_rate"], json!({"market":5,"orderbooks":null}));
    // Named order books: their rate only.
    let reply = client
        .subscribe(json!({"orderbooks":["AAPL"],"max_rate":2}))
        .await;
    assert_eq!(reply["max_rate"], json!({"market":5,"orderbooks":2}));
    let snapshot = client.expect("o").await;
    assert_eq!(snapshot["snapshot"], true, "snapshots are never held");
    // Neither named: both; null removes.
    let reply = client.subscribe(json!({"max_rate":null})).await;
    assert!(reply.get("max_rate").is_none(), "{reply}");
    let reply = client.subscribe(json!({"max_rate":1000})).await;
    assert_eq!(reply["max_rate"], json!({"market":1000,"orderbooks":1000}));
    client
        .send_json(json!({"action":"unsubscribe","id":"u","trades":["AAPL"],"max_rate":5}))
        .await;
    let error = client.expect_error(400).await;
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("subscribe")),
        "{error}"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_throttled_session_gets_the_newest_trade_and_every_bar_and_status_of_a_burst() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client
        .subscribe(json!({"trades":["AAPL"],"bars":["AAPL"],"max_rate":1}))
        .await;
    let started = Instant::now();
    let mut burst: Vec<Value> = (1..=30).map(|id| trade("AAPL", id)).collect();
    burst.insert(10, bar("AAPL", 1));
    burst.insert(20, bar("AAPL", 2));
    burst.insert(
        25,
        json!({"T":"s","S":"AAPL","sc":"halted","sm":"news pending","t":"2026-01-02T14:30:59Z"}),
    );
    let (status, reply) = publish(&app, Value::Array(burst)).await;
    assert_eq!(status, 200, "{reply}");
    let mut seen: Vec<Value> = Vec::new();
    while !(seen.iter().any(|o| o["T"] == "t" && o["i"] == 30)
        && seen.iter().filter(|o| o["T"] == "b").count() == 2
        && seen.iter().any(|o| o["T"] == "s"))
    {
        seen.push(client.next_object(Duration::from_secs(10)).await);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let trades: Vec<u64> = seen
        .iter()
        .filter(|o| o["T"] == "t")
        .filter_map(|o| o["i"].as_u64())
        .collect();
    assert!(
        (trades.len() as f64) <= 2.0 + elapsed,
        "{} trades in {elapsed:.2} s: {trades:?}",
        trades.len()
    );
    assert!(trades.windows(2).all(|w| w[0] < w[1]), "{trades:?}");
    let kinds: Vec<&str> = seen.iter().filter_map(|o| o["T"].as_str()).collect();
    let newest = seen
        .iter()
        .position(|o| o["T"] == "t" && o["i"] == 30)
        .expect("trade 30");
    let last_kept = kinds
        .iter()
        .rposition(|k| *k == "b" || *k == "s")
        .expect("bars");
    assert!(
        last_kept < newest,
        "bars and the status precede the newer trade: {kinds:?}"
    );
    // Removing the rate: the next trade comes at once, as on any session.
    client
        .subscribe(json!({"trades":["AAPL"],"max_rate":null}))
        .await;
    let (status, _) = publish(&app, json!([trade("AAPL", 31), trade("AAPL", 32)])).await;
    assert_eq!(status, 200);
    let mut after: Vec<u64> = Vec::new();
    while after.last() != Some(&32) {
        let object = client.next_object(Duration::from_secs(10)).await;
        if object["T"] == "t" {
            after.extend(object["i"].as_u64());
        }
    }
    assert_eq!(after, [31, 32], "unthrottled again: nothing is conflated");
    app.stop().await.expect("stop");
}
