//! Private streams at the exchange boundary, with the real store: every trade update carries a
//! per-user `seq` stored with it, a resume replays exactly what was missed (or resets when it
//! cannot), and a `client_order_id` names one order per user, across concurrent submits and
//! restarts.
use crate::common;
use crate::store_support::{Backend, StoreFixture};

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tickgate::settings::Settings;
use tickgate::store::{StoreError, StoredOrder, TradingBatch};
use tickgate::trading::api::{
    Order, OrderError, OrderRequest, OrderStatus, ResetReason, Resume, TradeUpdate, TradingApi,
    UserEvent,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn store_settings(fixture: &StoreFixture) -> Settings {
    fixture.settings()
}

fn order(qty: &str, side: &str, order_type: &str, limit: Option<&str>) -> OrderRequest {
    OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some(qty.into()),
        side: Some(side.into()),
        order_type: Some(order_type.into()),
        time_in_force: Some("gtc".into()),
        limit_price: limit.map(String::from),
        ..OrderRequest::default()
    }
}

fn with_client_id(request: OrderRequest, client_order_id: &str) -> OrderRequest {
    OrderRequest {
        client_order_id: Some(client_order_id.into()),
        ..request
    }
}

/// Places a few orders for `user`: a filled market buy, a resting limit, its cancel.
async fn trade_a_little(trading: &Arc<dyn TradingApi>, user: &str) {
    trading
        .submit(user, order("3", "buy", "market", None))
        .await
        .expect("market buy");
    let resting = trading
        .submit(user, order("2", "buy", "limit", Some("50.00")))
        .await
        .expect("resting limit");
    trading
        .cancel(user, tickgate::trading::api::OrderRef::Id(resting.id))
        .await
        .expect("cancel");
}

/// Everything the receiver holds right now.
fn drain(events: &mut tokio::sync::broadcast::Receiver<UserEvent>) -> Vec<TradeUpdate> {
    let mut out = Vec::new();
    while let Ok(UserEvent::TradeUpdate(update)) = events.try_recv() {
        out.push(*update);
    }
    out
}

fn seqs(updates: &[TradeUpdate]) -> Vec<u64> {
    updates.iter().map(|u| u.seq).collect()
}

async fn replay(trading: &Arc<dyn TradingApi>, user: &str, since: u64) -> (u64, Vec<TradeUpdate>) {
    match trading.updates_since(user, since).await.expect("resume") {
        Resume::Replay { seq, updates } => (seq, updates),
        Resume::Reset(snapshot) => panic!("expected a replay after {since}, got {snapshot:?}"),
    }
}

async fn every_update_is_stored_under_its_seq_and_the_sequence_continues_after_a_restart(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let mut alice = trading.user_events("alice");
    let mut bob = trading.user_events("bob");
    trade_a_little(&trading, "alice").await;
    trade_a_little(&trading, "bob").await;
    trade_a_little(&trading, "alice").await;
    let sent_to_alice = drain(&mut alice);
    let sent_to_bob = drain(&mut bob);
    let count = sent_to_alice.len() as u64;
    assert!(count >= 6, "{sent_to_alice:?}");
    assert_eq!(seqs(&sent_to_alice), (1..=count).collect::<Vec<_>>());
    assert_eq!(
        seqs(&sent_to_bob),
        (1..=sent_to_bob.len() as u64).collect::<Vec<_>>(),
        "each user has a sequence of their own"
    );
    // What was sent is what is stored, update for update.
    let store = app.state.store.clone().expect("store");
    let stored = store
        .trading
        .updates_between("alice", 0, u64::MAX)
        .await
        .expect("stored updates");
    assert_eq!(stored, sent_to_alice);
    app.stop().await.expect("clean stop");

    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let (seq, replayed) = replay(&trading, "alice", 0).await;
    assert_eq!(seq, count);
    assert_eq!(replayed, sent_to_alice, "the whole history, from the store");
    let mut alice = trading.user_events("alice");
    trading
        .submit("alice", order("1", "buy", "market", None))
        .await
        .expect("after the restart");
    let next = drain(&mut alice);
    assert_eq!(
        next.first().map(|u| u.seq),
        Some(count + 1),
        "numbering goes on where it stopped"
    );
    app.stop().await.expect("clean stop");
}

async fn a_resume_replays_exactly_what_was_missed_or_resets_with_the_state_at_the_current_seq(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let mut settings = store_settings(&fixture);
    settings.trading.max_resume_updates = 4;
    let app = common::spawn_app_with(settings).await;
    let trading = app.state.trading.clone();
    let mut alice = trading.user_events("alice");
    trade_a_little(&trading, "alice").await;
    let resting = trading
        .submit("alice", order("1", "buy", "limit", Some("40.00")))
        .await
        .expect("resting");
    let all = drain(&mut alice);
    let head = all.last().expect("updates").seq;

    let (seq, updates) = replay(&trading, "alice", head - 2).await;
    assert_eq!(seq, head);
    assert_eq!(updates, all[all.len() - 2..].to_vec());
    let (seq, updates) = replay(&trading, "alice", head).await;
    assert_eq!(
        (seq, updates.len()),
        (head, 0),
        "up to date: nothing to replay"
    );

    let reset = |resume: Resume| match resume {
        Resume::Reset(snapshot) => *snapshot,
        Resume::Replay { .. } => panic!("expected a reset"),
    };
    let ahead = reset(
        trading
            .updates_since("alice", head + 10)
            .await
            .expect("ahead"),
    );
    assert_eq!(ahead.reason, ResetReason::Ahead);
    assert_eq!((ahead.since, ahead.seq), (head + 10, head));
    assert_eq!(ahead.orders, vec![resting.clone()], "the open orders");
    let portfolio = trading.portfolio("alice").await.expect("portfolio");
    assert_eq!(ahead.account.cash, portfolio.cash);
    assert_eq!(ahead.account.positions, portfolio.positions);

    // More missed updates than one resume replays.
    let far = reset(trading.updates_since("alice", 0).await.expect("far behind"));
    assert_eq!((far.reason, far.seq), (ResetReason::TooOld, head));

    // Past the retention: the stored updates are pruned, the sequence is not.
    let store = app.state.store.clone().expect("store");
    let later = Utc::now() + chrono::Duration::seconds(1);
    let pruned = store
        .trading
        .prune_updates(later, 1000)
        .await
        .expect("prune");
    assert_eq!(pruned, head);
    let old = reset(
        trading
            .updates_since("alice", head - 1)
            .await
            .expect("too old"),
    );
    assert_eq!((old.reason, old.seq), (ResetReason::TooOld, head));
    app.stop().await.expect("clean stop");

    // The rebuilt exchange agrees with a store whose updates were all pruned.
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let (seq, _) = replay(&app.state.trading, "alice", head).await;
    assert_eq!(seq, head);
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn without_a_store_a_short_resume_is_served_from_memory() {
    let app = common::spawn_app().await;
    let trading = app.state.trading.clone();
    trade_a_little(&trading, "alice").await;
    let (seq, updates) = replay(&trading, "alice", 1).await;
    assert!(seq >= 3);
    assert_eq!(seqs(&updates), (2..=seq).collect::<Vec<_>>());
    app.stop().await.expect("clean stop");
}

fn assert_names(error: &OrderError, order: &Order) {
    assert_eq!(
        error.code,
        OrderError::DUPLICATE_CLIENT_ORDER_ID,
        "{error:?}"
    );
    assert!(
        error.message.contains("client_order_id must be unique"),
        "{}",
        error.message
    );
    assert_eq!(
        error.order.as_ref().map(|o| o.id.as_str()),
        Some(order.id.as_str()),
        "the refusal carries the existing order"
    );
}

async fn one_client_order_id_makes_one_order_under_concurrent_retries_and_after_restarts(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let request = with_client_id(order("5", "buy", "limit", Some("60.00")), "retry-me");
    let attempts = (0..8).map(|_| {
        let trading = trading.clone();
        let request = request.clone();
        tokio::spawn(async move { trading.submit("alice", request).await })
    });
    let results: Vec<Result<Order, OrderError>> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|joined| joined.expect("task"))
        .collect();
    let accepted: Vec<&Order> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 1, "{results:?}");
    let first = accepted[0].clone();
    for result in &results {
        if let Err(error) = result {
            assert_names(error, &first);
        }
    }
    let found = trading
        .order_by_client_id("alice", "retry-me")
        .await
        .expect("lookup");
    assert_eq!(found, first);
    let missing = trading
        .order_by_client_id("alice", "never-sent")
        .await
        .expect_err("unknown");
    assert_eq!(missing.code, OrderError::NOT_FOUND);
    // Another user may use the same id.
    trading
        .submit("bob", request.clone())
        .await
        .expect("bob's own order");
    app.stop().await.expect("clean stop");

    // After a restart, with the exchange keeping almost no finished orders in memory.
    let mut settings = store_settings(&fixture);
    settings.trading.closed_orders_kept = 1;
    let app = common::spawn_app_with(settings.clone()).await;
    let trading = app.state.trading.clone();
    let error = trading
        .submit("alice", request.clone())
        .await
        .expect_err("still a duplicate");
    assert_names(&error, &first);
    let canceled = trading
        .cancel(
            "alice",
            tickgate::trading::api::OrderRef::ClientOrderId("retry-me".into()),
        )
        .await
        .expect("cancel");
    // Two more finished orders push it out of memory; the store still answers.
    for _ in 0..2 {
        trading
            .submit("alice", order("1", "buy", "market", None))
            .await
            .expect("filler");
    }
    let error = trading
        .submit("alice", request.clone())
        .await
        .expect_err("a duplicate of a forgotten order");
    assert_names(&error, &first);
    assert_eq!(error.order.as_deref(), Some(&canceled), "as it stands now");
    assert_eq!(canceled.status, OrderStatus::Canceled);
    let found = trading
        .order_by_client_id("alice", "retry-me")
        .await
        .expect("from the store");
    assert_eq!(found, canceled);
    app.stop().await.expect("clean stop");
}

async fn the_store_itself_refuses_a_second_order_with_the_same_client_order_id(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let first = trading
        .submit(
            "alice",
            with_client_id(order("1", "buy", "limit", Some("10.00")), "only-once"),
        )
        .await
        .expect("first");
    let store = app.state.store.clone().expect("store");
    let mut copy = first.clone();
    copy.id = "another-id".into();
    let result = store
        .trading
        .commit(TradingBatch {
            events: vec![r#"{"e":"not_replayed"}"#.into()],
            orders: vec![StoredOrder {
                username: "alice".into(),
                order: copy,
            }],
            ..TradingBatch::default()
        })
        .await;
    assert!(
        // SQLite says "UNIQUE constraint failed", PostgreSQL "violates unique constraint".
        matches!(result, Err(StoreError::Database { ref detail, .. })
            if detail.to_lowercase().contains("unique")),
        "{result:?}"
    );
    let stored = store
        .trading
        .order_by_client_id("alice", "only-once")
        .await
        .expect("read");
    assert_eq!(stored.map(|o| o.id), Some(first.id));
    let _ = tokio::time::timeout(DEADLINE, app.stop()).await;
}

#[tokio::test]
async fn pruning_deletes_the_oldest_updates_first_and_never_leaves_a_hole_in_a_users_sequence() {
    // SQLite only: the test ages rows straight in the file.
    let fixture = StoreFixture::new(Backend::Sqlite);
    let settings = store_settings(&fixture);
    let database = settings.store.database_path();
    let app = common::spawn_app_with(settings).await;
    let trading = app.state.trading.clone();
    // One resting order each, taken in turns: alice 1, bob 1, alice 2, bob 2, alice 3, bob 3.
    for _ in 0..3 {
        for user in ["alice", "bob"] {
            trading
                .submit(user, order("1", "buy", "limit", Some("50.00")))
                .await
                .expect("resting limit");
        }
    }
    // Stored more than an hour ago, except bob 2 and bob 3: as if the clock had stepped back
    // before alice 3 was stored.
    let connection = rusqlite::Connection::open(&database).expect("open the store");
    connection.busy_timeout(DEADLINE).expect("busy timeout");
    let two_hours_ago = (Utc::now() - chrono::Duration::hours(2)).timestamp_micros();
    connection
        .execute(
            "UPDATE trade_updates SET stored_at = ?1
             WHERE NOT (username = 'bob' AND seq >= 2)",
            [two_hours_ago],
        )
        .expect("age the rows");
    let stored = |connection: &rusqlite::Connection| -> Vec<(String, u64)> {
        connection
            .prepare("SELECT username, seq FROM trade_updates ORDER BY rowid")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .and_then(|rows| rows.collect())
            })
            .expect("rows")
    };
    let names = |rows: &[(&str, u64)]| -> Vec<(String, u64)> {
        rows.iter().map(|(u, s)| ((*u).to_owned(), *s)).collect()
    };
    assert_eq!(
        stored(&connection),
        names(&[
            ("alice", 1),
            ("bob", 1),
            ("alice", 2),
            ("bob", 2),
            ("alice", 3),
            ("bob", 3)
        ]),
        "stored in commit order"
    );

    let store = app.state.store.clone().expect("store");
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    let mut removed = Vec::new();
    for _ in 0..3 {
        removed.push(
            store
                .trading
                .prune_updates(an_hour_ago, 2)
                .await
                .expect("prune"),
        );
    }
    // A full chunk, then the old rows before bob 2, then nothing: alice 3 is old but stored
    // after bob 2, so it waits for its turn rather than leaving alice a gap later on.
    assert_eq!(removed, vec![2, 1, 0]);
    assert_eq!(
        stored(&connection),
        names(&[("bob", 2), ("alice", 3), ("bob", 3)])
    );

    let (seq, updates) = replay(&trading, "bob", 1).await;
    assert_eq!((seq, seqs(&updates)), (3, vec![2, 3]));
    let (seq, updates) = replay(&trading, "alice", 2).await;
    assert_eq!((seq, seqs(&updates)), (3, vec![3]));
    match trading.updates_since("alice", 1).await.expect("resume") {
        Resume::Reset(snapshot) => assert_eq!(snapshot.reason, ResetReason::TooOld),
        Resume::Replay { .. } => panic!("alice 2 is pruned: a replay from 1 would have a hole"),
    }
    let _ = tokio::time::timeout(DEADLINE, app.stop()).await;
}

on_both_backends!(
    every_update_is_stored_under_its_seq_and_the_sequence_continues_after_a_restart,
    a_resume_replays_exactly_what_was_missed_or_resets_with_the_state_at_the_current_seq,
    one_client_order_id_makes_one_order_under_concurrent_retries_and_after_restarts,
    the_store_itself_refuses_a_second_order_with_the_same_client_order_id,
);
