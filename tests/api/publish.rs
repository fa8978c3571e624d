//! `POST /v1/publish`: authorization, one object or an array, per-item reasons, body limit,
//! and producer fields kept as given.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{SseClient, TestApp, publish, spawn_app, spawn_app_with, test_settings};
use serde_json::{Value, json};
use tickgate::settings::Settings;

fn trade(symbol: &str, id: u64, price: f64) -> Value {
    json!({"T":"t","S":symbol,"i":id,"x":"PRODUCER","p":price,"s":100,"t":"2026-01-02T14:30:00.5Z","c":["@","I"]})
}

async fn post(app: &TestApp, token: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(app.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("publish request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn a_single_trade_is_accepted_and_reaches_subscribers_with_its_own_id_and_venue() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL", &[]).await;
    client.expect_event(Duration::from_secs(5)).await; // retry
    client.expect_event(Duration::from_secs(5)).await; // snapshot
    let (status, reply) = publish(&app, trade("AAPL", 9_007_199_254_740_000, 227.5)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"accepted": 1, "rejected": []}));
    let event = client.expect_event(Duration::from_secs(5)).await;
    assert_eq!(event.event, "trade");
    let data = event.json();
    assert_eq!(
        data["i"], 9_007_199_254_740_000u64,
        "the producer's id is kept"
    );
    assert_eq!(data["x"], "PRODUCER");
    assert_eq!(data["c"], json!(["@", "I"]));
    assert_eq!(data["t"], "2026-01-02T14:30:00.500Z");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_array_is_validated_item_by_item_with_index_code_and_reason() {
    let app = spawn_app().await;
    let body = json!([
        trade("AAPL", 1, 227.5),
        {"T":"t","S":"AAPL","i":2,"s":100,"t":"2026-01-02T14:30:01Z"},
        trade("ZZZZ", 3, 10.0),
        trade("MSFT", 4, -5.0),
        {"T":"q","S":"MSFT","bp":416.0,"bs":1,"ap":415.0,"as":1,"t":"2026-01-02T14:30:01Z"},
        {"T":"n","id":77,"headline":"Gateway accepts news","symbols":["AAPL"],
         "created_at":"2026-01-02T14:30:00Z","updated_at":"2026-01-02T14:30:00Z"},
        {"T":"alert","id":5,"level":"warning","msg":"maintenance at 18:00","t":"2026-01-02T14:30:00Z"},
        {"T":"b","S":"AAPL","o":1.0,"h":2.0,"l":1.5,"c":1.8,"v":10,"n":1,"vw":1.7,"t":"2026-01-02T14:30:00Z"},
        "not an object",
        trade("AAPL", 9, 227.0).as_object().map(|o| {
            let mut o = o.clone();
            o.insert("t".into(), json!("2026-01-02T14:29:00Z"));
            Value::Object(o)
        }).expect("object"),
    ]);
    let (status, reply) = publish(&app, body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 3, "{reply}");
    let rejected: Vec<(u64, u64, &str)> = reply["rejected"]
        .as_array()
        .expect("rejected list")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["code"].as_u64().unwrap_or(0),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, 40010006, "malformed"),
            (2, 40010002, "unknown_symbol"),
            (3, 42210001, "not_positive"),
            (4, 42210001, "crossed_quote"),
            (7, 42210001, "bar_out_of_range"),
            (8, 40010006, "malformed"),
            (9, 42210001, "time_backwards"),
        ],
        "{reply}"
    );
    let messages: Vec<&str> = reply["rejected"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(messages[0].contains("missing field `p`"), "{}", messages[0]);
    assert_eq!(messages[1], "unknown symbol ZZZZ");
    assert_eq!(messages[2], "p must be greater than zero");
    let metrics = app.state.metrics.render();
    assert!(
        metrics.contains(
            "tickgate_ingest_rejected_total{source=\"publish_api\",reason=\"malformed\"} 2"
        ),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_body_with_nothing_acceptable_is_422_and_bad_bodies_are_400() {
    let app = spawn_app().await;
    let token = app.state.settings.publish.admin_token.clone();
    let (status, reply) = post(
        &app,
        Some(&token),
        json!([trade("ZZZZ", 1, 1.0)]).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["accepted"], 0);
    for (body, needle) in [
        ("{not json", "not valid JSON"),
        ("42", "JSON object or an array"),
        ("[]", "no items"),
    ] {
        let (status, reply) = post(&app, Some(&token), body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_eq!(reply["code"], 40010006, "{reply}");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{body}: {reply}"
        );
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_with_401_json_and_nothing_is_published() {
    let app = spawn_app().await;
    let body = json!(trade("AAPL", 1, 227.5)).to_string();
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, reply) = post(&app, token, body.clone()).await;
        assert_eq!(status, 401, "{token:?}: {reply}");
        assert_eq!(reply["code"], 40110000, "{reply}");
        assert!(reply["message"].is_string());
    }
    let response = reqwest::Client::new()
        .post(app.url("/v1/publish"))
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"publish\"")
    );
    // A Basic scheme with the right secret is still not a bearer token.
    let response = reqwest::Client::new()
        .post(app.url("/v1/publish"))
        .header(
            "authorization",
            format!("Basic {}", app.state.settings.publish.admin_token),
        )
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);
    assert!(
        app.state.hub.latest(None).is_empty(),
        "nothing was published"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_admin_token_can_come_from_the_environment() {
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let env = vec![(
        "TICKGATE__PUBLISH__ADMIN_TOKEN".to_string(),
        "token-from-env".to_string(),
    )];
    let loaded = Settings::load_from(&config_dir, None, &env).expect("settings");
    assert_eq!(loaded.publish.admin_token, "token-from-env");
    let mut settings = test_settings();
    settings.publish = loaded.publish;
    let app = spawn_app_with(settings).await;
    let body = json!(trade("AAPL", 1, 227.5)).to_string();
    let (status, _) = post(&app, Some("dev-admin-token"), body.clone()).await;
    assert_eq!(status, 401, "the file's token no longer works");
    let (status, reply) = post(&app, Some("token-from-env"), body).await;
    assert_eq!(status, 200, "{reply}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_empty_admin_token_disables_the_publish_api() {
    let mut settings = test_settings();
    settings.publish.admin_token.clear();
    let app = spawn_app_with(settings).await;
    let (status, reply) = post(&app, Some(""), json!(trade("AAPL", 1, 1.0)).to_string()).await;
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{reply}"
    );
    app.stop().await.expect("clean stop");
}

/// Sends `chunks` chunks of `size` bytes with `Transfer-Encoding: chunked` over a raw socket and
/// returns the status and body text.
async fn post_chunked(port: u16, token: &str, chunks: usize, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..chunks {
        let chunk = format!("{size:x}\r\n{}\r\n", "x".repeat(size));
        // The server may answer 413 and stop reading before every chunk is sent.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_json() {
    let mut settings = test_settings();
    settings.server.max_body_bytes = 2048;
    let app = spawn_app_with(settings).await;
    let token = app.state.settings.publish.admin_token.clone();
    let items: Vec<Value> = (0..40).map(|i| trade("AAPL", i, 227.5)).collect();
    let body = Value::Array(items).to_string();
    assert!(body.len() > 2048);
    let (status, reply) = post(&app, Some(&token), body).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["code"], 41310000, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("2048")),
        "{reply}"
    );

    // Without a Content-Length (chunked transfer), the limit holds while reading.
    let (status, reply) = post_chunked(app.port, &token, 10, 500).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("41310000"), "{reply}");

    // Within the limit the same endpoint works.
    let (status, _) = post(&app, Some(&token), json!(trade("AAPL", 1, 1.0)).to_string()).await;
    assert_eq!(status, 200);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn published_news_and_alerts_reach_their_feeds() {
    let app = spawn_app().await;
    let mut news = SseClient::connect(app.port, "/v1/stream/news", &[]).await;
    let mut alerts = SseClient::connect(app.port, "/v1/stream/alerts", &[]).await;
    // Skip `retry:` and the (empty) snapshots until the feeds are live.
    let (status, reply) = publish(
        &app,
        json!([
            {"T":"n","id":4242,"headline":"Producer news","summary":"s","author":"a","source":"wire",
             "url":"https://example.test/n","symbols":["AAPL"],
             "created_at":"2026-01-02T14:30:00Z","updated_at":"2026-01-02T14:30:00Z"},
            {"T":"alert","id":17,"level":"critical","msg":"feed maintenance","t":"2026-01-02T14:30:00Z"}
        ]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let deadline = Duration::from_secs(5);
    let item = loop {
        let event = news.expect_event(deadline).await;
        if event.event == "news" {
            break event.json();
        }
    };
    assert_eq!(item["id"], 4242);
    assert_eq!(item["source"], "wire");
    let item = loop {
        let event = alerts.expect_event(deadline).await;
        if event.event == "alert" {
            break event.json();
        }
    };
    assert_eq!(item["id"], 17);
    assert_eq!(item["level"], "critical");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_bearer_scheme_name_is_case_insensitive() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(app.url("/v1/publish"))
        .header(
            "authorization",
            format!("bearer {}", app.state.settings.publish.admin_token),
        )
        .header("content-type", "application/json")
        .body(json!(trade("AAPL", 1, 1.0)).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    app.stop().await.expect("clean stop");
}
