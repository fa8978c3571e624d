use crate::common;

use std::time::Duration;

use common::{SseClient, publish, spawn_app};
use serde_json::json;

#[tokio::test]
async fn market_stream_sends_retry_then_snapshot_then_live_trades() {
    let app = spawn_app().await;
    let mut client = SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL", &[]).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    let retry = client.expect_event(Duration::from_secs(5)).await;
    assert_eq!(retry.retry, Some(2000));
    let snapshot = client.expect_event(Duration::from_secs(5)).await;
    assert_eq!(snapshot.event, "snapshot");
    let (status, reply) = publish(
        &app,
        json!([{"T":"t","S":"AAPL","i":99,"x":"V","p":101.25,"s":5,"t":"2026-01-02T14:30:00Z","c":[]}]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let trade = client.expect_event(Duration::from_secs(5)).await;
    assert_eq!(trade.event, "trade");
    assert_eq!(trade.json()["i"], 99);
    app.stop().await.expect("clean stop");
}
