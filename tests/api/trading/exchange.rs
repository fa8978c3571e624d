//! The exchange as the running application wires it: `AppState::trading` follows the hub's
//! market feed, announces trade updates and book deltas, and expires day orders at the close.

use crate::common::{self, Backend, TestApp};

use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tickgate::market::{MarketEvent, Quote, Status, Trade};
use tickgate::trading::api::{OrderQuery, OrderRequest, OrderStatus, TradeEvent, UserEvent};
use tickgate::trading::book::SyntheticBook;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(10);

/// Publishes as the backend's producers do: into the hub on a single node, through the
/// publish API (and so the shared log) on a cluster node, whose hub only Redis may feed.
async fn publish_event(app: &TestApp, event: MarketEvent) {
    if app.backing.is_none() {
        app.state.hub.publish_event(event).expect("published");
        return;
    }
    let body = serde_json::to_value(&event).expect("event encodes");
    let (status, reply) = common::publish(app, body).await;
    assert_eq!(status, 200, "{reply}");
}

async fn publish_quote(app: &TestApp, symbol: &str, bid: f64, ask: f64) {
    publish_event(
        app,
        MarketEvent::Quote(Quote {
            symbol: symbol.into(),
            bid_price: bid,
            bid_size: 300.0,
            bid_venue: "T".into(),
            ask_price: ask,
            ask_size: 200.0,
            ask_venue: "T".into(),
            time: Utc::now(),
        }),
    )
    .await;
}

async fn publish_trade(app: &TestApp, symbol: &str, price: f64, size: f64) {
    publish_event(
        app,
        MarketEvent::Trade(Trade {
            symbol: symbol.into(),
            id: 1,
            venue: "T".into(),
            price,
            size,
            time: Utc::now(),
            conditions: vec![],
        }),
    )
    .await;
}

fn limit_buy(qty: &str, price: &str, tif: &str) -> OrderRequest {
    OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some(qty.into()),
        side: Some("buy".into()),
        order_type: Some("limit".into()),
        time_in_force: Some(tif.into()),
        limit_price: Some(price.into()),
        ..OrderRequest::default()
    }
}

// These tests run on a single node and on one node of a cluster with PostgreSQL.
crate::on_both_backends!(
    an_order_through_app_state_is_acknowledged_then_announced_with_fills,
    a_resting_limit_fills_when_the_published_market_crosses_it,
    a_market_closed_status_expires_day_orders_but_not_gtc_orders,
    published_quotes_move_the_book_and_deltas_reproduce_it,
);

/// Waits for the next trade update, with a generous deadline.
async fn next_update(
    events: &mut broadcast::Receiver<UserEvent>,
) -> tickgate::trading::api::TradeUpdate {
    match tokio::time::timeout(DEADLINE, events.recv()).await {
        Ok(Ok(UserEvent::TradeUpdate(update))) => *update,
        other => panic!("no trade update in time: {other:?}"),
    }
}

/// Polls until `check` holds or the deadline passes.
async fn eventually<F: FnMut() -> bool>(mut check: F, what: &str) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_order_through_app_state_is_acknowledged_then_announced_with_fills(backend: Backend) {
    let app = common::spawn_app_on(backend, common::test_settings()).await;
    let trading = app.state.trading.clone();
    let mut events = trading.user_events("alice");
    let mut changes = trading.portfolio_changes("alice");
    let (book, _) = trading.book("AAPL").expect("book");
    let best_ask = book.asks[0].0;
    let order = trading
        .submit("alice", limit_buy("1", &best_ask.to_string(), "day"))
        .await
        .expect("accepted");
    assert_eq!(order.status, OrderStatus::New);
    let new = next_update(&mut events).await;
    assert_eq!(
        (new.event, new.order.id.as_str()),
        (TradeEvent::New, order.id.as_str())
    );
    let fill = next_update(&mut events).await;
    assert_eq!(fill.event, TradeEvent::Fill);
    assert_eq!(fill.price, Some(best_ask));
    assert!(changes.has_changed().expect("sender alive"));
    changes.mark_unchanged();
    let portfolio = trading.portfolio("alice").await.expect("portfolio");
    let held: Decimal = portfolio
        .positions
        .iter()
        .map(|p| p.qty * p.current_price)
        .sum();
    assert_eq!(portfolio.equity, portfolio.cash + held);
    assert_eq!(portfolio.cash, dec!(100000) - best_ask);
    let orders = trading
        .orders("alice", OrderQuery::Closed)
        .await
        .expect("orders");
    assert_eq!(orders.len(), 1);
    app.stop().await.expect("clean stop");
}

async fn published_quotes_move_the_book_and_deltas_reproduce_it(backend: Backend) {
    let app = common::spawn_app_on(backend, common::test_settings()).await;
    let trading = app.state.trading.clone();
    let (snapshot, mut updates) = trading.book("AAPL").expect("book");
    assert!(snapshot.snapshot);
    let mut local = SyntheticBook {
        bids: snapshot.bids,
        asks: snapshot.asks,
    };
    publish_quote(&app, "AAPL", 150.10, 150.12).await;
    loop {
        let delta = tokio::time::timeout(DEADLINE, updates.recv())
            .await
            .expect("a delta in time")
            .expect("no lag");
        assert!(!delta.snapshot);
        local.apply_delta(&delta.bids, &delta.asks);
        assert!(local.is_well_formed(), "{local:?}");
        if local.best_bid() == Some(dec!(150.10)) {
            break;
        }
    }
    assert_eq!(local.best_ask(), Some(dec!(150.12)));
    let (server, _) = trading.book("AAPL").expect("book");
    assert_eq!((local.bids, local.asks), (server.bids, server.asks));
    assert!(trading.book("ZZZZ").is_err());
    app.stop().await.expect("clean stop");
}

async fn a_resting_limit_fills_when_the_published_market_crosses_it(backend: Backend) {
    let app = common::spawn_app_on(backend, common::test_settings()).await;
    let trading = app.state.trading.clone();
    let mut events = trading.user_events("alice");
    publish_trade(&app, "AAPL", 200.00, 100.0).await;
    publish_quote(&app, "AAPL", 199.99, 200.01).await;
    eventually(
        || {
            trading
                .book("AAPL")
                .map(|(book, _)| book.bids.first().map(|l| l.0) == Some(dec!(199.99)))
                .unwrap_or(false)
        },
        "the book to follow the quote",
    )
    .await;
    let order = trading
        .submit("alice", limit_buy("100", "199.50", "gtc"))
        .await
        .expect("accepted");
    assert_eq!(next_update(&mut events).await.event, TradeEvent::New);
    publish_trade(&app, "AAPL", 199.40, 500.0).await;
    publish_quote(&app, "AAPL", 199.38, 199.42).await;
    let mut filled = Decimal::ZERO;
    while filled < dec!(100) {
        let update = next_update(&mut events).await;
        assert_eq!(update.order.id, order.id);
        assert_eq!(update.price, Some(dec!(199.50)));
        filled = update.order.filled_qty;
    }
    assert_eq!(filled, dec!(100));
    app.stop().await.expect("clean stop");
}

async fn a_market_closed_status_expires_day_orders_but_not_gtc_orders(backend: Backend) {
    let app = common::spawn_app_on(backend, common::test_settings()).await;
    let trading = app.state.trading.clone();
    let mut events = trading.user_events("alice");
    let day = trading
        .submit("alice", limit_buy("1", "50", "day"))
        .await
        .expect("accepted");
    let gtc = trading
        .submit("alice", limit_buy("1", "50", "gtc"))
        .await
        .expect("accepted");
    next_update(&mut events).await;
    next_update(&mut events).await;
    publish_event(
        &app,
        MarketEvent::Status(Status {
            symbol: "*".into(),
            code: "market_closed".into(),
            message: "the session closed".into(),
            time: Utc::now(),
        }),
    )
    .await;
    let expired = next_update(&mut events).await;
    assert_eq!(expired.event, TradeEvent::Expired);
    assert_eq!(expired.order.id, day.id);
    let open = trading
        .orders("alice", OrderQuery::Open)
        .await
        .expect("orders");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, gtc.id);
    app.stop().await.expect("clean stop");
}

#[test]
fn an_application_built_outside_a_runtime_starts_its_exchange_when_it_runs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let app =
        tickgate::startup::Application::build_with_listener(common::test_settings(), listener)
            .expect("build app");
    let trading = app.state().trading.clone();
    let shutdown = app.shutdown_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = tokio::spawn(app.run_until_stopped());
        let order = tokio::time::timeout(
            DEADLINE,
            trading.submit("alice", limit_buy("1", "50", "day")),
        )
        .await
        .expect("the exchange answers in time")
        .expect("accepted");
        assert_eq!(order.status, OrderStatus::New);
        shutdown.cancel();
        server.await.expect("server task").expect("clean stop");
    });
}
