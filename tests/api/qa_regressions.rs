//! Regressions found by using the gateway as a front-end team would: each test pins a bug
//! that was seen over real sockets.

use crate::common;
use crate::ws_support;

use common::{spawn_app, spawn_app_with};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use ws_support::{DEADLINE, Received, connect_as, ws_settings};

#[tokio::test]
async fn a_wrong_method_on_the_publish_api_gets_a_json_405() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let response = client
            .request(method.clone(), app.url("/v1/publish"))
            .bearer_auth(&app.state.settings.publish.admin_token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 405, "{method}");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(allow.as_deref(), Some("POST"), "{method}");
        let body: serde_json::Value = response.json().await.expect("a JSON body");
        assert_eq!(body["code"], 40510000, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("POST")),
            "{body}"
        );
    }
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_websocket_with_market_data_gets_the_shutdown_status_before_the_restart_close() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades": ["AAPL"]})).await;

    app.shutdown.cancel();

    let mut saw_shutdown = false;
    loop {
        match client.receive(DEADLINE).await {
            Received::Objects(items) => {
                saw_shutdown |= items
                    .iter()
                    .any(|item| item["T"] == "s" && item["S"] == "*" && item["sc"] == "shutdown");
            }
            Received::Closed(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                assert_eq!(code, Some(1012), "the close says the server restarts");
                break;
            }
        }
    }
    assert!(saw_shutdown, "the shutdown status arrives before the close");
    app.task.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn a_rate_limited_action_gets_its_request_id_back_in_the_408_once_per_run() {
    let mut settings = ws_settings();
    settings.ws.action_burst = 1;
    settings.ws.actions_per_second = 0.01;
    let app = spawn_app_with(settings).await;
    let mut client = connect_as(&app, "alice").await;
    client
        .send_json(json!({"action": "subscribe", "id": "first", "trades": ["AAPL"]}))
        .await;
    client
        .send_json(json!({"action": "subscribe", "id": "second", "trades": ["MSFT"]}))
        .await;
    client
        .send_json(json!({"action": "subscribe", "id": 3, "trades": ["MSFT"]}))
        .await;
    let reply = client.expect("subscription").await;
    assert_eq!(reply["id"], "first");
    let error = client.expect_error(408).await;
    assert_eq!(error["id"], "second", "{error}");
    // The third is dropped too, without a reply of its own (one 408 per run of drops, issue
    // 13): a ping gets its pong, and nothing else arrives before it.
    client
        .stream
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            b"after".to_vec().into(),
        ))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(DEADLINE, client.stream.next())
            .await
            .expect("a frame")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"after");
                break;
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => {}
            other => panic!("expected only the pong, got {other:?}"),
        }
    }
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_resync_that_names_no_book_is_answered_instead_of_ignored() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client
        .send_json(json!({"action": "resync", "id": "r1", "orderbooks": []}))
        .await;
    let error = client.expect_error(400).await;
    assert_eq!(error["id"], "r1", "{error}");
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("orderbooks")),
        "{error}"
    );
    // The session carries on.
    let reply = client
        .subscribe(json!({"id": "s1", "trades": ["AAPL"]}))
        .await;
    assert_eq!(reply["id"], "s1");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn bars_cut_short_by_limit_give_a_page_token_that_fetches_the_rest() {
    let app = spawn_app().await;
    let bars: Vec<serde_json::Value> = (0..5)
        .map(|minute| {
            json!({"T":"b","S":"AAPL","o":10.0,"h":20.0,"l":9.0,"c":10.0 + f64::from(minute),
                   "v":100,"n":1,"vw":10.0,"t":format!("2026-01-02T14:3{minute}:00Z")})
        })
        .collect();
    let (status, reply) = common::publish(&app, serde_json::Value::Array(bars)).await;
    assert_eq!(status, 200, "{reply}");

    let client = reqwest::Client::new();
    let mut closes = Vec::new();
    let mut url = app.url("/v1/bars?symbol=AAPL&start=2026-01-02T00:00:00Z&limit=2");
    for _page in 0..10 {
        let page: serde_json::Value = client
            .get(&url)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        let bars = page["bars"].as_array().expect("bars array");
        assert!(bars.len() <= 2, "{page}");
        closes.extend(bars.iter().map(|b| b["c"].as_f64().expect("close")));
        match page["next_page_token"].as_str() {
            Some(token) => {
                url = app.url(&format!(
                    "/v1/bars?symbol=AAPL&start=2026-01-02T00:00:00Z&limit=2&page_token={token}"
                ));
            }
            None => break,
        }
    }
    assert_eq!(closes, vec![10.0, 11.0, 12.0, 13.0, 14.0]);
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_published_tick_dated_far_in_the_future_is_refused_and_does_not_lock_the_symbol() {
    let app = spawn_app().await;
    let trade = |id: u64, time: String| json!({"T":"t","S":"AAPL","i":id,"x":"FEED","p":10.0,"s":100,"t":time,"c":[]});
    let (status, reply) = common::publish(&app, trade(1, "2099-12-31T23:59:59Z".to_owned())).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["rejected"][0]["code"], 42210001, "{reply}");
    assert_eq!(reply["rejected"][0]["reason"], "time_in_future", "{reply}");

    // A mistyped year must not block every later tick of the symbol.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (status, reply) = common::publish(&app, trade(2, now)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 1, "{reply}");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn health_checks_answer_head_requests_as_monitors_send_them() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let response = client.head(app.url(path)).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200, "HEAD {path}");
    }
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_producer_cannot_publish_the_servers_own_shutdown_status() {
    let app = spawn_app().await;
    let (status, reply) = common::publish(
        &app,
        json!({"T":"s","S":"*","sc":"shutdown","sm":"fake","t":"2026-01-02T14:30:00Z"}),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["rejected"][0]["code"], 42210001, "{reply}");
    assert_eq!(reply["rejected"][0]["reason"], "reserved_status", "{reply}");
    let (status, reply) = common::publish(
        &app,
        json!({"T":"s","S":"AAPL","sc":"halted","sm":"news pending","t":"2026-01-02T14:30:00Z"}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    app.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_auth_token_of_the_wrong_type_is_named_as_such() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = ws_support::connect(&app, "", &[]).await;
    client.expect_success("connected").await;
    client
        .send_json(json!({"action": "auth", "id": 1, "token": 5}))
        .await;
    let error = client.expect_error(400).await;
    assert_eq!(error["id"], 1, "{error}");
    assert!(
        error["msg"]
            .as_str()
            .is_some_and(|m| m.contains("token must be a string")),
        "{error}"
    );
    // The session still accepts a good token afterwards.
    let token = ws_support::token_for("alice");
    client
        .send_json(json!({"action": "auth", "token": token}))
        .await;
    client.expect_success("authenticated").await;
    app.stop().await.expect("clean shutdown");
}
