//! Orders per second with durable storage: each "order" is the batch one exchange step writes
//! (order row, fill, account, position), committed with `synchronous = FULL` in WAL mode.
//! Measured one at a time (every order waits for its own fsync) and with many in flight (the
//! writer thread group-commits them, one fsync per group).
//!
//! A second group measures whole exchange steps through `TradingApi` with the store attached:
//! each iteration submits a resting limit order and cancels it (two durable steps), from 1 or
//! 16 concurrent users; the exchange stores all queued commands in one transaction.
//!
//! Run: `cargo bench --bench store`. The database lives in a temporary directory on the same
//! file system as the system temp dir (set TMPDIR to measure another disk).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tickgate::settings::StoreSettings;
use tickgate::store::{
    AccountRecord, FillRecord, PositionRecord, Store, StoreError, StoredOrder, StoredUpdate,
    TradingBatch,
};
use tickgate::trading::api::{
    Order, OrderStatus, OrderType, Side, TimeInForce, TradeEvent, TradeUpdate,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn order_batch() -> TradingBatch {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let now = Utc::now();
    let username = format!("user{}", n % 16);
    let id = format!("order-{n}");
    let order = Order {
        id: id.clone(),
        client_order_id: format!("c-{n}"),
        symbol: "AAPL".into(),
        side: Side::Buy,
        order_type: OrderType::Market,
        time_in_force: TimeInForce::Day,
        qty: dec!(10),
        filled_qty: dec!(10),
        filled_avg_price: Some(dec!(227.51)),
        limit_price: None,
        stop_price: None,
        status: OrderStatus::Filled,
        created_at: now,
        updated_at: now,
        submitted_at: now,
        filled_at: Some(now),
        canceled_at: None,
        expired_at: None,
        replaced_by: None,
        replaces: None,
        commission: Decimal::ZERO,
    };
    // A filled market order sends two trade updates (new, fill); both are stored.
    let updates = [TradeEvent::New, TradeEvent::Fill]
        .into_iter()
        .zip(1..)
        .map(|(event, k)| StoredUpdate {
            username: username.clone(),
            update: TradeUpdate {
                seq: 2 * n + k,
                event,
                execution_id: None,
                price: None,
                qty: None,
                position_qty: None,
                timestamp: now,
                order: order.clone(),
            },
        })
        .collect();
    TradingBatch {
        updates,
        events: vec![format!(
            "{{\"e\":\"order_filled\",\"order_id\":\"order-{n}\"}}"
        )],
        orders: vec![StoredOrder {
            username: username.clone(),
            order: order.clone(),
        }],
        fills: vec![FillRecord {
            execution_id: format!("exec-{n}"),
            order_id: id,
            username: username.clone(),
            symbol: "AAPL".into(),
            side: Side::Buy,
            qty: dec!(10),
            price: dec!(227.51),
            commission: Decimal::ZERO,
            timestamp: now,
        }],
        accounts: vec![AccountRecord {
            username: username.clone(),
            initial_cash: dec!(100000),
            cash: dec!(97724.90),
            realized_pl: Decimal::ZERO,
            commissions: Decimal::ZERO,
            updated_at: now,
        }],
        positions: vec![PositionRecord {
            username,
            symbol: "AAPL".into(),
            qty: dec!(10),
            cost_basis: dec!(2275.1),
        }],
        ..TradingBatch::default()
    }
}

fn bench_commits(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = {
        let _guard = runtime.enter();
        Arc::new(
            Store::open(&StoreSettings {
                data_dir: dir.path().to_path_buf(),
                ..StoreSettings::default()
            })
            .expect("open store")
            .store,
        )
    };
    let mut group = c.benchmark_group("store_orders");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("durable_one_at_a_time", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    store.trading.commit(order_batch()).await.expect("commit");
                }
                start.elapsed()
            })
        })
    });
    for in_flight in [16usize, 128] {
        group.bench_function(format!("durable_{in_flight}_in_flight"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let mut pending: std::collections::VecDeque<
                        futures::future::BoxFuture<'static, Result<(), StoreError>>,
                    > = std::collections::VecDeque::with_capacity(in_flight);
                    for _ in 0..iters {
                        if pending.len() == in_flight
                            && let Some(oldest) = pending.pop_front()
                        {
                            oldest.await.expect("commit");
                        }
                        pending.push_back(store.trading.commit(order_batch()));
                    }
                    for future in pending {
                        future.await.expect("commit");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn bench_exchange(c: &mut Criterion) {
    use tickgate::trading::ExchangeHandle;
    use tickgate::trading::api::{OrderRef, OrderRequest, TradingApi};
    use tickgate::trading::engine::Engine;
    use tickgate::trading::exchange::engine_settings;
    use tickgate::trading::persist::Persistence;

    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let settings = tickgate::settings::Settings::default();
    let exchange: Arc<dyn TradingApi> = {
        let _guard = runtime.enter();
        let store = Store::open(&StoreSettings {
            data_dir: dir.path().to_path_buf(),
            ..StoreSettings::default()
        })
        .expect("open store")
        .store;
        let universe = tickgate::market::SymbolUniverse::new(settings.market.symbols.clone());
        let engine = Engine::new(
            engine_settings(&settings.trading, &settings.simulator.initial_prices),
            universe,
        );
        let (handle, tasks) = ExchangeHandle::new(
            engine,
            None,
            4096,
            1024,
            1024,
            tokio_util::sync::CancellationToken::new(),
        );
        tasks
            .with_persistence(Arc::new(Persistence::new(Arc::clone(&store.trading))))
            .spawn();
        Arc::new(handle)
    };
    let resting = || OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some("1".into()),
        side: Some("buy".into()),
        order_type: Some("limit".into()),
        time_in_force: Some("gtc".into()),
        limit_price: Some("1.00".into()),
        ..OrderRequest::default()
    };
    let mut group = c.benchmark_group("exchange_orders");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    // Each iteration is two durable steps: the submit and the cancel.
    group.throughput(Throughput::Elements(2));
    for users in [1usize, 16] {
        group.bench_function(format!("durable_submit_cancel_{users}_users"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for user in 0..users {
                        let exchange = Arc::clone(&exchange);
                        let share =
                            iters / users as u64 + u64::from((user as u64) < iters % users as u64);
                        tasks.push(tokio::spawn(async move {
                            let name = format!("bench{user}");
                            for _ in 0..share {
                                let order =
                                    exchange.submit(&name, resting()).await.expect("submit");
                                exchange
                                    .cancel(&name, OrderRef::Id(order.id))
                                    .await
                                    .expect("cancel");
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.expect("user task");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_commits, bench_exchange);
criterion_main!(benches);
