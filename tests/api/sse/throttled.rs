//! Throttled market streams (`max_rate=N`) over real HTTP connections: the parameter's
//! checks, the newest trade winning with bars and statuses kept, and the resume cursor.

use crate::common;

use std::time::{Duration, Instant};

use common::{SseClient, SseEvent, publish, spawn_app};
use serde_json::{Value, json};
use tickgate::hub::Feed;

const WAIT: Duration = Duration::from_secs(10);

fn trade(symbol: &str, id: u64) -> Value {
    json!({"T":"t","S":symbol,"i":id,"x":"V","p":100.0 + id as f64,"s":5,
           "t":format!("2026-01-02T14:30:{:02}Z", id % 60),"c":[]})
}

fn bar(symbol: &str, minute: u64) -> Value {
    json!({"T":"b","S":symbol,"o":10,"h":11,"l":9.5,"c":10.5,"v":1000,"n":12,"vw":10.2,
           "t":format!("2026-01-02T14:{minute:02}:00Z")})
}

/// Skips the `retry:` block and the snapshot.
async fn skip_opening(client: &mut SseClient) {
    let retry = client.expect_event(WAIT).await;
    assert!(retry.retry.is_some(), "{retry:?}");
    let snapshot = client.expect_event(WAIT).await;
    assert_eq!(snapshot.event, "snapshot");
}

#[tokio::test]
async fn max_rate_outside_one_to_a_thousand_is_refused_with_the_invalid_parameter_code() {
    let app = spawn_app().await;
    for bad in ["0", "1001", "-3", "2.5", "fast", "99999999999999999999"] {
        let response =
            reqwest::get(app.url(&format!("/v1/stream/market?symbols=AAPL&max_rate={bad}")))
                .await
                .expect("request");
        assert_eq!(response.status().as_u16(), 400, "max_rate={bad}");
        let body: Value = response.json().await.expect("json error");
        assert_eq!(body["code"], 40010005, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("max_rate") && m.contains("1 to 1000")),
            "{body}"
        );
    }
    let twice = reqwest::get(app.url("/v1/stream/market?symbols=AAPL&max_rate=2&max_rate=3"))
        .await
        .expect("request");
    assert_eq!(twice.status().as_u16(), 400);
    // The news and alerts feeds are never throttled: the parameter is unknown there.
    let news = reqwest::get(app.url("/v1/stream/news?max_rate=2"))
        .await
        .expect("request");
    assert_eq!(news.status().as_u16(), 400);
    let body: Value = news.json().await.expect("json error");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown")),
        "{body}"
    );
    let mut fine = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&max_rate=1000",
        &[],
    )
    .await;
    assert_eq!(fine.status, 200);
    skip_opening(&mut fine).await;
    app.stop().await.expect("stop");
}

/// Reads events until `done` says so, with when each arrived.
async fn read_until(
    client: &mut SseClient,
    mut done: impl FnMut(&[SseEvent]) -> bool,
) -> Vec<(Instant, SseEvent)> {
    let mut seen: Vec<(Instant, SseEvent)> = Vec::new();
    while !done(&seen.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>()) {
        let event = client.expect_event(WAIT).await;
        seen.push((Instant::now(), event));
    }
    seen
}

#[tokio::test]
async fn a_burst_reaches_a_throttled_client_as_its_newest_trade_with_every_bar_and_status() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL,MSFT&max_rate=1",
        &[],
    )
    .await;
    skip_opening(&mut client).await;
    let started = Instant::now();
    // One publish of 40 events: trades of AAPL with two bars and a status among them.
    let mut burst: Vec<Value> = (1..=30).map(|id| trade("AAPL", id)).collect();
    burst.insert(10, bar("AAPL", 1));
    burst.insert(20, bar("AAPL", 2));
    burst.insert(
        25,
        json!({"T":"s","S":"AAPL","sc":"halted","sm":"news pending","t":"2026-01-02T14:30:59Z"}),
    );
    burst.push(trade("MSFT", 31));
    let (status, reply) = publish(&app, Value::Array(burst)).await;
    assert_eq!(status, 200, "{reply}");
    let seen = read_until(&mut client, |events| {
        events
            .iter()
            .any(|e| e.event == "trade" && e.json()["i"] == 30)
            && events
                .iter()
                .any(|e| e.event == "trade" && e.json()["S"] == "MSFT")
            && events.iter().filter(|e| e.event == "bar").count() == 2
            && events.iter().any(|e| e.event == "status")
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let aapl: Vec<u64> = seen
        .iter()
        .filter(|(_, e)| e.event == "trade" && e.json()["S"] == "AAPL")
        .map(|(_, e)| e.json()["i"].as_u64().expect("id"))
        .collect();
    // At most one release per second (plus the immediate first one), newest last, in order.
    assert!(
        (aapl.len() as f64) <= 2.0 + elapsed,
        "{} AAPL trades in {elapsed:.2} s: {aapl:?}",
        aapl.len()
    );
    assert!(aapl.len() < 30, "trades were conflated: {aapl:?}");
    assert!(aapl.windows(2).all(|w| w[0] < w[1]), "{aapl:?}");
    // Every bar and the status arrived, in publish order relative to AAPL's trades: the first
    // bar after the trades before it.
    let order: Vec<String> = seen.iter().map(|(_, e)| e.event.clone()).collect();
    let last_bar = order.iter().rposition(|e| e == "bar").expect("bars");
    let trade_30 = seen
        .iter()
        .position(|(_, e)| e.event == "trade" && e.json()["i"] == 30)
        .expect("trade 30");
    assert!(
        last_bar < trade_30,
        "the bars precede the newer trade 30: {order:?}"
    );
    // Nothing is held any more: the client's id is the feed's head, so a resume replays
    // nothing it has not seen.
    // (Reading on for a moment takes in the id-only block that may end the last write.)
    let more = tokio::time::timeout(Duration::from_millis(1500), client.next_event()).await;
    assert!(more.is_err(), "nothing more to deliver: {more:?}");
    assert_eq!(
        client.last_id.as_deref(),
        Some(app.state.hub.cursor(Feed::Market).to_string().as_str())
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_id_of_a_throttled_stream_stays_below_a_held_trade_so_a_resume_delivers_it() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL,MSFT&max_rate=1",
        &[],
    )
    .await;
    skip_opening(&mut client).await;
    let (status, _) = publish(&app, json!([trade("AAPL", 1)])).await;
    assert_eq!(status, 200);
    let first = client.expect_event(WAIT).await;
    assert_eq!(
        first.json()["i"],
        1,
        "a quiet symbol's first trade goes out at once"
    );
    let held_from = client.last_id.clone().expect("an id");
    // AAPL's window runs for a second: trade 2 is held, MSFT's first trade goes out at once.
    let (status, _) = publish(&app, json!([trade("AAPL", 2), trade("MSFT", 3)])).await;
    assert_eq!(status, 200);
    let msft = client.expect_event(WAIT).await;
    assert_eq!(msft.json()["S"], "MSFT");
    // The MSFT frame carries no id of its own, and the id still points before the held trade
    // (the window of a second is far longer than these two requests).
    assert_eq!(msft.id, None);
    assert_eq!(client.last_id.as_deref(), Some(held_from.as_str()));
    drop(client);
    // Resuming from that id replays the held trade (and MSFT's again, which is harmless: the
    // newest value wins).
    let mut resumed = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL,MSFT&max_rate=1",
        &[("Last-Event-ID", held_from.as_str())],
    )
    .await;
    let retry = resumed.expect_event(WAIT).await;
    assert!(retry.retry.is_some());
    let replayed = read_until(&mut resumed, |events| {
        events
            .iter()
            .any(|e| e.event == "trade" && e.json()["i"] == 2)
    })
    .await;
    assert!(
        replayed.iter().all(|(_, e)| e.event != "snapshot"),
        "a resume, not a reset: {replayed:?}"
    );
    app.stop().await.expect("stop");
}
