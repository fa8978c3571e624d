//! The public SSE feeds over real HTTP connections: snapshot, filters, resume, reset, slow
//! clients, bad requests, heartbeats, CORS and shutdown.

use crate::common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{SseClient, SseEvent, news, publish, spawn_app, spawn_app_with, test_settings};
use serde_json::json;
use tickgate::market::{Alert, AlertLevel, MarketEvent, Trade};

const WAIT: Duration = Duration::from_secs(10);

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + second, 0).expect("valid time")
}

fn trade(symbol: &str, id: u64, price: f64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: symbol.into(),
        id,
        venue: "T".into(),
        price,
        size: 100.0,
        time: at(id as i64),
        conditions: vec![],
    })
}

/// Skips the `retry:` block and returns the next real event.
async fn first_event(client: &mut SseClient) -> SseEvent {
    let retry = client.expect_event(WAIT).await;
    assert!(retry.retry.is_some(), "first block is retry: {retry:?}");
    client.expect_event(WAIT).await
}

#[tokio::test]
async fn snapshot_comes_first_and_holds_the_latest_trade_of_each_requested_symbol() {
    let app = spawn_app().await;
    app.state
        .hub
        .publish_event(trade("AAPL", 1, 10.0))
        .expect("valid");
    app.state
        .hub
        .publish_event(trade("AAPL", 2, 11.0))
        .expect("valid");
    app.state
        .hub
        .publish_event(trade("MSFT", 3, 20.0))
        .expect("valid");
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL", &[]).await;
    let snapshot = first_event(&mut client).await;
    assert_eq!(snapshot.event, "snapshot");
    let data = snapshot.json();
    assert_eq!(data["reset"], false);
    let trades = data["trades"].as_array().expect("trades array");
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0]["S"], "AAPL");
    assert_eq!(trades[0]["p"], 11.0);
    assert_eq!(
        snapshot.id.as_deref(),
        Some(data["cursor"].as_str().expect("cursor"))
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn filters_deliver_only_the_requested_symbols_and_types() {
    let app = spawn_app().await;
    let mut aapl_trades =
        SseClient::connect(app.port, "/v1/stream/market?symbols=aapl&types=trades", &[]).await;
    let mut everything = SseClient::connect(app.port, "/v1/stream/market?symbols=*", &[]).await;
    first_event(&mut aapl_trades).await;
    first_event(&mut everything).await;
    let (status, reply) = publish(
        &app,
        json!([
            {"T":"t","S":"MSFT","i":1,"x":"V","p":20.5,"s":5,"t":"2026-01-02T14:30:00Z","c":[]},
            {"T":"q","S":"AAPL","bp":10.0,"bs":1,"ap":10.02,"as":1,"t":"2026-01-02T14:30:00Z"},
            {"T":"t","S":"AAPL","i":2,"x":"V","p":10.01,"s":5,"t":"2026-01-02T14:30:01Z","c":[]}
        ]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 3);
    let only = aapl_trades.expect_event(WAIT).await;
    assert_eq!(only.event, "trade");
    assert_eq!(only.json()["S"], "AAPL");
    assert_eq!(only.json()["i"], 2);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(everything.expect_event(WAIT).await.event);
    }
    assert_eq!(kinds, vec!["trade", "quote", "trade"]);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn resume_with_last_event_id_replays_exactly_the_missed_events_then_goes_live() {
    let app = spawn_app().await;
    let hub = &app.state.hub;
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL,MSFT", &[]).await;
    first_event(&mut client).await;
    for id in 1..=3 {
        hub.publish_event(trade("AAPL", id, 10.0)).expect("valid");
    }
    let mut last_id = None;
    for _ in 0..3 {
        last_id = client.expect_event(WAIT).await.id;
    }
    drop(client);
    // Missed while disconnected: a mix of subscribed and unsubscribed symbols.
    for id in 4..=9 {
        let symbol = if id % 3 == 0 {
            "GOOGL"
        } else if id % 2 == 0 {
            "MSFT"
        } else {
            "AAPL"
        };
        hub.publish_event(trade(symbol, id, 10.0)).expect("valid");
    }
    let last_id = last_id.expect("events carry ids");
    let mut resumed = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL,MSFT",
        &[("Last-Event-ID", &last_id)],
    )
    .await;
    let retry = resumed.expect_event(WAIT).await;
    assert!(retry.retry.is_some());
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let event = resumed.expect_event(WAIT).await;
        assert_eq!(event.event, "trade", "no snapshot on a good resume");
        replayed.push(event.json()["i"].as_u64().expect("id"));
    }
    assert_eq!(replayed, vec![4, 5, 7, 8]);
    hub.publish_event(trade("AAPL", 10, 10.0)).expect("valid");
    let live = resumed.expect_event(WAIT).await;
    assert_eq!(live.json()["i"], 10, "live continues with no duplicate");

    // The query parameter works the same way for a first connect.
    let path = format!("/v1/stream/market?symbols=AAPL&last_event_id={last_id}");
    let mut by_query = SseClient::connect(app.port, &path, &[]).await;
    by_query.expect_event(WAIT).await;
    let ids: Vec<u64> = [
        by_query.expect_event(WAIT).await,
        by_query.expect_event(WAIT).await,
    ]
    .iter()
    .map(|e| e.json()["i"].as_u64().expect("id"))
    .collect();
    assert_eq!(ids, vec![5, 7]);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cursor_older_than_the_window_or_from_another_epoch_gets_an_explicit_reset() {
    let mut settings = test_settings();
    settings.hub.replay_window = 3;
    let app = spawn_app_with(settings).await;
    for id in 1..=10 {
        app.state
            .hub
            .publish_event(trade("AAPL", id, 10.0 + id as f64))
            .expect("valid");
    }
    let epoch = app.state.hub.epoch();
    for cursor in [
        format!("{epoch}-2"),
        "1-5".to_string(),
        "garbage".to_string(),
    ] {
        let mut client = SseClient::connect(
            app.port,
            "/v1/stream/market?symbols=AAPL",
            &[("Last-Event-ID", &cursor)],
        )
        .await;
        let reset = first_event(&mut client).await;
        assert_eq!(reset.event, "snapshot", "cursor {cursor}");
        let data = reset.json();
        assert_eq!(data["reset"], true, "cursor {cursor}");
        assert!(data["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert_eq!(data["trades"][0]["p"], 20.0, "fresh snapshot follows");
        assert_eq!(reset.id, Some(format!("{epoch}-10")));
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_stream_requests_get_json_4xx_before_any_streaming() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let too_many = (0..101)
        .map(|i| format!("S{i}"))
        .collect::<Vec<_>>()
        .join(",");
    for (path, code) in [
        ("/v1/stream/market?symbols=AAPL,NOPE".to_string(), 40010002),
        (
            "/v1/stream/market?symbols=AAPL&types=trades,candles".to_string(),
            40010004,
        ),
        (format!("/v1/stream/market?symbols={too_many}"), 40010003),
        ("/v1/stream/market".to_string(), 40010005),
        (
            "/v1/stream/market?symbols=AAPL&colour=red".to_string(),
            40010005,
        ),
        ("/v1/stream/news?symbols=NOPE".to_string(), 40010002),
        ("/v1/bars?symbol=AAPL&start=yesterday".to_string(), 40010005),
        ("/v1/bars?symbol=NOPE".to_string(), 40010002),
        ("/v1/snapshot?symbols=NOPE".to_string(), 40010002),
    ] {
        let response = client.get(app.url(&path)).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 400, "{path}");
        assert!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json")),
            "{path}"
        );
        let body: serde_json::Value = response.json().await.expect("json body");
        assert_eq!(body["code"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A parameter given twice is refused rather than half-honoured.
    let repeated = client
        .get(app.url("/v1/stream/market?symbols=AAPL&symbols=MSFT"))
        .send()
        .await
        .expect("request");
    assert_eq!(repeated.status().as_u16(), 400);
    let body: serde_json::Value = repeated.json().await.expect("json");
    assert_eq!(body["code"], 40010005);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than once"))
    );
    // A huge bad symbol is not echoed back in full.
    let huge = "A".repeat(20_000);
    let response = client
        .get(app.url(&format!("/v1/snapshot?symbols={huge}")))
        .send()
        .await
        .expect("request");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["code"], 40010002);
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() < 200),
        "{body}"
    );
    let missing = client
        .get(app.url("/v1/nothing"))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.expect("json")["code"],
        40410000
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_stalled_client_is_conflated_while_a_healthy_client_gets_everything() {
    let mut settings = test_settings();
    settings.hub.subscriber_queue_capacity = 64;
    settings.hub.replay_window = 100;
    let app = spawn_app_with(settings).await;
    // The stalled client connects and never reads.
    let stalled = std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
    use std::io::Write;
    (&stalled)
        .write_all(
            format!(
                "GET /v1/stream/market?symbols=AAPL,MSFT HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                app.port
            )
            .as_bytes(),
        )
        .expect("request");
    let mut healthy =
        SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL,MSFT", &[]).await;
    first_event(&mut healthy).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The producer is paced only by the healthy client (never more than half its queue
    // ahead), so the healthy client can keep up by construction while the stalled one cannot.
    let total = 40_000u64;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hub = std::sync::Arc::clone(&app.state.hub);
    let progress = std::sync::Arc::clone(&received);
    let producer = tokio::task::spawn_blocking(move || {
        for id in 1..=total {
            while id > progress.load(std::sync::atomic::Ordering::Acquire) + 32 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let symbol = if id % 2 == 0 { "AAPL" } else { "MSFT" };
            hub.publish_event(trade(symbol, id, 10.0 + (id % 100) as f64 / 100.0))
                .expect("ingest never fails because of a slow client");
        }
    });
    let mut expected = 1;
    while expected <= total {
        let event = tokio::time::timeout(Duration::from_secs(60), healthy.next_event())
            .await
            .expect("healthy client keeps receiving")
            .expect("stream open");
        assert_eq!(
            event.json()["i"],
            expected,
            "healthy client sees every event in order"
        );
        received.store(expected, std::sync::atomic::Ordering::Release);
        expected += 1;
    }
    producer.await.expect("producer finished");
    let metrics = &app.state.metrics;
    assert!(
        metrics.conflated.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the stalled client's queue was conflated"
    );
    assert_eq!(
        metrics
            .slow_client_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "two symbols always fit after conflation"
    );
    drop(stalled);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_client_that_cannot_keep_up_even_after_conflation_is_disconnected_with_407() {
    let mut settings = test_settings();
    settings.hub.subscriber_queue_capacity = 16;
    let app = spawn_app_with(settings).await;
    let stalled = std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("connect");
    use std::io::{BufRead, Write};
    (&stalled)
        .write_all(
            format!(
                "GET /v1/stream/news HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
                app.port
            )
            .as_bytes(),
        )
        .expect("request");
    let mut healthy = SseClient::connect(app.port, "/v1/stream/news", &[]).await;
    healthy.expect_event(WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // News cannot be conflated; large items fill the socket buffers quickly.
    let total = 2_000u64;
    // Paced by the healthy client only, as in the conflation test.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = std::sync::Arc::clone(&received);
    let hub = std::sync::Arc::clone(&app.state.hub);
    let producer = tokio::task::spawn_blocking(move || {
        for id in 1..=total {
            while id > progress.load(std::sync::atomic::Ordering::Acquire) + 8 {
                std::thread::sleep(Duration::from_micros(200));
            }
            hub.publish_event(news(id, &[], 16 * 1024))
                .expect("valid news");
        }
    });
    for expected in 1..=total {
        let event = tokio::time::timeout(Duration::from_secs(60), healthy.next_event())
            .await
            .expect("healthy client keeps receiving")
            .expect("stream open");
        assert_eq!(
            event.json()["id"],
            expected,
            "{}: {}",
            event.event,
            event.data
        );
        received.store(expected, std::sync::atomic::Ordering::Release);
    }
    producer.await.expect("producer");
    assert_eq!(
        app.state
            .metrics
            .slow_client_disconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The stalled client finds the final error event at the end of what was buffered.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let reader = std::io::BufReader::new(&stalled);
    let mut saw_error = false;
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if line.contains("\"code\":407") {
            saw_error = true;
            break;
        }
    }
    assert!(saw_error, "final error event with code 407");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments_from_the_shared_sweep() {
    let mut settings = test_settings();
    settings.hub.heartbeat_interval = Duration::from_millis(200);
    let app = spawn_app_with(settings).await;
    let mut client = SseClient::connect(app.port, "/v1/stream/alerts", &[]).await;
    client.expect_event(WAIT).await;
    app.state
        .hub
        .publish_event(MarketEvent::Alert(Alert {
            id: 1,
            level: AlertLevel::Warning,
            msg: "after heartbeats".into(),
            time: at(1),
        }))
        .ok();
    // Wait for two sweeps, then an alert proves the stream is still healthy.
    tokio::time::sleep(Duration::from_millis(700)).await;
    app.state
        .hub
        .publish_event(MarketEvent::Alert(Alert {
            id: 2,
            level: AlertLevel::Info,
            msg: "still here".into(),
            time: at(2),
        }))
        .expect("valid alert");
    let mut alerts = Vec::new();
    while alerts.len() < 2 {
        let event = client.expect_event(WAIT).await;
        assert_eq!(event.event, "alert");
        alerts.push(event.json()["id"].as_u64().expect("id"));
    }
    assert_eq!(alerts, vec![1, 2]);
    assert!(
        client.comments.iter().any(|c| c == "hb"),
        "{:?}",
        client.comments
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_same_symbol_named_twice_counts_once_against_the_limit() {
    let mut settings = test_settings();
    settings.market.max_symbols_per_subscription = 1;
    let app = spawn_app_with(settings).await;
    let mut client =
        SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL,aapl,AAPL", &[]).await;
    assert_eq!(client.status, 200);
    assert_eq!(first_event(&mut client).await.event, "snapshot");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn news_stream_filters_by_tagged_symbol() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(app.port, "/v1/stream/news?symbols=MSFT", &[]).await;
    let retry = client.expect_event(WAIT).await;
    assert!(
        retry.retry.is_some(),
        "news streams start with retry: and no snapshot"
    );
    let hub = &app.state.hub;
    hub.publish_event(news(1, &["AAPL"], 10)).expect("valid");
    hub.publish_event(news(2, &["AAPL", "MSFT"], 10))
        .expect("valid");
    hub.publish_event(news(3, &[], 10)).expect("valid");
    let first = client.expect_event(WAIT).await;
    let second = client.expect_event(WAIT).await;
    assert_eq!(first.json()["id"], 2);
    assert_eq!(second.json()["id"], 3, "untagged news goes to everyone");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let mut settings = test_settings();
    settings.server.allowed_origins = vec!["http://embed.example".into()];
    let app = spawn_app_with(settings).await;
    let client = reqwest::Client::new();
    let allowed = client
        .get(app.url("/v1/symbols"))
        .header("Origin", "http://embed.example")
        .send()
        .await
        .expect("request");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://embed.example")
    );
    let foreign = client
        .get(app.url("/v1/symbols"))
        .header("Origin", "http://evil.example")
        .send()
        .await
        .expect("request");
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(
        foreign.status().as_u16(),
        200,
        "the server answers; the browser refuses"
    );
    let preflight = client
        .request(reqwest::Method::OPTIONS, app.url("/v1/symbols"))
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .expect("request");
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn shutdown_tells_open_streams_to_reconnect_and_ends_them_promptly() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=*", &[]).await;
    first_event(&mut client).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    let goodbye = client.expect_event(WAIT).await;
    assert_eq!(goodbye.event, "status");
    assert_eq!(goodbye.json()["sc"], "shutdown");
    assert!(
        goodbye.id.is_none(),
        "the goodbye does not move the resume cursor"
    );
    let end = tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("stream ends");
    assert!(end.is_none());
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("server stops within the grace period")
        .expect("join")
        .expect("clean stop");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn http_basics_report_symbols_snapshot_bars_health_and_metrics() {
    let app = spawn_app().await;
    let hub = &app.state.hub;
    hub.publish_event(trade("AAPL", 1, 10.0)).expect("valid");
    let (status, _) = publish(
        &app,
        json!({"T":"b","S":"AAPL","o":10,"h":11,"l":9.5,"c":10.5,"v":1000,"n":12,"vw":10.2,"t":"2026-01-02T14:30:00Z"}),
    )
    .await;
    assert_eq!(status, 200);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(app.url(path)).send();
    let symbols: serde_json::Value = get("/v1/symbols")
        .await
        .expect("ok")
        .json()
        .await
        .expect("json");
    assert_eq!(symbols["symbols"][0], "AAPL");
    let snapshot: serde_json::Value = get("/v1/snapshot?symbols=AAPL")
        .await
        .expect("ok")
        .json()
        .await
        .expect("json");
    assert_eq!(snapshot["trades"][0]["p"], 10.0);
    let bars: serde_json::Value = get("/v1/bars?symbol=AAPL&start=2026-01-02T00:00:00Z")
        .await
        .expect("ok")
        .json()
        .await
        .expect("json");
    assert_eq!(bars["bars"][0]["c"], 10.5);
    assert_eq!(get("/healthz").await.expect("ok").status().as_u16(), 200);
    let ready = get("/readyz").await.expect("ok");
    assert_eq!(ready.status().as_u16(), 200);
    let metrics = get("/metrics")
        .await
        .expect("ok")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tickgate_messages_published_total{feed=\"market\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tickgate_connections{transport=\"sse\"}"));
    app.stop().await.expect("stop");
}
