//! Unit tests of the socket-free session: driven directly, with a stand-in exchange.

use std::collections::HashMap;

use serde_json::json;
use tokio::sync::watch;

use super::frames::{CONNECTED_FRAME, success_frame_with_id};
use super::subscriptions::{SymbolSet, subscription_frame};
use super::*;
use crate::market::{MarketEvent, SymbolUniverse, Trade};
use crate::settings::AuthSettings;
use crate::trading::api::{
    BookUpdate, Order, OrderError, OrderQuery, OrderRef, OrderRequest, OrderStatus, OrderType,
    Portfolio, ReplaceRequest, Side, TimeInForce, TradeEvent, TradeUpdate,
};
use chrono::Utc;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU64, Ordering};

/// A stand-in exchange: acks every order with a `new` trade update, serves books from
/// broadcasts the test drives, and counts portfolio reads.
struct FakeTrading {
    events: broadcast::Sender<UserEvent>,
    changes: watch::Sender<u64>,
    books: Mutex<HashMap<String, broadcast::Sender<BookUpdate>>>,
    portfolio_reads: AtomicU64,
    /// Updates sent with [`FakeTrading::announce`], as a store would keep them.
    log: Mutex<Vec<TradeUpdate>>,
    submits: AtomicU64,
}

impl FakeTrading {
    fn new() -> Arc<FakeTrading> {
        Arc::new(FakeTrading {
            events: broadcast::channel(64).0,
            changes: watch::channel(0).0,
            books: Mutex::new(HashMap::new()),
            portfolio_reads: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            submits: AtomicU64::new(0),
        })
    }

    /// Stores, then publishes, the user's next trade update.
    fn announce(&self) -> u64 {
        let mut log = self.log.lock();
        let seq = log.len() as u64 + 1;
        let update = TradeUpdate {
            seq,
            event: TradeEvent::New,
            execution_id: None,
            price: None,
            qty: None,
            position_qty: None,
            timestamp: Utc::now(),
            order: order(&OrderRequest::default()),
        };
        log.push(update.clone());
        let _ = self.events.send(UserEvent::TradeUpdate(Box::new(update)));
        seq
    }

    fn book_sender(&self, symbol: &str) -> broadcast::Sender<BookUpdate> {
        self.books
            .lock()
            .entry(symbol.to_owned())
            .or_insert_with(|| broadcast::channel(4).0)
            .clone()
    }
}

fn order(request: &OrderRequest) -> Order {
    let now = Utc::now();
    Order {
        id: "o-1".into(),
        client_order_id: request.client_order_id.clone().unwrap_or_default(),
        symbol: request.symbol.clone().unwrap_or_default(),
        side: Side::Buy,
        order_type: OrderType::Market,
        time_in_force: TimeInForce::Day,
        qty: Decimal::from(10),
        filled_qty: Decimal::ZERO,
        filled_avg_price: None,
        limit_price: None,
        stop_price: None,
        status: OrderStatus::New,
        created_at: now,
        updated_at: now,
        submitted_at: now,
        filled_at: None,
        canceled_at: None,
        expired_at: None,
        replaced_by: None,
        replaces: None,
        commission: Decimal::ZERO,
    }
}

impl TradingApi for FakeTrading {
    fn submit(
        &self,
        _user: &str,
        request: OrderRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        self.submits.fetch_add(1, Ordering::Relaxed);
        if request.qty.as_deref() == Some("0") {
            return Box::pin(async { Err(OrderError::invalid("qty must be positive")) });
        }
        let order = order(&request);
        let _ = self
            .events
            .send(UserEvent::TradeUpdate(Box::new(TradeUpdate {
                seq: 1,
                event: TradeEvent::New,
                execution_id: None,
                price: None,
                qty: None,
                position_qty: None,
                timestamp: Utc::now(),
                order: order.clone(),
            })));
        Box::pin(async move { Ok(order) })
    }

    fn cancel(&self, _: &str, _: OrderRef) -> BoxFuture<'static, Result<Order, OrderError>> {
        Box::pin(async { Err(OrderError::new(OrderError::NOT_FOUND, "order not found")) })
    }

    fn replace(
        &self,
        _: &str,
        _: OrderRef,
        _: ReplaceRequest,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        Box::pin(async { Err(OrderError::new(OrderError::NOT_FOUND, "order not found")) })
    }

    fn portfolio(&self, _: &str) -> BoxFuture<'static, Result<Portfolio, OrderError>> {
        let reads = self.portfolio_reads.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move {
            Ok(Portfolio {
                cash: Decimal::from(reads),
                equity: Decimal::from(reads),
                long_market_value: Decimal::ZERO,
                short_market_value: Decimal::ZERO,
                buying_power: Decimal::from(reads),
                realized_pl: Decimal::ZERO,
                t: Utc::now(),
                positions: Vec::new(),
            })
        })
    }

    fn orders(&self, _: &str, _: OrderQuery) -> BoxFuture<'static, Result<Vec<Order>, OrderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn user_events(&self, _: &str) -> broadcast::Receiver<UserEvent> {
        self.events.subscribe()
    }

    fn updates_since(
        &self,
        _: &str,
        since: u64,
    ) -> BoxFuture<'static, Result<crate::trading::api::Resume, OrderError>> {
        // What `announce` logged; "ahead of everything" is a plain start at the head.
        let log = self.log.lock().clone();
        let head = log.len() as u64;
        Box::pin(async move {
            Ok(crate::trading::api::Resume::Replay {
                seq: head,
                updates: log.into_iter().filter(|u| u.seq > since).collect(),
            })
        })
    }

    fn order_by_client_id(
        &self,
        _: &str,
        _: &str,
    ) -> BoxFuture<'static, Result<Order, OrderError>> {
        Box::pin(async { Err(OrderError::new(OrderError::NOT_FOUND, "order not found")) })
    }

    fn portfolio_changes(&self, _: &str) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn book(
        &self,
        symbol: &str,
    ) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError> {
        let sender = self.book_sender(symbol);
        let snapshot = BookUpdate {
            symbol: symbol.to_owned(),
            snapshot: true,
            bids: vec![(Decimal::new(10000, 2), Decimal::from(300))],
            asks: vec![(Decimal::new(10002, 2), Decimal::from(200))],
            t: Utc::now(),
        };
        Ok((snapshot, sender.subscribe()))
    }
}

fn session_with(trading: Arc<FakeTrading>) -> (WsSession, Arc<Hub>) {
    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(Hub::new(
        SymbolUniverse::new(["AAPL", "MSFT"]),
        crate::hub::HubSettings {
            subscriber_queue_capacity: 64,
            ..crate::hub::HubSettings::default()
        },
        Arc::clone(&metrics),
        7,
    ));
    let auth = AuthService::new(&AuthSettings {
        hs256_secret: "unit-test-secret-of-at-least-32-bytes".into(),
        ..AuthSettings::default()
    })
    .expect("auth");
    let keys = AuthSettings {
        api_keys: vec![crate::settings::ApiKeyEntry {
            key_id: "k".into(),
            user: "bob".into(),
            secret_sha256: crate::auth::api_keys::secret_sha256_hex("s"),
            loopback_only: true,
        }],
        ..AuthSettings::default()
    };
    let deps = SessionDeps {
        shared: Arc::new(SessionShared {
            hub: Arc::clone(&hub),
            auth: Arc::new(auth),
            api_keys: Arc::new(crate::auth::api_keys::ApiKeys::in_memory(&keys).expect("keys")),
            trading,
            metrics,
            limits: SessionLimits {
                auth_timeout: Duration::from_secs(5),
                max_message_bytes: 4096,
                actions_per_second: 100.0,
                action_burst: 100,
                max_dropped_actions: 50,
                portfolio_interval: Duration::from_secs(1),
                max_symbols: 10,
                timer_horizon: None,
            },
        }),
        peer: Some(std::net::IpAddr::from([127, 0, 0, 1])),
        market_encoding: super::MarketEncoding::Json,
    };
    (WsSession::new(deps), hub)
}

/// An authenticated session with a stand-in exchange, for the transport's tests.
pub(in crate::transport::ws) fn authenticated_session() -> (WsSession, Arc<Hub>) {
    authenticated(FakeTrading::new())
}

fn authenticated(trading: Arc<FakeTrading>) -> (WsSession, Arc<Hub>) {
    let (mut session, hub) = session_with(trading);
    let out = session.start(Some(Ok(Identity {
        user: "alice".into(),
        valid_until: u64::MAX,
    })));
    assert_eq!(out.len(), 2);
    (session, hub)
}

fn objects(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(Output::frame_json)
        .flat_map(|frame| frame.as_array().cloned().unwrap_or_default())
        .collect()
}

async fn next_wake_objects(session: &mut WsSession) -> Vec<Value> {
    let wake = tokio::time::timeout(Duration::from_secs(5), session.wait())
        .await
        .expect("a wake-up");
    objects(&session.on_wake(wake).await)
}

fn trade(id: u64) -> MarketEvent {
    MarketEvent::Trade(Trade {
        symbol: "AAPL".into(),
        id,
        venue: "V".into(),
        price: 100.0,
        size: 1.0,
        time: chrono::DateTime::from_timestamp(1_700_000_000 + id as i64, 0).unwrap_or_default(),
        conditions: vec![],
    })
}

#[tokio::test]
async fn a_session_whose_receiver_lagged_reads_the_missed_updates_back_each_exactly_once() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = authenticated(Arc::clone(&trading));
    let out = session
        .on_text(r#"{"action":"subscribe","trade_updates":true}"#)
        .await;
    assert_eq!(objects(&out)[1]["T"], "trade_updates_live");
    // More than the receiver holds (64) before the session reads any.
    for _ in 0..100 {
        trading.announce();
    }
    let mut seen = Vec::new();
    while seen.len() < 100 {
        for object in next_wake_objects(&mut session).await {
            assert_eq!(object["T"], "trade_update", "{object}");
            seen.push(object["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    assert!(
        !session.is_closed(),
        "a lag is repaired, not a reason to close"
    );
    trading.announce();
    let next = next_wake_objects(&mut session).await;
    assert_eq!(
        next.len(),
        1,
        "the stale live copies were dropped: {next:?}"
    );
    assert_eq!(next[0]["seq"], 101);
}

#[tokio::test]
async fn a_resume_replays_after_since_then_announces_the_live_point() {
    let trading = FakeTrading::new();
    for _ in 0..5 {
        trading.announce();
    }
    let (mut session, _hub) = authenticated(Arc::clone(&trading));
    let out = objects(
        &session
            .on_text(r#"{"action":"subscribe","trade_updates":{"since":3}}"#)
            .await,
    );
    let tags: Vec<&str> = out.iter().map(|o| o["T"].as_str().unwrap_or("")).collect();
    assert_eq!(
        tags,
        vec![
            "subscription",
            "trade_update",
            "trade_update",
            "trade_updates_live"
        ]
    );
    assert_eq!(
        (out[1]["seq"].as_u64(), out[2]["seq"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(
        out[3],
        json!({"T":"trade_updates_live","since":3,"seq":5,"replayed":2})
    );
    assert_eq!(out[0]["trade_updates"], true);
    for bad in [
        r#"{"since":"3"}"#,
        r#"{"since":-1}"#,
        r#"{"since":1,"x":2}"#,
        "{}",
    ] {
        let out = session
            .on_text(&format!(
                r#"{{"action":"subscribe","trade_updates":{bad}}}"#
            ))
            .await;
        assert_eq!(objects(&out)[0]["code"], 400, "{bad}");
    }
    let out = session
        .on_text(r#"{"action":"unsubscribe","trade_updates":{"since":1}}"#)
        .await;
    assert_eq!(
        objects(&out)[0]["code"],
        400,
        "an unsubscribe takes a boolean"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_is_processed_once_the_token_expired_and_the_session_ends_with_4001() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = session_with(Arc::clone(&trading));
    let valid_until = chrono::Utc::now().timestamp() as u64 + 2;
    session.start(Some(Ok(Identity {
        user: "alice".into(),
        valid_until,
    })));
    tokio::time::advance(Duration::from_secs(4)).await;
    let out = session
        .on_text(r#"{"action":"order","id":"late","data":{"symbol":"AAPL","qty":"1","side":"buy","type":"market","time_in_force":"day"}}"#)
        .await;
    assert_eq!(objects(&out)[0]["code"], 409);
    assert!(out.contains(&Output::Close {
        code: close_codes::TOKEN_EXPIRED,
        reason: "token expired".into(),
    }));
    assert_eq!(
        trading.submits.load(Ordering::Relaxed),
        0,
        "the order never left"
    );
}

#[tokio::test(start_paused = true)]
async fn the_expiry_timer_closes_an_idle_session_by_itself() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = session_with(Arc::clone(&trading));
    let now = chrono::Utc::now().timestamp() as u64;
    session.start(Some(Ok(Identity {
        user: "alice".into(),
        valid_until: now + 3,
    })));
    // The wait wakes for the expiry by itself.
    let wake = tokio::time::timeout(Duration::from_secs(10), session.wait())
        .await
        .expect("the expiry wakes the session");
    assert!(matches!(wake, Wake::TokenExpired));
    let out = session.on_wake(wake).await;
    assert_eq!(objects(&out)[0]["code"], 409);
    assert!(session.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_deadline_beyond_the_timer_horizon_is_armed_once_a_poll_finds_it_within_reach() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = session_with(Arc::clone(&trading));
    let mut shared = (*session.deps.shared).clone();
    shared.limits.timer_horizon = Some(Duration::from_secs(2));
    session.deps.shared = Arc::new(shared);
    let now = chrono::Utc::now().timestamp() as u64;
    session.start(Some(Ok(Identity {
        user: "alice".into(),
        valid_until: now + 10,
    })));
    // Beyond the horizon: no timer, no wake by itself (the transport polls again).
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(session.poll_wait(&mut cx).is_pending());
    assert!(
        session.timer.is_none(),
        "no timer for a deadline out of reach"
    );
    let early = tokio::time::timeout(Duration::from_secs(3), session.wait()).await;
    assert!(early.is_err() && session.timer.is_none(), "woke {early:?}");
    // Within reach: the next poll arms the timer, which wakes the session at expiry.
    tokio::time::advance(Duration::from_secs(6)).await;
    let started = tokio::time::Instant::now();
    let wake = tokio::time::timeout(Duration::from_secs(5), session.wait())
        .await
        .expect("the expiry wakes the session once within reach");
    assert!(matches!(wake, Wake::TokenExpired));
    assert!(started.elapsed() <= Duration::from_secs(2));
    let out = session.on_wake(wake).await;
    assert_eq!(objects(&out)[0]["code"], 409);
    assert!(session.is_closed());
}

#[tokio::test]
async fn the_order_ack_goes_out_before_the_trade_update_the_order_caused() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = authenticated(Arc::clone(&trading));
    session
        .on_text(r#"{"action":"subscribe","trade_updates":true}"#)
        .await;
    let out = session
        .on_text(r#"{"action":"order","id":"r1","data":{"symbol":"AAPL","qty":10,"side":"buy","type":"market","time_in_force":"day"}}"#)
        .await;
    let acks = objects(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["T"], "order_ack");
    assert_eq!(acks[0]["id"], "r1");
    assert_eq!(acks[0]["order"]["qty"], "10");
    let updates = next_wake_objects(&mut session).await;
    assert_eq!(updates[0]["T"], "trade_update");
    assert_eq!(updates[0]["event"], "new");

    let out = session
        .on_text(r#"{"action":"order","id":"r2","data":{"symbol":"AAPL","qty":"0"}}"#)
        .await;
    let error = &objects(&out)[0];
    assert_eq!(error["code"], OrderError::INVALID.number());
    assert_eq!(error["id"], "r2");
    let out = session
        .on_text(r#"{"action":"order","data":{"symbol":"AAPL","qty":"1","colour":"red"}}"#)
        .await;
    assert!(
        objects(&out)[0]["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("colour")
    );
    let out = session
        .on_text(r#"{"action":"cancel","id":"c","order_id":"nope"}"#)
        .await;
    assert_eq!(objects(&out)[0]["code"], OrderError::NOT_FOUND.number());
}

#[tokio::test]
async fn book_seq_rises_by_one_and_lost_deltas_are_replaced_by_a_snapshot() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = authenticated(Arc::clone(&trading));
    let out = session
        .on_text(r#"{"action":"subscribe","orderbooks":["AAPL"]}"#)
        .await;
    let all = objects(&out);
    assert_eq!(all[0]["T"], "subscription");
    assert_eq!(all[1]["T"], "o");
    assert_eq!(all[1]["seq"], 1);
    assert_eq!(all[1]["snapshot"], true);
    assert_eq!(all[1]["b"], json!([["100.00", "300"]]));

    let sender = trading.book_sender("AAPL");
    let delta = |price: i64| BookUpdate {
        symbol: "AAPL".into(),
        snapshot: false,
        bids: vec![(Decimal::new(price, 2), Decimal::ZERO)],
        asks: vec![],
        t: Utc::now(),
    };
    sender.send(delta(10000)).expect("a receiver");
    let got = next_wake_objects(&mut session).await;
    assert_eq!(got[0]["seq"], 2);
    assert!(got[0].get("snapshot").is_none());

    // More deltas than the broadcast holds, before the forwarder runs: it lags.
    for price in 0..10 {
        sender.send(delta(9000 + price)).expect("a receiver");
    }
    let mut seqs = Vec::new();
    let mut snapshot_seen = false;
    while !snapshot_seen {
        for object in next_wake_objects(&mut session).await {
            seqs.push(object["seq"].as_u64().expect("seq"));
            snapshot_seen |= object["snapshot"] == true;
        }
    }
    let expected: Vec<u64> = (3..3 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seq stays contiguous across the resnapshot");

    // A resync also sends a snapshot with the next seq.
    let out = session
        .on_text(r#"{"action":"resync","orderbooks":["AAPL"]}"#)
        .await;
    let object = &objects(&out)[0];
    assert_eq!(object["snapshot"], true);
    assert_eq!(object["seq"], seqs.last().copied().unwrap_or(0) + 1);
    let out = session
        .on_text(r#"{"action":"resync","orderbooks":["MSFT"]}"#)
        .await;
    assert_eq!(objects(&out)[0]["code"], ErrorCode::InvalidSyntax.number());
}

#[tokio::test(start_paused = true)]
async fn portfolio_messages_are_throttled_to_the_configured_rate() {
    let trading = FakeTrading::new();
    let (mut session, _hub) = authenticated(Arc::clone(&trading));
    let out = session
        .on_text(r#"{"action":"subscribe","portfolio":true}"#)
        .await;
    let all = objects(&out);
    assert_eq!(all[1]["T"], "portfolio");
    let first_sent = Instant::now();
    for n in 1..=5 {
        trading.changes.send_replace(n);
    }
    // The change marks it dirty; the message itself waits for the interval.
    assert!(next_wake_objects(&mut session).await.is_empty());
    let got = next_wake_objects(&mut session).await;
    assert_eq!(got[0]["T"], "portfolio");
    assert!(first_sent.elapsed() >= Duration::from_secs(1));
    assert_eq!(trading.portfolio_reads.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_session_that_never_authenticates_times_out_with_404() {
    let (mut session, _hub) = session_with(FakeTrading::new());
    session.start(None);
    let wake = session.wait().await;
    let out = session.on_wake(wake).await;
    assert_eq!(objects(&out)[0]["code"], ErrorCode::AuthTimeout.number());
    assert!(matches!(out.last(), Some(Output::Close { .. })));
    assert!(session.is_closed());
}

#[tokio::test]
async fn changing_subscriptions_neither_loses_nor_repeats_market_data() {
    let (mut session, hub) = authenticated(FakeTrading::new());
    session
        .on_text(r#"{"action":"subscribe","trades":["AAPL"]}"#)
        .await;
    hub.publish_event(trade(1)).expect("valid");
    hub.publish_event(trade(2)).expect("valid");
    // Re-registration happens with those two still queued.
    let out = session
        .on_text(r#"{"action":"subscribe","quotes":["MSFT"]}"#)
        .await;
    let mut ids: Vec<u64> = objects(&out)
        .iter()
        .filter(|o| o["T"] == "t")
        .filter_map(|o| o["i"].as_u64())
        .collect();
    hub.publish_event(trade(3)).expect("valid");
    while ids.len() < 3 {
        ids.extend(
            next_wake_objects(&mut session)
                .await
                .iter()
                .filter_map(|o| o["i"].as_u64()),
        );
    }
    assert_eq!(ids, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_client_whose_queue_overflows_gets_407_and_the_session_ends() {
    let (mut session, hub) = authenticated(FakeTrading::new());
    session
        .on_text(r#"{"action":"subscribe","trades":["*"],"bars":["*"]}"#)
        .await;
    // Bars are never conflated, so a queue that is not drained overflows.
    for minute in 0..100i64 {
        hub.publish_event(MarketEvent::Bar(crate::market::Bar {
            symbol: if minute % 2 == 0 { "AAPL" } else { "MSFT" }.into(),
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
            trade_count: 1,
            vwap: 1.0,
            time: chrono::DateTime::from_timestamp(1_700_000_000 + minute * 60, 0)
                .unwrap_or_default(),
        }))
        .expect("valid bar");
    }
    let wake = session.wait().await;
    let out = session.on_wake(wake).await;
    assert_eq!(
        objects(&out).last().map(|o| o["code"].clone()),
        Some(json!(407))
    );
    assert!(matches!(out.last(), Some(Output::Close { code, .. }) if *code == close_codes::POLICY));
    assert!(session.is_closed());
}

/// The replies written without `json!` are byte for byte what the `json!` objects printed.
#[test]
fn replies_match_their_json_object_encoding() {
    let (_, hub) = session_with(FakeTrading::new());
    let old_names = |set: &SymbolSet| -> Vec<String> {
        if set.all {
            vec!["*".into()]
        } else {
            set.ids
                .iter()
                .map(|id| hub.universe().name(*id).to_owned())
                .collect()
        }
    };
    let frame_text = |output: Output| match output {
        Output::Frame(bytes) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
        Output::Binary(_) | Output::Close { .. } => panic!("expected a frame"),
    };
    let aapl = hub.universe().id("AAPL").expect("AAPL");
    let msft = hub.universe().id("MSFT").expect("MSFT");
    let mut subs = Subscriptions::default();
    let mut states = vec![subs.clone()];
    Rc::make_mut(&mut subs.market).trades.ids.insert(aapl);
    states.push(subs.clone());
    Rc::make_mut(&mut subs.market)
        .quotes
        .ids
        .extend([aapl, msft]);
    Rc::make_mut(&mut subs.market).news.all = true;
    Rc::make_mut(&mut subs.market).bars.all = true;
    Rc::make_mut(&mut subs.market).bars.ids.insert(msft);
    Rc::make_mut(&mut subs.market).statuses.ids.insert(aapl);
    subs.orderbooks
        .extend(["MSFT".to_owned(), "AAPL".to_owned()]);
    subs.trade_updates = true;
    states.push(subs.clone());
    subs.portfolio = true;
    states.push(subs);
    let ids = [
        None,
        Some(json!(7)),
        Some(json!(-1.5)),
        Some(json!("req \"1\" \u{e9}\n")),
    ];
    assert_eq!(
        frame_text(Output::Frame(Bytes::from_static(CONNECTED_FRAME))),
        format!("[{}]", json!({"T": "success", "msg": "connected"}))
    );
    for id in &ids {
        let mut old = json!({"T": "success", "msg": "authenticated"});
        if let (Some(id), Some(map)) = (id, old.as_object_mut()) {
            map.insert("id".into(), id.clone());
        }
        assert_eq!(
            frame_text(success_frame_with_id(id.as_ref(), "authenticated")),
            format!("[{old}]")
        );
        for subs in &states {
            let mut old = json!({
                "T": "subscription",
                "trades": old_names(&subs.market.trades),
                "quotes": old_names(&subs.market.quotes),
                "bars": old_names(&subs.market.bars),
                "statuses": old_names(&subs.market.statuses),
                "news": old_names(&subs.market.news),
                "orderbooks": subs.orderbooks.iter().collect::<Vec<_>>(),
                "trade_updates": subs.trade_updates,
                "portfolio": subs.portfolio,
            });
            if let (Some(id), Some(object)) = (id, old.as_object_mut()) {
                object.insert("id".into(), id.clone());
            }
            assert_eq!(
                frame_text(subscription_frame(id.as_ref(), subs, &hub)),
                format!("[{old}]")
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_any_kind_of_message_is_answered_once_then_closed_with_430() {
    let (mut session, _hub) = authenticated(FakeTrading::new());
    // 100 tokens: binary frames and oversize messages are answered while they last.
    for n in 0..100 {
        let out = if n % 2 == 0 {
            session.on_binary()
        } else {
            session.on_oversize(100_000)
        };
        assert_eq!(out.len(), 1, "message {n}");
    }
    // Then one 408 for the run, silence, and the close once 50 were dropped.
    let first = session.on_text(r#"{"action":"subscribe","id":"x"}"#).await;
    assert!(
        matches!(first.as_slice(), [Output::Frame(frame)] if std::str::from_utf8(frame).is_ok_and(|f| f.contains("408") && f.contains("\"x\""))),
        "{first:?}"
    );
    for n in 0..49 {
        assert!(session.on_binary().is_empty(), "drop {n} answered");
    }
    let last = session.on_oversize(100_000);
    assert!(
        matches!(last.as_slice(), [Output::Frame(frame), Output::Close { code: 1008, .. }] if std::str::from_utf8(frame).is_ok_and(|f| f.contains("430"))),
        "{last:?}"
    );
    assert!(session.is_closed());
}

#[tokio::test(start_paused = true)]
async fn max_rate_delivers_the_newest_trade_at_most_n_times_a_second_on_the_paused_clock() {
    let (mut session, hub) = authenticated(FakeTrading::new());
    session
        .on_text(r#"{"action":"subscribe","trades":["AAPL"],"max_rate":4}"#)
        .await;
    let start = tokio::time::Instant::now();
    let mut delivered: Vec<(Duration, u64)> = Vec::new();
    // A trade every 10 ms for three seconds: 300 published, a quarter-second window.
    for id in 1..=300u64 {
        hub.publish_event(trade(id)).expect("valid");
        while let Ok(wake) = tokio::time::timeout(Duration::ZERO, session.wait()).await {
            for object in objects(&session.on_wake(wake).await) {
                let traded = object["i"].as_u64().expect("a trade");
                delivered.push((start.elapsed(), traded));
                assert_eq!(traded, id, "the newest trade wins");
            }
        }
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert_eq!(
        delivered.first(),
        Some(&(Duration::ZERO, 1)),
        "the first is immediate"
    );
    for pair in delivered.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(250),
            "{pair:?}"
        );
    }
    // Three seconds at 4 a second, plus the immediate first one.
    assert!((12..=13).contains(&delivered.len()), "{delivered:?}");
}

#[path = "tests_throttled.rs"]
mod throttled;
