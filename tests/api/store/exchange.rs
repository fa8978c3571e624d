//! The exchange with a store: rebuilt after a restart with the same cash, positions and open
//! orders, matching resumes, and a step that cannot be stored is never announced.
use crate::common;
use crate::store_support::{Backend, StoreFixture};

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tickgate::market::{MarketEvent, Trade};
use tickgate::settings::Settings;
use tickgate::state::AppState;
use tickgate::store::{
    FillRecord, StoreError, TradingBatch, TradingState, TradingStore, UserRecord,
};
use tickgate::trading::api::{OrderError, OrderQuery, OrderRequest, OrderStatus, TradingApi};
use tickgate::trading::engine::Engine;
use tickgate::trading::exchange::engine_settings;
use tickgate::trading::persist::Persistence;
use tickgate::trading::{ExchangeHandle, MarketInput};
use tokio_util::sync::CancellationToken;

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

fn publish_trade(state: &AppState, price: f64) {
    state
        .hub
        .publish_event(MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id: 1,
            venue: "T".into(),
            price,
            size: 1000.0,
            time: Utc::now(),
            conditions: vec![],
        }))
        .expect("trade published");
}

async fn cash_positions_and_resting_orders_survive_a_restart_and_matching_resumes(
    backend: Backend,
) {
    let fixture = StoreFixture::new(backend);
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let bought = trading
        .submit("alice", order("10", "buy", "market", None))
        .await
        .expect("market buy");
    let resting = trading
        .submit("alice", order("5", "buy", "limit", Some("100.00")))
        .await
        .expect("resting limit");
    assert_eq!(resting.status, OrderStatus::New);
    let before = trading.portfolio("alice").await.expect("portfolio");
    assert_eq!(before.positions[0].qty, dec!(10), "the market order filled");
    app.stop().await.expect("clean stop");

    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let trading = app.state.trading.clone();
    let after = trading.portfolio("alice").await.expect("portfolio");
    assert_eq!(after.cash, before.cash);
    assert_eq!(after.positions.len(), 1);
    assert_eq!(after.positions[0].qty, dec!(10));
    assert_eq!(
        after.positions[0].cost_basis,
        before.positions[0].cost_basis
    );
    assert_eq!(
        after.buying_power, before.buying_power,
        "the resting order still reserves"
    );
    let open = trading
        .orders("alice", OrderQuery::Open)
        .await
        .expect("orders");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0], resting);
    let closed = trading
        .orders("alice", OrderQuery::Closed)
        .await
        .expect("orders");
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].id, bought.id);
    assert_eq!(closed[0].status, OrderStatus::Filled);

    // The market trades through the resting limit: it fills after the restart.
    let mut events = trading.user_events("alice");
    publish_trade(&app.state, 99.0);
    let update = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("a fill in time")
        .expect("event");
    let tickgate::trading::api::UserEvent::TradeUpdate(update) = update;
    assert_eq!(update.order.id, resting.id);
    assert_eq!(update.order.status, OrderStatus::Filled);
    app.stop().await.expect("clean stop");

    // And that fill was stored before it was announced.
    let app = common::spawn_app_with(store_settings(&fixture)).await;
    let portfolio = app
        .state
        .trading
        .portfolio("alice")
        .await
        .expect("portfolio");
    assert_eq!(portfolio.positions[0].qty, dec!(15));
    let store = app.state.store.clone().expect("store");
    let fills = store.trading.fills("alice").await.expect("fills");
    assert!(fills.len() >= 2, "{fills:?}");
    let implied: Decimal = fills.iter().map(FillRecord::cash_delta).sum();
    assert_eq!(portfolio.cash, dec!(100000) + implied);
    app.stop().await.expect("clean stop");
}

/// A store whose every write fails, like a full disk.
struct FailingStore;

impl TradingStore for FailingStore {
    fn commit(&self, _batch: TradingBatch) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async {
            Err(StoreError::DiskFull {
                path: "test.db".into(),
            })
        })
    }
    fn sync_users(&self, _users: Vec<UserRecord>) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn load(&self, _closed: usize) -> BoxFuture<'static, Result<TradingState, StoreError>> {
        Box::pin(async { Ok(TradingState::default()) })
    }
    fn fills(&self, _user: &str) -> BoxFuture<'static, Result<Vec<FillRecord>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn probe(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async {
            Err(StoreError::DiskFull {
                path: "test.db".into(),
            })
        })
    }
    fn updates_between(
        &self,
        _user: &str,
        _after: u64,
        _up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<tickgate::trading::api::TradeUpdate>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn order_by_client_id(
        &self,
        _user: &str,
        _client_order_id: &str,
    ) -> BoxFuture<'static, Result<Option<tickgate::trading::api::Order>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn prune_updates(
        &self,
        _before: chrono::DateTime<chrono::Utc>,
        _max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn fence_token(&self, _name: &str) -> BoxFuture<'static, Result<Option<u64>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn command_reply(&self, _id: &str) -> BoxFuture<'static, Result<Option<String>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn prune_commands(
        &self,
        _before: chrono::DateTime<chrono::Utc>,
        _max_rows: usize,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

#[tokio::test]
async fn a_step_that_cannot_be_stored_is_refused_never_announced_and_halts_trading() {
    let settings = common::test_settings();
    let universe = tickgate::market::SymbolUniverse::new(["AAPL"]);
    let engine = Engine::new(
        engine_settings(&settings.trading, &settings.simulator.initial_prices),
        universe,
    );
    let (handle, tasks) = ExchangeHandle::new(engine, None, 16, 16, 16, CancellationToken::new());
    tasks
        .with_persistence(Arc::new(Persistence::new(Arc::new(FailingStore))))
        .spawn();
    let mut events = handle.user_events("alice");
    let error = handle
        .submit("alice", order("1", "buy", "market", None))
        .await
        .expect_err("not stored, not acknowledged");
    assert_eq!(error.code, OrderError::INTERNAL);
    assert!(error.message.contains("halted"), "{}", error.message);
    handle.push_market(MarketInput::Trade {
        symbol: "AAPL".into(),
        price: dec!(1),
        size: dec!(1),
    });
    handle.sync().await.expect("exchange still answers");
    assert!(events.try_recv().is_err(), "nothing was announced");
    let again = handle
        .submit("alice", order("1", "buy", "limit", Some("1.00")))
        .await
        .expect_err("halted");
    assert!(again.message.contains("halted"));
    let open = handle
        .orders("alice", OrderQuery::All)
        .await
        .expect("orders");
    assert!(
        open.iter().all(|o| o.status != OrderStatus::New),
        "no order was accepted after the halt: {open:?}"
    );
}

on_both_backends!(cash_positions_and_resting_orders_survive_a_restart_and_matching_resumes,);
