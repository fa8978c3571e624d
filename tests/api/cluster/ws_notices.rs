//! What a WebSocket session sees of the cluster, driven through the hub directly on a single
//! in-process node: status notices outside the log, and a feed reset closing the session.

use std::time::Duration;

use serde_json::json;
use tickgate::hub::Feed;

use crate::common::{publish, spawn_app_with};
use crate::ws_support::{connect_as, ws_settings};

#[tokio::test]
async fn a_cluster_notice_reaches_a_market_session_between_sequenced_events() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL"]})).await;
    let trade = |id: u64, second: u32| {
        json!({"T":"t","S":"AAPL","i":id,"x":"V","p":10.0,"s":1,
               "t":format!("2026-01-02T14:30:{second:02}Z"),"c":[]})
    };
    publish(&app, trade(1, 1)).await;
    let first = client.expect("t").await;
    assert_eq!(first["i"], 1);
    app.state
        .hub
        .notify_status("cluster_down", "redis unreachable");
    let notice = client.expect("s").await;
    assert_eq!(notice["sc"], "cluster_down");
    // The notice did not move the session's position: the next event is not taken for a
    // duplicate, and nothing is skipped.
    publish(&app, trade(2, 2)).await;
    assert_eq!(client.expect("t").await["i"], 2);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_feed_reset_ends_the_session_with_a_reset_status_and_a_1012_close() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trades":["AAPL"]})).await;
    let cursor = app.state.hub.cursor(Feed::Market);
    app.state
        .hub
        .reset_feed(Feed::Market, cursor.epoch + 1, 1, true);
    let (status, _) = client.until("s").await;
    assert_eq!(status["sc"], "reset");
    let close = tokio::time::timeout(Duration::from_secs(5), client.expect_closed())
        .await
        .expect("closed in time")
        .expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);
    app.stop().await.expect("stop");
}
