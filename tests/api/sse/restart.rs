//! Clean restarts (issue 13, item 6): shutdown seals the hub before any stream gets its final
//! `shutdown` status, that status carries the feed's head as its id, and so every client,
//! filtered or not, resumes after the restart without a reset and without missing an event
//! the publish API acknowledged.

use crate::common;

use std::time::Duration;

use common::{SseClient, SseEvent, publish, spawn_app_with, test_settings};
use serde_json::json;
use tickgate::settings::Settings;

const WAIT: Duration = Duration::from_secs(10);

fn store_settings(dir: &std::path::Path) -> Settings {
    let mut settings = test_settings();
    settings.store.enabled = true;
    settings.store.data_dir = dir.to_path_buf();
    settings
}

fn trade(symbol: &str, id: u64) -> serde_json::Value {
    json!({"T":"t","S":symbol,"i":id,"x":"T","p":100.0 + id as f64,"s":1,
           "t":chrono::Utc::now().to_rfc3339(),"c":["@"]})
}

/// Reads events until one satisfies `done`, returning it.
async fn until(client: &mut SseClient, done: impl Fn(&SseEvent) -> bool) -> SseEvent {
    loop {
        let event = client.expect_event(WAIT).await;
        if done(&event) {
            return event;
        }
    }
}

#[tokio::test]
async fn a_filtered_client_resumes_after_a_clean_restart_without_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(store_settings(dir.path())).await;
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=MSFT", &[]).await;
    until(&mut client, |e| e.event == "snapshot").await;
    assert_eq!(publish(&app, trade("MSFT", 1)).await.0, 200);
    // Events the filter does not match move the feed's head past the client's last id.
    for id in 2..5 {
        assert_eq!(publish(&app, trade("AAPL", id)).await.0, 200);
    }
    let seen = until(&mut client, |e| e.event == "trade").await;
    let head = app
        .state
        .hub
        .cursor(tickgate::hub::Feed::Market)
        .to_string();
    assert_ne!(seen.id.as_deref(), Some(head.as_str()));

    let stopping = tokio::spawn(app.stop());
    let status = until(&mut client, |e| e.event == "status").await;
    assert_eq!(status.json()["sc"], "shutdown");
    assert_eq!(
        status.id.as_deref(),
        Some(head.as_str()),
        "the shutdown status carries the head"
    );
    stopping.await.expect("join").expect("clean stop");

    let app = spawn_app_with(store_settings(dir.path())).await;
    assert_eq!(publish(&app, trade("MSFT", 5)).await.0, 200);
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=MSFT",
        &[("Last-Event-ID", &head)],
    )
    .await;
    let retry = client.expect_event(WAIT).await;
    assert!(retry.retry.is_some(), "{retry:?}");
    let first = client.expect_event(WAIT).await;
    assert_eq!(first.event, "trade", "resumed without a reset: {first:?}");
    assert_eq!(first.json()["i"], 5);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn once_the_hub_is_shut_down_the_publish_api_answers_503_shutting_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(store_settings(dir.path())).await;
    assert_eq!(publish(&app, trade("AAPL", 1)).await.0, 200);
    let head = app.state.hub.cursor(tickgate::hub::Feed::Market);
    app.state.hub.shut_down();
    let (status, body) = publish(&app, trade("AAPL", 2)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 50310001, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down")),
        "{body}"
    );
    // Nothing slipped in behind the head the streams were given.
    assert_eq!(app.state.hub.cursor(tickgate::hub::Feed::Market), head);
    app.stop().await.expect("stop");
}
