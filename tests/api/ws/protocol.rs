//! The WebSocket protocol over real sockets: errors that keep the connection, rate limiting,
//! subscriptions, market data, pings and the idle timeout.

use crate::common;
use crate::ws_support;

use std::time::Duration;

use common::{news, publish, spawn_app_with};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use ws_support::{DEADLINE, Received, connect_as, ws_settings};

fn trade(symbol: &str, id: u64, price: f64, second: u32) -> serde_json::Value {
    json!({"T":"t","S":symbol,"i":id,"x":"V","p":price,"s":100,
           "t":format!("2026-01-02T14:30:{second:02}Z"),"c":[]})
}

#[tokio::test]
async fn malformed_json_unknown_actions_bad_fields_and_oversize_messages_get_errors_and_the_session_carries_on()
 {
    let mut settings = ws_settings();
    settings.ws.max_message_bytes = 1024;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;

    client.send_text("{not json").await;
    let error = client.expect_error(400).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("invalid JSON")
    );

    client.send_text("[1,2,3]").await;
    client.expect_error(400).await;

    client.send_json(json!({"action":"dance","id":"d1"})).await;
    let error = client.expect_error(400).await;
    assert_eq!(error["id"], "d1");
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown action")
    );

    client
        .send_json(json!({"action":"subscribe","id":"s1","trades":"AAPL"}))
        .await;
    let error = client.expect_error(400).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("trades must be an array")
    );

    client
        .send_json(json!({"action":"subscribe","trades":["NOPE"]}))
        .await;
    let error = client.expect_error(400).await;
    assert!(error["msg"].as_str().unwrap_or_default().contains("NOPE"));

    client
        .send_json(json!({"action":"subscribe","colour":["AAPL"]}))
        .await;
    let error = client.expect_error(400).await;
    assert!(error["msg"].as_str().unwrap_or_default().contains("colour"));

    let big = format!(r#"{{"action":"subscribe","pad":"{}"}}"#, "x".repeat(4000));
    client.send_text(&big).await;
    let error = client.expect_error(400).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("message too large")
    );

    client
        .stream
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    client.expect_error(400).await;

    let reply = client.subscribe(json!({"trades":["AAPL"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_frame_beyond_the_hard_limit_gets_an_error_then_a_1009_close() {
    let mut settings = ws_settings();
    settings.ws.max_message_bytes = 1024;
    settings.ws.max_frame_bytes = 4096;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    client.send_text(&"x".repeat(10_000)).await;
    let error = client.expect_error(400).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("too large")
    );
    let frame = client.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_flood_of_actions_is_rate_limited_and_later_actions_succeed_again() {
    let mut settings = ws_settings();
    settings.ws.actions_per_second = 5.0;
    settings.ws.action_burst = 10;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    for n in 0..60 {
        client
            .send_json(json!({"action":"subscribe","id":n,"trades":["AAPL"]}))
            .await;
    }
    let mut limited = 0;
    let mut answered = 0;
    // Everything the server says about the flood, until it falls silent.
    while let Ok(object) =
        tokio::time::timeout(Duration::from_millis(700), client.next_object(DEADLINE)).await
    {
        match object["T"].as_str() {
            Some("error") => {
                assert_eq!(object["code"], 408, "{object}");
                limited += 1;
            }
            Some("subscription") => answered += 1,
            other => panic!("unexpected {other:?}: {object}"),
        }
    }
    assert!(answered >= 10, "the burst was not honoured: {answered}");
    assert!(answered < 20, "the rate limit was not applied: {answered}");
    // Only the first drop of a run is answered (a token regained mid-flood starts a new run);
    // the rest are dropped without a reply frame each.
    assert!(
        (1..=4).contains(&limited),
        "{limited} rate-limit errors for one flood"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = client.subscribe(json!({"quotes":["MSFT"]})).await;
    assert_eq!(reply["quotes"], json!(["MSFT"]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn subscribe_adds_unsubscribe_removes_and_every_reply_lists_the_full_set() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    let reply = client
        .subscribe(json!({"id":"a","trades":["AAPL","msft"],"quotes":["AAPL"]}))
        .await;
    assert_eq!(reply["id"], "a");
    assert_eq!(reply["trades"], json!(["AAPL", "MSFT"]));
    assert_eq!(reply["quotes"], json!(["AAPL"]));
    assert_eq!(reply["bars"], json!([]));
    assert_eq!(reply["news"], json!([]));
    assert_eq!(reply["orderbooks"], json!([]));
    assert_eq!(reply["trade_updates"], false);
    assert_eq!(reply["portfolio"], false);

    let reply = client.subscribe(json!({"bars":["SPY"],"news":["*"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL", "MSFT"]));
    assert_eq!(reply["bars"], json!(["SPY"]));
    assert_eq!(reply["news"], json!(["*"]));

    client
        .send_json(json!({"action":"unsubscribe","id":"u","trades":["AAPL"],"news":["*"]}))
        .await;
    let reply = client.expect("subscription").await;
    assert_eq!(reply["id"], "u");
    assert_eq!(reply["trades"], json!(["MSFT"]));
    assert_eq!(reply["quotes"], json!(["AAPL"]));
    assert_eq!(reply["news"], json!([]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn too_many_symbols_are_refused_with_405_and_the_set_is_unchanged() {
    let mut settings = ws_settings();
    settings.market.max_symbols_per_subscription = 2;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL","MSFT"]})).await;
    client
        .send_json(json!({"action":"subscribe","quotes":["SPY"]}))
        .await;
    client.expect_error(405).await;
    let reply = client.subscribe(json!({"quotes":["AAPL"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL", "MSFT"]));
    assert_eq!(reply["quotes"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn market_data_arrives_in_the_sse_shapes_only_for_subscribed_symbols_and_kinds() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL"]})).await;
    let (status, body) = publish(
        &app,
        json!([
            trade("MSFT", 1, 400.0, 1),
            {"T":"q","S":"AAPL","bp":100.0,"bs":1,"ap":100.1,"as":2,"t":"2026-01-02T14:30:01Z"},
            trade("AAPL", 2, 101.25, 2),
        ]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let object = client.next_object(DEADLINE).await;
    assert_eq!(object["T"], "t", "{object}");
    assert_eq!(object["S"], "AAPL");
    assert_eq!(object["i"], 2);
    assert_eq!(object["p"], 101.25);

    // Adding quotes keeps trades flowing; both arrive, batched or not.
    client.subscribe(json!({"quotes":["AAPL"]})).await;
    publish(
        &app,
        json!([
            {"T":"q","S":"AAPL","bp":101.0,"bs":1,"ap":101.1,"as":2,"t":"2026-01-02T14:30:03Z"},
            trade("AAPL", 3, 101.5, 3),
        ]),
    )
    .await;
    let first = client.next_object(DEADLINE).await;
    let second = client.next_object(DEADLINE).await;
    assert_eq!(
        (first["T"].clone(), second["T"].clone()),
        (json!("q"), json!("t"))
    );
    assert_eq!(second["i"], 3);

    // After unsubscribing, AAPL trades stop; a later subscription reply proves nothing came.
    client
        .send_json(json!({"action":"unsubscribe","trades":["AAPL"],"quotes":["AAPL"]}))
        .await;
    client.expect("subscription").await;
    publish(&app, json!([trade("AAPL", 4, 102.0, 4)])).await;
    let reply = client.subscribe(json!({"bars":["AAPL"]})).await;
    assert_eq!(reply["bars"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

/// A hub wake-up that leaves nothing to send (a keep-alive tick with no ping due, a feed
/// heartbeat, which the WebSocket does not forward) must not cost the connection its next
/// wake-up: market data published afterwards still arrives.
#[tokio::test]
async fn market_data_keeps_flowing_after_wake_ups_that_send_nothing() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL"]})).await;
    for round in 1..=3u64 {
        // The default ping interval is 15 s, so neither sweep makes this connection write.
        app.state.hub.keepalive_sweep();
        app.state.hub.heartbeat_sweep();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) =
            publish(&app, json!([trade("AAPL", round, 100.0, round as u32)])).await;
        assert_eq!(status, 200, "{body}");
        let object = client.next_object(DEADLINE).await;
        assert_eq!(
            (object["T"].clone(), object["i"].clone()),
            (json!("t"), json!(round))
        );
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn news_arrives_for_subscribed_tags() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"news":["AAPL"]})).await;
    let news = |id: u64, symbols: &[&str]| {
        json!({"T":"n","id":id,"headline":format!("headline {id}"),"symbols":symbols,
               "created_at":"2026-01-02T14:30:00Z","updated_at":"2026-01-02T14:30:00Z"})
    };
    publish(&app, json!([news(1, &["MSFT"]), news(2, &["AAPL"])])).await;
    let object = client.next_object(DEADLINE).await;
    assert_eq!(object["T"], "n");
    assert_eq!(object["id"], 2);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn client_pings_are_answered_and_the_server_pings_on_its_timer() {
    let mut settings = ws_settings();
    settings.ws.ping_interval = Duration::from_millis(200);
    settings.ws.idle_timeout = Duration::from_secs(20);
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    client
        .stream
        .send(Message::Ping(b"hello".to_vec().into()))
        .await
        .expect("ping");
    let mut got_pong = false;
    let mut got_ping = false;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !(got_pong && got_ping) {
        let message = tokio::time::timeout_at(deadline, client.stream.next())
            .await
            .expect("pong and ping before the deadline")
            .expect("open")
            .expect("frame");
        match message {
            Message::Pong(payload) => {
                assert_eq!(payload.as_ref(), b"hello");
                got_pong = true;
            }
            Message::Ping(_) => got_ping = true,
            _ => {}
        }
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout_but_a_responsive_one_stays() {
    let mut settings = ws_settings();
    // Generous against a loaded machine: the lively client has 1.5 s of slack per ping.
    settings.ws.ping_interval = Duration::from_millis(200);
    settings.ws.idle_timeout = Duration::from_millis(1500);
    let app = spawn_app_with(settings).await;

    // This client keeps reading (which queues pongs) and flushing them, so it stays alive.
    let mut lively = connect_as(&app, "alice").await;
    let keep_alive = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_millis(5000);
        while tokio::time::Instant::now() < until {
            if let Ok(Some(Ok(Message::Close(_)))) =
                tokio::time::timeout(Duration::from_millis(50), lively.stream.next()).await
            {
                panic!("a responsive client was closed");
            }
            lively.stream.flush().await.expect("flush pongs");
        }
        lively
    });

    // This one reads nothing for a while, so it never answers the pings.
    let mut silent = connect_as(&app, "bob").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let closed = match silent.receive(DEADLINE).await {
        Received::Closed(frame) => frame,
        Received::Objects(items) => panic!("unexpected data {items:?}"),
    };
    // The close frame sits behind the unanswered pings; the client library may fail writing
    // its late pongs first and report a broken pipe instead, so check the reason if it got it.
    if let Some(frame) = closed {
        assert_eq!(frame.reason.as_str(), "idle timeout");
    }
    let mut lively = keep_alive.await.expect("lively client task");
    // The server ended the silent session and kept the lively one.
    use std::sync::atomic::Ordering;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while app.state.metrics.ws_connections.load(Ordering::Relaxed) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions did not settle at one"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = lively.subscribe(json!({"trades":["AAPL"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn order_actions_with_unknown_fields_get_order_level_errors() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client
        .send_json(json!({"action":"cancel","id":"c1","order_id":"x","extra":1}))
        .await;
    let error = client.expect_error(40010001).await;
    assert_eq!(error["id"], "c1");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_407_while_another_gets_every_message() {
    let mut settings = ws_settings();
    settings.hub.subscriber_queue_capacity = 16;
    let app = spawn_app_with(settings).await;
    let mut stalled = connect_as(&app, "alice").await;
    stalled.subscribe(json!({"news": ["*"]})).await;
    let mut healthy = connect_as(&app, "bob").await;
    healthy.subscribe(json!({"news": ["*"]})).await;

    // News is never conflated; 2,000 items of 16 KiB overflow the stalled client's socket
    // buffers and then its queue. Publishing is paced by the healthy client.
    for id in 1..=2_000u64 {
        app.state
            .hub
            .publish_event(news(id, &[], 16 * 1024))
            .expect("valid news");
        let item = healthy.next_object(DEADLINE).await;
        assert_eq!(item["T"], "n", "{item}");
        assert_eq!(item["id"], id);
    }
    assert_eq!(
        app.state
            .metrics
            .slow_client_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The stalled client finds, after what was buffered, the 407 error and a policy close.
    let mut last_id = 0;
    let mut saw_407 = false;
    let close = loop {
        match stalled.receive(DEADLINE).await {
            Received::Objects(items) => {
                for item in items {
                    if item["T"] == "n" {
                        let id = item["id"].as_u64().expect("news id");
                        assert!(id > last_id, "news in order: {id} after {last_id}");
                        last_id = id;
                    } else {
                        assert_eq!(item["T"], "error", "{item}");
                        assert_eq!(item["code"], 407, "{item}");
                        saw_407 = true;
                    }
                }
            }
            Received::Closed(frame) => break frame,
        }
    };
    assert!(saw_407, "the 407 error precedes the close");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(
        last_id < 2_000,
        "the stalled client cannot have had everything"
    );
    // The server and the healthy client carry on.
    app.state
        .hub
        .publish_event(news(2_001, &[], 10))
        .expect("valid news");
    assert_eq!(healthy.next_object(DEADLINE).await["id"], 2_001);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_restart_ends_websocket_sessions_with_a_shutdown_status_and_close_1012() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades": ["AAPL"]})).await;
    let mut bare = connect_as(&app, "bob").await;

    // Not awaited yet: the server stops while the clients read.
    app.shutdown.cancel();
    let (status, _) = client.until("s").await;
    assert_eq!(status["S"], "*", "{status}");
    assert_eq!(status["sc"], "shutdown", "{status}");
    let close = client.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    // A session with no market data gets the close alone.
    let close = bare.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012, "{close:?}");
    app.task.await.expect("server task").expect("clean stop");
}

/// The coalescing window over a real socket: with a window far longer than the publishes
/// take, a session that keeps up gets each trade alone and at once; one that twice in a row
/// finds several queued (each POST publishes two trades at once: the session gets to them
/// after both) gets them together, still at once, and from then on holds: the next three,
/// published one by one, come together in one frame, in order.
#[tokio::test]
async fn a_session_behind_its_stream_gets_the_events_of_one_window_in_one_frame_in_order() {
    let mut settings = ws_settings();
    settings.hub.coalesce_window = Duration::from_secs(3);
    // One worker: the publishing request and the session share it, so the session runs
    // only after a POST's trades are all queued.
    settings.server.workers = 1;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL"]})).await;

    let trades = |ids: &[u64]| {
        json!(
            ids.iter()
                .map(|&id| trade("AAPL", id, 100.0, id as u32))
                .collect::<Vec<_>>()
        )
    };
    // Keeping up: every trade alone, at once.
    for id in 1..=3u64 {
        let (status, body) = publish(&app, trades(&[id])).await;
        assert_eq!(status, 200, "{body}");
        let Received::Objects(alone) = client.receive(Duration::from_secs(2)).await else {
            panic!("closed");
        };
        let ids: Vec<_> = alone.iter().map(|object| object["i"].clone()).collect();
        assert_eq!(ids, vec![json!(id)]);
    }
    // Two late wake-ups in a row, each written at once (well within the window).
    for pair in [[4u64, 5], [6, 7]] {
        let (status, body) = publish(&app, trades(&pair)).await;
        assert_eq!(status, 200, "{body}");
        let Received::Objects(both) = client.receive(Duration::from_secs(2)).await else {
            panic!("closed");
        };
        let ids: Vec<_> = both.iter().map(|object| object["i"].clone()).collect();
        assert_eq!(ids, vec![json!(pair[0]), json!(pair[1])]);
    }
    // Behind: what comes within the next window shares one frame (on a loaded machine the
    // three requests may outlast the window: then the rest comes in the next one, in order).
    for id in 8..=10u64 {
        let (status, body) = publish(&app, trades(&[id])).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut frames = Vec::new();
    while frames.iter().map(Vec::len).sum::<usize>() < 3 {
        let Received::Objects(held) = client.receive(DEADLINE).await else {
            panic!("closed");
        };
        frames.push(
            held.iter()
                .map(|object| object["i"].clone())
                .collect::<Vec<_>>(),
        );
    }
    assert!(frames[0].len() >= 2, "the first held frame: {frames:?}");
    assert_eq!(frames.concat(), vec![json!(8), json!(9), json!(10)]);
    app.stop().await.expect("stop");
}
