//! SSE resume across restarts: after a clean restart the epoch is kept and sequences continue
//! above the old high-water mark, so a client that saw everything resumes with no reset and
//! no gap, and any other client gets an explicit reset; after a crash the epoch changes.
use crate::common;
use crate::store_support::{Backend, StoreFixture};

use std::time::Duration;

use common::{SseClient, TestApp, publish, spawn_app_with};
use serde_json::json;
use tickgate::hub::{Cursor, Feed};
use tickgate::settings::Settings;
use tickgate::store::Store;

fn store_settings(fixture: &StoreFixture) -> Settings {
    fixture.settings()
}

async fn publish_trades(app: &TestApp, ids: std::ops::Range<u64>) {
    let items: Vec<serde_json::Value> = ids
        .map(|i| {
            json!({"T":"t","S":"AAPL","i":i,"x":"V","p":100.0 + i as f64,"s":1,
                   "t":format!("2026-01-02T14:30:{:02}Z", i % 60),"c":[]})
        })
        .collect();
    let (status, reply) = publish(app, serde_json::Value::Array(items)).await;
    assert_eq!(status, 200, "{reply}");
}

const WITHIN: Duration = Duration::from_secs(10);

async fn a_client_that_saw_everything_resumes_across_a_clean_restart_without_gap_or_reset(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_trades(&app, 1..4).await;
    // The client reads the live stream up to the last event before the restart.
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&types=trades&last_event_id=0-0",
        &[],
    )
    .await;
    let _retry = client.expect_event(WITHIN).await;
    let snapshot = client.expect_event(WITHIN).await;
    assert_eq!(snapshot.event, "snapshot");
    let last_seen: Cursor = snapshot.id.expect("snapshot id").parse().expect("cursor");
    assert_eq!(last_seen, app.state.hub.cursor(Feed::Market));
    let before = last_seen;
    app.stop().await.expect("clean stop");

    let app = spawn_app_with(store_settings(&fixture)).await;
    assert_eq!(
        app.state.hub.cursor(Feed::Market),
        before,
        "a clean restart keeps the epoch and the sequence"
    );
    publish_trades(&app, 4..6).await;
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&types=trades",
        &[("Last-Event-ID", &before.to_string())],
    )
    .await;
    let _retry = client.expect_event(WITHIN).await;
    let first = client.expect_event(WITHIN).await;
    assert_eq!(first.event, "trade", "no reset, straight into the replay");
    assert_eq!(first.json()["i"], 4);
    assert_eq!(
        first.id.as_deref(),
        Some(format!("{}-{}", before.epoch, before.seq + 1).as_str())
    );
    let second = client.expect_event(WITHIN).await;
    assert_eq!(second.json()["i"], 5);
    app.stop().await.expect("clean stop");
}

async fn a_client_that_missed_events_before_a_clean_restart_gets_an_explicit_reset(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_trades(&app, 1..4).await;
    let newest = app.state.hub.cursor(Feed::Market);
    app.stop().await.expect("clean stop");

    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_trades(&app, 4..5).await;
    let behind = Cursor {
        epoch: newest.epoch,
        seq: newest.seq - 1,
    };
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&types=trades",
        &[("Last-Event-ID", &behind.to_string())],
    )
    .await;
    let _retry = client.expect_event(WITHIN).await;
    let snapshot = client.expect_event(WITHIN).await;
    assert_eq!(snapshot.event, "snapshot");
    let data = snapshot.json();
    assert_eq!(data["reset"], true, "{data}");
    assert!(
        data["reason"].as_str().is_some_and(|r| r.contains("older")),
        "{data}"
    );
    app.stop().await.expect("clean stop");
}

async fn after_a_crash_the_epoch_changes_and_an_old_cursor_gets_an_explicit_reset(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_trades(&app, 1..4).await;
    let before = app.state.hub.cursor(Feed::Market);
    app.stop().await.expect("clean stop");

    // A run that never records a clean shutdown, like a process killed with SIGKILL.
    let crashed = Store::open(&store_settings(&fixture).store).expect("open");
    assert_eq!(crashed.feed_start.epoch, before.epoch);
    drop(crashed);

    let app = spawn_app_with(store_settings(&fixture)).await;
    let after = app.state.hub.cursor(Feed::Market);
    assert!(after.epoch > before.epoch, "{after} after {before}");
    assert_eq!(after.seq, 0, "history starts afresh");
    publish_trades(&app, 4..5).await;
    let mut client = SseClient::connect(
        app.port,
        "/v1/stream/market?symbols=AAPL&types=trades",
        &[("Last-Event-ID", &before.to_string())],
    )
    .await;
    let _retry = client.expect_event(WITHIN).await;
    let snapshot = client.expect_event(WITHIN).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["reset"], true);
    app.stop().await.expect("clean stop");
}

on_both_backends!(
    a_client_that_saw_everything_resumes_across_a_clean_restart_without_gap_or_reset,
    a_client_that_missed_events_before_a_clean_restart_gets_an_explicit_reset,
    after_a_crash_the_epoch_changes_and_an_old_cursor_gets_an_explicit_reset,
);
