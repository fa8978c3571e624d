//! Bar history in the store: kept across restarts, served in pages by `GET /v1/bars`, pruned
//! by retention.
use crate::common;
use crate::store_support::{Backend, StoreFixture};

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{TestApp, publish, spawn_app_with, test_settings};
use serde_json::{Value, json};
use tickgate::settings::Settings;
use tickgate::store::BarQuery;

fn store_settings(fixture: &StoreFixture) -> Settings {
    let mut settings = fixture.settings();
    settings.store.bar_flush_interval = Duration::from_millis(50);
    settings.store.bar_retention = Duration::from_secs(100 * 365 * 24 * 3600);
    settings
}

fn minute(index: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 14, 30, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::minutes(index)
}

fn bar(symbol: &str, time: DateTime<Utc>, close: f64) -> Value {
    json!({"T":"b","S":symbol,"o":close,"h":close + 1.0,"l":close - 1.0,"c":close,
           "v":1000,"n":10,"vw":close,"t":time.to_rfc3339()})
}

async fn publish_bars(app: &TestApp, symbol: &str, minutes: std::ops::Range<i64>) {
    let items: Vec<Value> = minutes
        .map(|m| bar(symbol, minute(m), 100.0 + m as f64))
        .collect();
    let count = items.len();
    let (status, reply) = publish(app, Value::Array(items)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], count, "{reply}");
}

/// Follows `next_page_token` until the last page; returns every bar's time and close.
async fn all_pages(app: &TestApp, query: &str) -> (Vec<(DateTime<Utc>, f64)>, usize) {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url(&format!("/v1/bars?{query}"));
        if let Some(token) = &token {
            url.push_str(&format!("&page_token={token}"));
        }
        let response = client.get(&url).send().await.expect("bars request");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["timeframe"], "1Min");
        pages += 1;
        for bar in body["bars"].as_array().expect("bars array") {
            let time: DateTime<Utc> = bar["t"].as_str().expect("t").parse().expect("time");
            out.push((time, bar["c"].as_f64().expect("close")));
        }
        match body["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => return (out, pages),
        }
        assert!(pages < 100, "paging must end");
    }
}

/// Waits until the store holds `count` bars of `symbol` (the writer flushes in the background).
async fn wait_for_stored(app: &TestApp, symbol: &str, count: usize) {
    let store = app.state.store.as_ref().expect("store enabled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store
            .history
            .bars(BarQuery {
                symbol: symbol.into(),
                start: None,
                end: None,
                limit: 10_000,
            })
            .await
            .expect("query");
        if stored.len() >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} bars stored",
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bar_history_is_continuous_across_a_restart_and_served_in_pages(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_bars(&app, "AAPL", 0..30).await;
    publish_bars(&app, "MSFT", 0..5).await;
    app.stop().await.expect("clean stop");

    let app = spawn_app_with(store_settings(&fixture)).await;
    publish_bars(&app, "AAPL", 30..60).await;
    let (bars, pages) = all_pages(&app, "symbol=AAPL&timeframe=1Min&limit=25").await;
    assert_eq!(pages, 3, "60 bars in pages of 25");
    let expected: Vec<(DateTime<Utc>, f64)> =
        (0..60).map(|m| (minute(m), 100.0 + m as f64)).collect();
    assert_eq!(
        bars, expected,
        "every minute once, in order, across the restart"
    );

    // A range inside the stored part, from the store alone (memory holds only 30..60 now).
    let (range, _) = all_pages(
        &app,
        &format!(
            "symbol=AAPL&start={}&end={}&limit=7",
            minute(10).to_rfc3339().replace('+', "%2B"),
            minute(20).to_rfc3339().replace('+', "%2B")
        ),
    )
    .await;
    let times: Vec<DateTime<Utc>> = range.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, (10..20).map(minute).collect::<Vec<_>>());
    // Other symbols are kept apart.
    let (msft, _) = all_pages(&app, "symbol=MSFT").await;
    assert_eq!(msft.len(), 5);
    // The writer counts bars just after their commit: poll until the count shows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(app.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metrics.contains("tickgate_store_bars_written_total 30")
            && metrics.contains("tickgate_store_transactions_total{result=\"ok\"}")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.expect("clean stop");
}

async fn a_bar_updated_within_its_minute_is_stored_once_with_its_latest_values(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let app = spawn_app_with(store_settings(&fixture)).await;
    let (status, _) = publish(&app, json!([bar("AAPL", minute(0), 100.0)])).await;
    assert_eq!(status, 200);
    wait_for_stored(&app, "AAPL", 1).await;
    let (status, _) = publish(&app, json!([bar("AAPL", minute(0), 105.0)])).await;
    assert_eq!(status, 200);
    app.stop().await.expect("clean stop");
    let app = spawn_app_with(store_settings(&fixture)).await;
    let (bars, _) = all_pages(&app, "symbol=AAPL").await;
    assert_eq!(bars, vec![(minute(0), 105.0)]);
    app.stop().await.expect("clean stop");
}

async fn bars_older_than_the_retention_are_pruned(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let mut settings = store_settings(&fixture);
    settings.store.bar_retention = Duration::from_secs(24 * 3600);
    settings.store.prune_interval = Duration::from_millis(200);
    let app = spawn_app_with(settings).await;
    // Whole seconds: the store keeps bar times to the microsecond.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let old = now - chrono::Duration::days(3);
    let (status, reply) = publish(
        &app,
        json!([bar("AAPL", old, 90.0), bar("AAPL", now, 100.0)]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let store = app.state.store.clone().expect("store enabled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store
            .history
            .bars(BarQuery {
                symbol: "AAPL".into(),
                start: None,
                end: None,
                limit: 100,
            })
            .await
            .expect("query");
        let times: Vec<DateTime<Utc>> = stored.iter().map(|b| b.time).collect();
        if times.len() == 1 && times[0] == now {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old bar still stored: {times:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bars_page_from_memory_when_the_store_is_disabled_and_bad_tokens_are_refused() {
    let app = spawn_app_with(test_settings()).await;
    assert!(app.state.store.is_none());
    publish_bars(&app, "AAPL", 0..10).await;
    let (bars, pages) = all_pages(&app, "symbol=AAPL&limit=4").await;
    assert_eq!(pages, 3);
    assert_eq!(bars.len(), 10);
    let response = reqwest::get(app.url("/v1/bars?symbol=AAPL&page_token=nonsense"))
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("page_token")),
        "{body}"
    );
    app.stop().await.expect("clean stop");
}

on_both_backends!(
    bar_history_is_continuous_across_a_restart_and_served_in_pages,
    a_bar_updated_within_its_minute_is_stored_once_with_its_latest_values,
    bars_older_than_the_retention_are_pruned,
);
