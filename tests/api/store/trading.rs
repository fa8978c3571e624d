//! The trading store on its own, on both backends: batches are atomic, commit in call order,
//! round-trip exact decimals, are refused whole when fenced, and the state loaded after a
//! reopen is what was committed.
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tickgate::store::{
    AccountRecord, CommandRecord, Fence, FillRecord, PositionRecord, Store, StoreError,
    StoreStatus, StoredOrder, TradingBatch, UserRecord,
};

use crate::store_support::{Backend, StoreFixture};
use tickgate::trading::api::{Order, OrderStatus, OrderType, Side, TimeInForce};

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 14, 30, second)
        .single()
        .expect("time")
}

fn order(id: &str, status: OrderStatus, second: u32) -> Order {
    Order {
        id: id.into(),
        client_order_id: format!("c-{id}"),
        symbol: "AAPL".into(),
        side: Side::Buy,
        order_type: OrderType::Limit,
        time_in_force: TimeInForce::Gtc,
        qty: dec!(10),
        filled_qty: Decimal::ZERO,
        filled_avg_price: None,
        limit_price: Some(dec!(126.505)),
        stop_price: None,
        status,
        created_at: at(second),
        updated_at: at(second),
        submitted_at: at(second),
        filled_at: None,
        canceled_at: None,
        expired_at: None,
        replaced_by: None,
        replaces: None,
        commission: Decimal::ZERO,
    }
}

fn fill(execution_id: &str, order_id: &str, qty: Decimal, price: Decimal) -> FillRecord {
    FillRecord {
        execution_id: execution_id.into(),
        order_id: order_id.into(),
        username: "alice".into(),
        symbol: "AAPL".into(),
        side: Side::Buy,
        qty,
        price,
        commission: dec!(0.005),
        timestamp: at(5),
    }
}

fn account(cash: Decimal) -> AccountRecord {
    AccountRecord {
        username: "alice".into(),
        initial_cash: dec!(100000),
        cash,
        realized_pl: Decimal::ZERO,
        commissions: Decimal::ZERO,
        updated_at: at(5),
    }
}

/// Alice's order `id`, new and unfilled, created at `second`.
fn alices_new_order(id: &str, second: u32) -> StoredOrder {
    StoredOrder {
        username: "alice".into(),
        order: order(id, OrderStatus::New, second),
    }
}

/// Commits Alice's fill `x1` (of order `o1`), which later batches collide with.
async fn commit_a_first_fill(store: &Store) {
    store
        .trading
        .commit(TradingBatch {
            fills: vec![fill("x1", "o1", dec!(1), dec!(10))],
            ..TradingBatch::default()
        })
        .await
        .expect("first fill");
}

/// The ids of the open orders the store loads, in its order.
async fn open_order_ids(store: &Store) -> Vec<String> {
    let state = store.trading.load(0).await.expect("load");
    state.open_orders.into_iter().map(|o| o.order.id).collect()
}

async fn committed_orders_fills_and_balances_are_reloaded_exactly_after_a_reopen(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    let mut partially = order("o1", OrderStatus::PartiallyFilled, 1);
    partially.filled_qty = dec!(4);
    partially.filled_avg_price = Some(dec!(126.5));
    let batch = TradingBatch {
        events: vec![r#"{"e":"first"}"#.into(), r#"{"e":"second"}"#.into()],
        orders: vec![
            StoredOrder {
                username: "alice".into(),
                order: partially.clone(),
            },
            StoredOrder {
                username: "alice".into(),
                order: order("o2", OrderStatus::Canceled, 2),
            },
        ],
        fills: vec![fill("x1", "o1", dec!(4), dec!(126.5))],
        accounts: vec![account(dec!(99493.995))],
        positions: vec![PositionRecord {
            username: "alice".into(),
            symbol: "AAPL".into(),
            qty: dec!(4),
            cost_basis: dec!(506),
        }],
        ..TradingBatch::default()
    };
    store.trading.commit(batch).await.expect("commit");
    drop(store);

    let store = fixture.open();
    let state = store.trading.load(10).await.expect("load");
    assert_eq!(state.events, vec![r#"{"e":"first"}"#, r#"{"e":"second"}"#]);
    assert_eq!(
        state.open_orders,
        vec![StoredOrder {
            username: "alice".into(),
            order: partially
        }]
    );
    assert_eq!(state.closed_orders.len(), 1);
    assert_eq!(state.closed_orders[0].order.status, OrderStatus::Canceled);
    assert_eq!(state.accounts, vec![account(dec!(99493.995))]);
    assert_eq!(state.positions.len(), 1);
    assert_eq!(state.positions[0].qty, dec!(4));
    let fills = store.trading.fills("alice").await.expect("fills");
    assert_eq!(fills, vec![fill("x1", "o1", dec!(4), dec!(126.5))]);
    // The books balance: initial cash plus what the fills did equals the stored cash.
    let implied: Decimal = fills.iter().map(FillRecord::cash_delta).sum();
    assert_eq!(dec!(100000) + implied, state.accounts[0].cash);
}

async fn batches_commit_in_call_order_even_when_awaited_out_of_order(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    let mut pending = Vec::new();
    for step in 0..200u32 {
        let mut o = order("o1", OrderStatus::New, 1);
        o.filled_qty = Decimal::from(step);
        pending.push(store.trading.commit(TradingBatch {
            orders: vec![StoredOrder {
                username: "alice".into(),
                order: o,
            }],
            ..TradingBatch::default()
        }));
    }
    // Await from the last to the first: the queue order, not the await order, decides.
    while let Some(future) = pending.pop() {
        future.await.expect("commit");
    }
    let state = store.trading.load(0).await.expect("load");
    assert_eq!(state.open_orders[0].order.filled_qty, dec!(199));
}

async fn a_failing_batch_stores_nothing_while_batches_committed_with_it_are_kept(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    commit_a_first_fill(&store).await;
    // Queued together, so they share one group transaction.
    let good = store.trading.commit(TradingBatch {
        orders: vec![alices_new_order("o9", 9)],
        ..TradingBatch::default()
    });
    let bad = store.trading.commit(TradingBatch {
        orders: vec![alices_new_order("o3", 3)],
        // A duplicate execution id violates the fills key: the whole batch is refused.
        fills: vec![fill("x1", "o3", dec!(1), dec!(10))],
        ..TradingBatch::default()
    });
    let (good, bad) = tokio::join!(good, bad);
    good.expect("good batch");
    assert!(matches!(bad, Err(StoreError::Database { .. })), "{bad:?}");
    let ids = open_order_ids(&store).await;
    assert_eq!(ids, vec!["o9"], "o3 was not stored");
    assert_eq!(store.trading.fills("alice").await.expect("fills").len(), 1);
}

async fn a_position_closed_to_zero_is_removed_and_closed_orders_are_capped_per_user(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    let position = |qty| PositionRecord {
        username: "alice".into(),
        symbol: "AAPL".into(),
        qty,
        cost_basis: dec!(50),
    };
    let mut batch = TradingBatch {
        positions: vec![position(dec!(5))],
        ..TradingBatch::default()
    };
    for i in 0..5u32 {
        batch.orders.push(StoredOrder {
            username: "alice".into(),
            order: order(&format!("f{i}"), OrderStatus::Filled, i),
        });
    }
    store.trading.commit(batch).await.expect("commit");
    store
        .trading
        .commit(TradingBatch {
            positions: vec![position(Decimal::ZERO)],
            ..TradingBatch::default()
        })
        .await
        .expect("close position");
    let state = store.trading.load(2).await.expect("load");
    assert!(state.positions.is_empty());
    let ids: Vec<&str> = state
        .closed_orders
        .iter()
        .map(|o| o.order.id.as_str())
        .collect();
    assert_eq!(ids, vec!["f3", "f4"], "the two most recent, oldest first");
}

async fn a_position_given_twice_in_one_batch_ends_as_the_last_one_says(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    let position = |symbol: &str, qty| PositionRecord {
        username: "alice".into(),
        symbol: symbol.into(),
        qty,
        cost_basis: dec!(50),
    };
    store
        .trading
        .commit(TradingBatch {
            positions: vec![position("AAPL", dec!(5)), position("MSFT", dec!(2))],
            ..TradingBatch::default()
        })
        .await
        .expect("open both");
    // AAPL: changed, then closed; MSFT: closed, then opened again; TSLA: new, twice.
    store
        .trading
        .commit(TradingBatch {
            positions: vec![
                position("AAPL", dec!(7)),
                position("MSFT", Decimal::ZERO),
                position("TSLA", dec!(1)),
                position("AAPL", Decimal::ZERO),
                position("MSFT", dec!(3)),
                position("TSLA", dec!(4)),
            ],
            ..TradingBatch::default()
        })
        .await
        .expect("one batch");
    let state = store.trading.load(0).await.expect("load");
    let held: Vec<(&str, Decimal)> = state
        .positions
        .iter()
        .map(|p| (p.symbol.as_str(), p.qty))
        .collect();
    assert_eq!(held, vec![("MSFT", dec!(3)), ("TSLA", dec!(4))]);
}

async fn users_from_config_are_synced_and_removed_users_are_kept_inactive(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    let user = |name: &str| UserRecord {
        username: name.into(),
        password_hash: format!("$argon2id$hash-of-{name}"),
    };
    store
        .trading
        .sync_users(vec![user("alice"), user("bob")])
        .await
        .expect("sync");
    store
        .trading
        .commit(TradingBatch {
            accounts: vec![account(dec!(100000))],
            ..TradingBatch::default()
        })
        .await
        .expect("account");
    store
        .trading
        .sync_users(vec![user("bob")])
        .await
        .expect("sync");
    let state = store.trading.load(0).await.expect("load");
    assert_eq!(state.users, vec!["bob".to_owned()]);
    assert_eq!(state.accounts.len(), 1, "alice's account is kept");
    let hash = fixture.query_text("SELECT password_hash FROM users WHERE username = 'bob'");
    assert_eq!(hash, "$argon2id$hash-of-bob");
}

async fn concurrent_committers_all_get_durable_replies(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = Arc::new(fixture.open());
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                store
                    .trading
                    .commit(TradingBatch {
                        orders: vec![StoredOrder {
                            username: format!("user{worker}"),
                            order: order(&format!("w{worker}-{i}"), OrderStatus::New, 1),
                        }],
                        ..TradingBatch::default()
                    })
                    .await
                    .expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let state = store.trading.load(0).await.expect("load");
    assert_eq!(state.open_orders.len(), 400);
}

fn fenced(token: u64, order_id: &str, command_id: &str) -> TradingBatch {
    TradingBatch {
        orders: vec![StoredOrder {
            username: "alice".into(),
            order: order(order_id, OrderStatus::New, 1),
        }],
        fills: vec![fill(&format!("x-{order_id}"), order_id, dec!(1), dec!(10))],
        commands: vec![CommandRecord {
            id: command_id.into(),
            reply: format!(r#"{{"ack":"{order_id}"}}"#),
        }],
        fence: Some(Fence {
            name: "exchange".into(),
            token,
        }),
        ..TradingBatch::default()
    }
}

/// The error a batch carrying `token` gets when the store already holds `current`.
fn refused_fence(token: u64, current: u64) -> StoreError {
    StoreError::Fenced {
        name: "exchange".into(),
        token,
        current,
    }
}

async fn a_batch_with_an_older_fencing_token_than_one_already_stored_stores_nothing(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    assert_eq!(
        store.trading.fence_token("exchange").await.expect("read"),
        None
    );
    store
        .trading
        .commit(fenced(7, "o1", "cmd-1"))
        .await
        .expect("first holder");
    store
        .trading
        .commit(fenced(8, "o2", "cmd-2"))
        .await
        .expect("the new holder");
    let refused = store.trading.commit(fenced(7, "o3", "cmd-3")).await;
    assert_eq!(refused, Err(refused_fence(7, 8)));
    assert_eq!(
        store.trading.fence_token("exchange").await.expect("read"),
        Some(8)
    );
    let ids = open_order_ids(&store).await;
    assert_eq!(
        ids,
        vec!["o1", "o2"],
        "nothing of the fenced batch: {ids:?}"
    );
    assert_eq!(store.trading.fills("alice").await.expect("fills").len(), 2);
    assert_eq!(
        store.trading.command_reply("cmd-3").await.expect("read"),
        None
    );
    // The same token again is the same holder: it keeps writing.
    store
        .trading
        .commit(fenced(8, "o4", "cmd-4"))
        .await
        .expect("same token");
    // A fence on another name is independent.
    let mut other = fenced(1, "o5", "cmd-5");
    other.fence = Some(Fence {
        name: "other".into(),
        token: 1,
    });
    store.trading.commit(other).await.expect("other fence");
}

async fn a_fenced_batch_queued_with_good_ones_is_refused_alone(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    store
        .trading
        .commit(fenced(5, "o1", "cmd-1"))
        .await
        .expect("first");
    // Queued together, so they share one group transaction where the writer groups them.
    let stale = store.trading.commit(fenced(4, "o2", "cmd-2"));
    let fresh = store.trading.commit(fenced(6, "o3", "cmd-3"));
    let (stale, fresh) = tokio::join!(stale, fresh);
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    fresh.expect("the newer token");
    let ids = open_order_ids(&store).await;
    assert_eq!(ids, vec!["o1", "o3"]);
    assert_eq!(
        store.trading.fence_token("exchange").await.expect("read"),
        Some(6)
    );
}

async fn command_replies_round_trip_are_never_stored_twice_and_are_pruned_by_age(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    store
        .trading
        .commit(TradingBatch {
            commands: vec![
                CommandRecord {
                    id: "1733400000000-0".into(),
                    reply: r#"{"ok":true,"order":"o1"}"#.into(),
                },
                CommandRecord {
                    id: "1733400000000-1".into(),
                    reply: r#"{"error":"insufficient_buying_power"}"#.into(),
                },
            ],
            ..TradingBatch::default()
        })
        .await
        .expect("commit");
    assert_eq!(
        store
            .trading
            .command_reply("1733400000000-0")
            .await
            .expect("read")
            .as_deref(),
        Some(r#"{"ok":true,"order":"o1"}"#)
    );
    assert_eq!(
        store
            .trading
            .command_reply("1733400000000-1")
            .await
            .expect("read")
            .as_deref(),
        Some(r#"{"error":"insufficient_buying_power"}"#)
    );
    assert_eq!(
        store.trading.command_reply("nope").await.expect("read"),
        None
    );
    // Recording the same command again means it ran twice: the batch is refused whole.
    let again = store
        .trading
        .commit(TradingBatch {
            orders: vec![alices_new_order("o2", 2)],
            commands: vec![CommandRecord {
                id: "1733400000000-0".into(),
                reply: "second".into(),
            }],
            ..TradingBatch::default()
        })
        .await;
    assert!(
        matches!(again, Err(StoreError::Database { .. })),
        "{again:?}"
    );
    assert!(
        store
            .trading
            .load(0)
            .await
            .expect("load")
            .open_orders
            .is_empty()
    );
    // Replies stored before the cut-off are pruned, in bounded chunks.
    let before = store
        .trading
        .prune_commands(Utc::now() - chrono::Duration::hours(1), 10)
        .await
        .expect("prune nothing");
    assert_eq!(before, 0);
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(
        store.trading.prune_commands(later, 1).await.expect("prune"),
        1
    );
    assert_eq!(
        store
            .trading
            .prune_commands(later, 10)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(
        store
            .trading
            .command_reply("1733400000000-0")
            .await
            .expect("read"),
        None
    );
}

async fn a_lone_fenced_batch_leaves_no_row_and_the_store_stays_healthy(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    store
        .trading
        .commit(fenced(9, "o1", "cmd-1"))
        .await
        .expect("the holder");
    // Awaited alone, so the writer runs it as a group of one.
    let refused = store.trading.commit(fenced(3, "o2", "cmd-2")).await;
    assert_eq!(refused, Err(refused_fence(3, 9)));
    assert_eq!(
        store.health.status(),
        StoreStatus::Ok,
        "a refused fence is not a sick store"
    );
    assert_eq!(
        fixture.query_text("SELECT count(*) || '' FROM orders WHERE id = 'o2'"),
        "0"
    );
    assert_eq!(
        fixture.query_text("SELECT count(*) || '' FROM fills WHERE order_id = 'o2'"),
        "0"
    );
    assert_eq!(
        store.trading.command_reply("cmd-2").await.expect("read"),
        None
    );
    assert_eq!(
        store.trading.fence_token("exchange").await.expect("read"),
        Some(9)
    );
    // The holder keeps writing on the same connection afterwards.
    store
        .trading
        .commit(fenced(9, "o3", "cmd-3"))
        .await
        .expect("the holder again");
    assert_eq!(store.health.status(), StoreStatus::Ok);
}

async fn a_lone_batch_failing_on_a_constraint_leaves_nothing_and_the_next_batch_commits(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    commit_a_first_fill(&store).await;
    // The order, the account and the reply come before the fills in the batch; the duplicate
    // execution id fails the fills' statement after they ran.
    let refused = store
        .trading
        .commit(TradingBatch {
            orders: vec![alices_new_order("o2", 2)],
            fills: vec![fill("x1", "o2", dec!(1), dec!(10))],
            accounts: vec![account(dec!(5))],
            commands: vec![CommandRecord {
                id: "cmd-2".into(),
                reply: "{}".into(),
            }],
            fence: Some(Fence {
                name: "exchange".into(),
                token: 4,
            }),
            ..TradingBatch::default()
        })
        .await;
    assert!(
        matches!(refused, Err(StoreError::Database { .. })),
        "{refused:?}"
    );
    assert_eq!(store.health.status(), StoreStatus::Ok, "{refused:?}");
    let state = store.trading.load(0).await.expect("load");
    assert!(state.open_orders.is_empty(), "{:?}", state.open_orders);
    assert!(state.accounts.is_empty(), "{:?}", state.accounts);
    assert_eq!(
        store.trading.command_reply("cmd-2").await.expect("read"),
        None
    );
    assert_eq!(
        store.trading.fence_token("exchange").await.expect("read"),
        None,
        "the fence claimed in the refused batch is rolled back with it"
    );
    store
        .trading
        .commit(TradingBatch {
            orders: vec![alices_new_order("o3", 3)],
            fills: vec![fill("x3", "o3", dec!(1), dec!(10))],
            ..TradingBatch::default()
        })
        .await
        .expect("the next batch");
    let ids = open_order_ids(&store).await;
    assert_eq!(ids, vec!["o3"]);
    assert_eq!(store.trading.fills("alice").await.expect("fills").len(), 2);
}

on_both_backends!(
    a_lone_fenced_batch_leaves_no_row_and_the_store_stays_healthy,
    a_lone_batch_failing_on_a_constraint_leaves_nothing_and_the_next_batch_commits,
    committed_orders_fills_and_balances_are_reloaded_exactly_after_a_reopen,
    batches_commit_in_call_order_even_when_awaited_out_of_order,
    a_failing_batch_stores_nothing_while_batches_committed_with_it_are_kept,
    a_position_closed_to_zero_is_removed_and_closed_orders_are_capped_per_user,
    a_position_given_twice_in_one_batch_ends_as_the_last_one_says,
    users_from_config_are_synced_and_removed_users_are_kept_inactive,
    concurrent_committers_all_get_durable_replies,
    a_batch_with_an_older_fencing_token_than_one_already_stored_stores_nothing,
    a_fenced_batch_queued_with_good_ones_is_refused_alone,
    command_replies_round_trip_are_never_stored_twice_and_are_pruned_by_age,
);
