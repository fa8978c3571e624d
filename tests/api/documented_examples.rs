//! Documented behaviour that did not hold (issue 13, item 9), each checked as the docs state
//! it: the publish example of docs/sources.md run as written against the binary on the
//! default configuration, JSON 405s, empty query parameters, tagged bars, statuses in
//! snapshots, a non-ASCII `Last-Event-ID`, `unsubscribe` of every order book, and a market
//! that continues from its last stored prices after a restart.

use crate::common;
use crate::ws_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::{SseClient, publish, spawn_app, spawn_app_with, test_settings};
use serde_json::{Value, json};
use tickgate::market::{Bar, MarketEvent, Status};

const WAIT: Duration = Duration::from_secs(10);

/// Kills the gateway if the test fails before it is done with it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first ```sh block after `heading` in a docs page.
fn shell_block(page: &str, heading: &str) -> String {
    let section = &page[page.find(heading).expect("heading")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = section[start..].find("```").expect("end of the block");
    section[start..start + end].to_owned()
}

#[test]
fn the_publish_example_in_docs_sources_works_as_written_on_the_default_configuration() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__STORE__ENABLED", "false")
        .env_remove("TICKGATE__PUBLISH__ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let _running = Running(child);
    let (url, _) = common::url_from_start_line(stderr, Duration::from_secs(30));
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Let the simulator (on by default) publish every symbol first, as it would have by the
    // time someone reads the docs.
    std::thread::sleep(Duration::from_secs(2));
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sources.md"))
            .expect("docs/sources.md");
    let script = shell_block(&page, "## Publish API").replace("localhost:8080", &address);
    let output = Command::new("bash")
        .args(["-euc", &format!("{script}\necho")])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replies: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("JSON replies");
    assert_eq!(replies.len(), 2, "{stdout}");
    assert_eq!(
        replies[0],
        json!({"accepted": 1, "rejected": []}),
        "{stdout}"
    );
    assert_eq!(replies[1]["accepted"], 3, "{stdout}");
    assert_eq!(
        replies[1]["rejected"][0]["reason"], "unknown_symbol",
        "{stdout}"
    );
}

#[tokio::test]
async fn a_tick_older_than_the_latest_says_why_and_what_to_do() {
    let app = spawn_app().await;
    let now = Utc::now();
    let tick = |t: chrono::DateTime<Utc>| json!({"T":"t","S":"AAPL","i":1,"p":100.0,"s":1,"t":t.to_rfc3339(),"c":[]});
    assert_eq!(publish(&app, tick(now)).await.0, 200);
    let (status, reply) = publish(&app, tick(now - chrono::TimeDelta::hours(1))).await;
    assert_eq!(status, 422, "{reply}");
    let message = reply["rejected"][0]["message"].as_str().expect("message");
    assert_eq!(reply["rejected"][0]["reason"], "time_backwards");
    for needed in [
        "latest trade",
        now.to_rfc3339().as_str(),
        "simulator.enabled = false",
    ] {
        assert!(message.contains(needed), "{needed:?} missing: {message}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_method_a_path_does_not_take_answers_the_json_405() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::PUT, "/index.html"),
        (reqwest::Method::DELETE, "/js/sse.js"),
        (reqwest::Method::GET, "/v1/publish"),
    ] {
        let response = http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 405, "{method} {path}");
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(body["code"], 40510000, "{method} {path}: {body}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_request_line_actix_http_refuses_gets_the_documented_empty_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    for request in [
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connect");
        stream.write_all(&request).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("content-length: 0"), "{answer}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn empty_query_parameters_are_treated_as_absent() {
    let app = spawn_app().await;
    let response = reqwest::get(app.url("/v1/bars?symbol=AAPL&timeframe=&start=&end=&limit="))
        .await
        .expect("bars");
    assert_eq!(response.status(), 200);
    let client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&types=&last_event_id=",
        &[],
    )
    .await;
    assert_eq!(client.status, 200);
    let response = reqwest::get(app.url("/v1/snapshot?symbols="))
        .await
        .expect("snapshot");
    assert_eq!(response.status(), 200);
    app.stop().await.expect("stop");
}

fn bar(symbol: &str, close: f64) -> MarketEvent {
    let minute = Utc::now() - chrono::TimeDelta::minutes(1);
    MarketEvent::Bar(Bar {
        symbol: symbol.into(),
        open: close,
        high: close,
        low: close,
        close,
        volume: 10.0,
        trade_count: 1,
        vwap: close,
        time: chrono::DurationRound::duration_trunc(minute, chrono::TimeDelta::minutes(1))
            .expect("minute"),
    })
}

fn status(symbol: &str, code: &str) -> MarketEvent {
    MarketEvent::Status(Status {
        symbol: symbol.into(),
        code: code.into(),
        message: code.into(),
        time: Utc::now(),
    })
}

#[tokio::test]
async fn bars_are_tagged_and_snapshots_carry_the_session_and_upstream_status() {
    let app = spawn_app().await;
    let hub = &app.state.hub;
    hub.publish_event(bar("AAPL", 200.0)).expect("bar");
    hub.publish_event(status("*", "market_open"))
        .expect("status");
    hub.publish_event(status("*", "market_closed"))
        .expect("status");
    hub.publish_event(status("AAPL", "upstream_down"))
        .expect("status");
    hub.publish_event(status("MSFT", "upstream_down"))
        .expect("status");

    let bars: Value = reqwest::get(app.url("/v1/bars?symbol=AAPL"))
        .await
        .expect("bars")
        .json()
        .await
        .expect("JSON");
    assert_eq!(bars["bars"][0]["T"], "b", "{bars}");

    let snapshot: Value = reqwest::get(app.url("/v1/snapshot?symbols=AAPL"))
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("JSON");
    let codes: Vec<(String, String)> = snapshot["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| {
            (
                s["S"].as_str().unwrap_or("").into(),
                s["sc"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("*".to_owned(), "market_closed".to_owned()),
            ("AAPL".to_owned(), "upstream_down".to_owned())
        ],
        "the newest of each family, for AAPL and *: {snapshot}"
    );

    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL", &[]).await;
    client.expect_event(WAIT).await; // retry
    let sse = client.expect_event(WAIT).await;
    assert_eq!(sse.event, "snapshot");
    assert_eq!(sse.json()["statuses"], snapshot["statuses"]);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_non_ascii_last_event_id_is_answered_with_the_documented_reset() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL",
        &[("Last-Event-ID", "1795452584521-1é")],
    )
    .await;
    assert_eq!(client.status, 200);
    client.expect_event(WAIT).await; // retry
    let first = client.expect_event(WAIT).await;
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.json()["reset"], true, "{first:?}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn unsubscribe_of_every_order_book_with_a_star_is_accepted() {
    let app = spawn_app_with(ws_support::ws_settings()).await;
    let mut client = ws_support::connect_as(&app, "alice").await;
    client
        .send_json(json!({"action": "subscribe", "orderbooks": ["AAPL", "MSFT"]}))
        .await;
    let (reply, _) = client.until("subscription").await;
    assert_eq!(reply["orderbooks"], json!(["AAPL", "MSFT"]));
    client
        .send_json(json!({"action": "unsubscribe", "orderbooks": ["*"]}))
        .await;
    let (reply, _) = client.until("subscription").await;
    assert_eq!(reply["orderbooks"], json!([]), "{reply}");
    // Subscribing still needs named books.
    client
        .send_json(json!({"action": "subscribe", "orderbooks": ["*"]}))
        .await;
    let (error, _) = client.until("error").await;
    assert_eq!(error["code"], 400, "{error}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn after_a_restart_the_simulator_continues_from_the_last_stored_prices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = test_settings();
    settings.store.enabled = true;
    settings.store.data_dir = dir.path().to_path_buf();
    let app = spawn_app_with(settings.clone()).await;
    // Once the server answers, the store's bar writer is following the feed.
    reqwest::get(app.url("/healthz")).await.expect("up");
    // Far from the configured 227.50: where the market went during the previous run.
    app.state
        .hub
        .publish_event(bar("AAPL", 900.0))
        .expect("bar");
    app.stop().await.expect("clean stop stores the bar");

    settings.simulator.enabled = true;
    settings.simulator.trades_per_second = 200.0;
    let app = spawn_app_with(settings).await;
    let mut client =
        SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL&types=trades", &[]).await;
    let trade = loop {
        let event = client.expect_event(WAIT).await;
        if event.event == "trade" {
            break event.json();
        }
    };
    let price = trade["p"].as_f64().expect("price");
    assert!(
        (price - 900.0).abs() < 90.0,
        "the first simulated AAPL trade continues near 900, not the seed 227.50: {price}"
    );
    app.stop().await.expect("stop");
}
