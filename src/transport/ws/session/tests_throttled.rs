//! Session tests of throttled (`max_rate`) market data through the hub's shared throttles.

use super::*;

/// Drains every wake-up the session has pending now, returning the trade ids it sent.
async fn trades_sent_now(session: &mut WsSession) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Ok(wake) = tokio::time::timeout(Duration::ZERO, session.wait()).await {
        ids.extend(
            objects(&session.on_wake(wake).await)
                .iter()
                .filter(|o| o["T"] == "t")
                .filter_map(|o| o["i"].as_u64()),
        );
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn a_throttled_session_that_changes_symbols_and_rate_loses_and_repeats_nothing() {
    let (mut session, hub) = authenticated(FakeTrading::new());
    session
        .on_text(r#"{"action":"subscribe","trades":["AAPL"],"max_rate":2}"#)
        .await;
    assert_eq!(
        hub.shared_throttle_count(),
        1,
        "the session uses a shared stage"
    );
    hub.publish_event(trade(1)).expect("valid");
    assert_eq!(
        trades_sent_now(&mut session).await,
        vec![1],
        "quiet: at once"
    );
    hub.publish_event(trade(2)).expect("valid");
    hub.publish_event(trade(3)).expect("valid");
    assert!(
        trades_sent_now(&mut session).await.is_empty(),
        "AAPL's window runs"
    );
    // Another rate while trade 3 is held: it comes at once, not lost with the old stage.
    let out = session
        .on_text(r#"{"action":"subscribe","quotes":["MSFT"],"max_rate":5}"#)
        .await;
    let mut ids: Vec<u64> = objects(&out)
        .iter()
        .filter(|o| o["T"] == "t")
        .filter_map(|o| o["i"].as_u64())
        .collect();
    ids.extend(trades_sent_now(&mut session).await);
    assert_eq!(ids, vec![3], "the old stage's held trade, once");
    hub.publish_event(trade(4)).expect("valid");
    tokio::time::advance(Duration::from_millis(300)).await;
    let mut later = trades_sent_now(&mut session).await;
    // The rate removed: every trade from now on, nothing twice.
    session
        .on_text(r#"{"action":"subscribe","max_rate":null}"#)
        .await;
    for id in 5..=7 {
        hub.publish_event(trade(id)).expect("valid");
    }
    later.extend(trades_sent_now(&mut session).await);
    assert_eq!(later, vec![4, 5, 6, 7]);
    hub.publish_event(trade(8)).expect("valid");
    assert_eq!(trades_sent_now(&mut session).await, vec![8]);
    assert_eq!(hub.shared_throttle_count(), 0, "both stages dropped");
}
