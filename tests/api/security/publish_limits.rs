//! Issue 13 item 3: published items are bounded field by field (a 1 MB headline is refused
//! with 42210130 naming the field), and a replay window is bounded in bytes as well as in
//! events, with what it holds and what it evicted on `/metrics`.

use serde_json::{Value, json};

use crate::common::{TestApp, publish, spawn_app_with, test_settings};

fn news(id: u64, headline: &str, summary: &str) -> Value {
    json!({"T":"n","id":id,"headline":headline,"summary":summary,"author":"desk","source":"test",
           "symbols":["AAPL"],"created_at":"2026-01-02T14:30:00Z","updated_at":"2026-01-02T14:30:00Z"})
}

async fn metric(app: &TestApp, line_start: &str) -> f64 {
    let text = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} in /metrics"))
}

#[tokio::test]
async fn oversize_fields_are_refused_by_name_and_big_news_stays_within_the_window_budget() {
    let mut settings = test_settings();
    settings.hub.replay_window_bytes = 1 << 20;
    let app = spawn_app_with(settings).await;

    // Each oversize field is refused with its name and limit; the rest of the batch goes in.
    let huge = "h".repeat(1_000_000);
    let mut long_url = news(2, "fine", "");
    long_url["url"] = json!("u".repeat(3000));
    let mut many_symbols = news(3, "fine", "");
    many_symbols["symbols"] = json!(vec!["AAPL"; 65]);
    let (status, reply) = publish(
        &app,
        json!([
            news(1, &huge, ""),
            long_url,
            many_symbols,
            news(4, "fine", &"s".repeat(20_000)),
            news(5, "ok", "")
        ]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 1, "{reply}");
    let rejected = reply["rejected"].as_array().expect("rejected");
    let reasons: Vec<(u64, u64, &str)> = rejected
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
        reasons,
        vec![
            (0, 42210130, "too_long"),
            (1, 42210130, "too_long"),
            (2, 42210130, "too_long"),
            (3, 42210130, "too_long")
        ],
        "{reply}"
    );
    let message = rejected[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("headline is too long: 1000000 bytes, at most 1024"),
        "{message}"
    );
    assert!(
        rejected[2]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("65 entries")
    );

    // 300 news items as large as the limits allow (~17 KiB each, ~5 MiB in all): the
    // window keeps about 1 MiB and says so.
    let headline = "H".repeat(1024);
    let summary = "S".repeat(16 * 1024);
    for batch in 0..30u64 {
        let items: Vec<Value> = (0..10)
            .map(|i| news(100 + batch * 10 + i, &headline, &summary))
            .collect();
        let (status, reply) = publish(&app, Value::Array(items)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["accepted"], 10, "{reply}");
    }
    let held = metric(&app, "tickgate_replay_window_bytes{feed=\"news\"}").await;
    assert!(
        held > 0.0 && held <= f64::from(1 << 20),
        "news window holds {held} bytes"
    );
    let by_budget = metric(
        &app,
        "tickgate_replay_window_evictions_total{feed=\"news\",reason=\"budget\"}",
    )
    .await;
    assert!(by_budget >= 240.0, "{by_budget} evictions by budget");
    let by_count = metric(
        &app,
        "tickgate_replay_window_evictions_total{feed=\"news\",reason=\"count\"}",
    )
    .await;
    assert_eq!(by_count, 0.0);
    app.stop().await.expect("stop");
}
