//! Orders, fills, portfolio and order books over the WebSocket against the real simulated
//! exchange. The market is moved deterministically by publishing quotes and trades through
//! `POST /v1/publish` (the simulator is off).

use crate::common;
use crate::ws_support;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Backend, TestApp, publish, spawn_app_on};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use ws_support::{WsClient, connect_as, token_for, ws_settings};

// Every test runs on a single node and on one node of a cluster with PostgreSQL.
crate::on_both_backends!(
    a_market_buy_walks_several_levels_with_partial_fills_then_a_fill_at_the_average_price,
    a_resting_limit_fills_when_the_market_crosses_it_and_the_portfolio_follows_the_price,
    cancel_and_replace_answer_with_acks_and_trade_updates_and_refuse_finished_orders,
    ioc_takes_what_is_there_and_cancels_the_rest_while_fok_fills_all_or_nothing,
    day_orders_expire_at_the_close_and_gtc_orders_stay_open,
    book_seq_is_contiguous_and_the_deltas_reproduce_the_servers_book,
    a_throttled_book_gets_fewer_merged_deltas_that_still_rebuild_the_servers_book,
);

fn dec(value: &Value) -> Decimal {
    let text = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Decimal::from_str(&text).unwrap_or_else(|_| panic!("not a decimal: {value}"))
}

/// Event times must not go backwards per symbol; every published event gets the next second.
static CLOCK: AtomicU32 = AtomicU32::new(0);

fn next_time() -> String {
    let second = CLOCK.fetch_add(1, Ordering::Relaxed);
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-02T14:30:00Z").expect("time");
    (base + chrono::Duration::seconds(i64::from(second)))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn publish_quote(app: &TestApp, symbol: &str, bid: f64, ask: f64) {
    let (status, body) = publish(
        app,
        json!({"T":"q","S":symbol,"bp":bid,"bs":300,"ap":ask,"as":200,"t":next_time()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
}

async fn publish_trade(app: &TestApp, symbol: &str, price: f64) {
    let id = u64::from(CLOCK.load(Ordering::Relaxed)) + 1000;
    let (status, body) = publish(
        app,
        json!({"T":"t","S":symbol,"i":id,"x":"V","p":price,"s":100,"t":next_time(),"c":[]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
}

/// A client-side copy of one symbol's book, kept from a snapshot and deltas.
#[derive(Debug, Default, Clone, PartialEq)]
struct LocalBook {
    seq: u64,
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

impl LocalBook {
    /// Applies an `o` message, asserting `seq` is contiguous.
    fn apply(&mut self, message: &Value) {
        let seq = message["seq"].as_u64().expect("seq");
        assert_eq!(seq, self.seq + 1, "book seq gap: {message}");
        self.seq = seq;
        if message["snapshot"] == true {
            self.bids.clear();
            self.asks.clear();
        }
        for (key, side) in [("b", &mut self.bids), ("a", &mut self.asks)] {
            for level in message[key].as_array().expect("levels") {
                let price = dec(&level[0]);
                let size = dec(&level[1]);
                if size.is_zero() {
                    side.remove(&price);
                } else {
                    side.insert(price, size);
                }
            }
        }
    }

    fn best_ask(&self) -> Option<Decimal> {
        self.asks.keys().next().copied()
    }

    fn best_bid(&self) -> Option<Decimal> {
        self.bids.keys().next_back().copied()
    }

    /// Asks best first.
    fn ask_levels(&self) -> Vec<(Decimal, Decimal)> {
        self.asks.iter().map(|(p, s)| (*p, *s)).collect()
    }

    fn same_levels(&self, other: &LocalBook) -> bool {
        self.bids == other.bids && self.asks == other.asks
    }
}

/// A session that tracks the book, trade updates and portfolios as they arrive.
struct Trader {
    client: WsClient,
    book: LocalBook,
    updates: Vec<Value>,
    portfolios: Vec<Value>,
}

impl Trader {
    async fn new(app: &TestApp, user: &str) -> Trader {
        let mut client = connect_as(app, user).await;
        let reply = client
            .subscribe(json!({"trade_updates":true,"portfolio":true,"orderbooks":["AAPL"]}))
            .await;
        assert_eq!(reply["orderbooks"], json!(["AAPL"]));
        let mut trader = Trader {
            client,
            book: LocalBook::default(),
            updates: Vec::new(),
            portfolios: Vec::new(),
        };
        // The portfolio and the first snapshot follow the reply.
        while trader.portfolios.is_empty() || trader.book.seq == 0 {
            trader.read_one().await;
        }
        trader
    }

    /// Reads one server object and files it; returns it.
    async fn read_one(&mut self) -> Value {
        let object = self.client.next_object(ws_support::DEADLINE).await;
        match object["T"].as_str() {
            Some("o") => self.book.apply(&object),
            Some("trade_update") => self.updates.push(object.clone()),
            Some("portfolio") => {
                check_portfolio_arithmetic(&object);
                self.portfolios.push(object.clone());
            }
            _ => {}
        }
        object
    }

    /// Reads until `done` holds.
    async fn until(&mut self, mut done: impl FnMut(&Trader) -> bool) {
        while !done(self) {
            self.read_one().await;
        }
    }

    /// Sends an action and returns its reply (`order_ack` or `error`), filing what comes
    /// before it.
    async fn request(&mut self, mut action: Value) -> Value {
        let id = format!("r{}", CLOCK.fetch_add(1, Ordering::Relaxed));
        action["id"] = id.clone().into();
        self.client.send_json(action).await;
        loop {
            let object = self.read_one().await;
            if object["id"] == id.as_str() {
                return object;
            }
        }
    }

    async fn order(&mut self, data: Value) -> Value {
        self.request(json!({"action":"order","data":data})).await
    }

    /// Trade updates of one order, in arrival order.
    fn updates_of(&self, order_id: &str) -> Vec<&Value> {
        self.updates
            .iter()
            .filter(|u| u["order"]["id"] == order_id)
            .collect()
    }

    fn last_event_of(&self, order_id: &str) -> Option<String> {
        self.updates_of(order_id)
            .last()
            .and_then(|u| u["event"].as_str())
            .map(str::to_owned)
    }

    async fn wait_for_event(&mut self, order_id: &str, event: &str) -> Value {
        let order_id = order_id.to_owned();
        let event = event.to_owned();
        self.until(|t| {
            t.updates_of(&order_id)
                .iter()
                .any(|u| u["event"] == event.as_str())
        })
        .await;
        self.updates_of(&order_id)
            .into_iter()
            .find(|u| u["event"] == event.as_str())
            .cloned()
            .expect("the event")
    }
}

/// The portfolio identity: equity = cash + Σ qty × current price, each market value = qty ×
/// current price, and long/short market values add up.
fn check_portfolio_arithmetic(portfolio: &Value) {
    let cash = dec(&portfolio["cash"]);
    let mut long = Decimal::ZERO;
    let mut short = Decimal::ZERO;
    for position in portfolio["positions"].as_array().expect("positions") {
        let qty = dec(&position["qty"]);
        let value = qty * dec(&position["current_price"]);
        assert_eq!(dec(&position["market_value"]), value, "{position}");
        if qty.is_sign_negative() {
            short += value;
        } else {
            long += value;
        }
    }
    assert_eq!(dec(&portfolio["long_market_value"]), long, "{portfolio}");
    assert_eq!(dec(&portfolio["short_market_value"]), short, "{portfolio}");
    assert_eq!(
        dec(&portfolio["equity"]),
        cash + long + short,
        "equity is not cash + positions at the last price: {portfolio}"
    );
}

/// Starts the app, opens a trader, and puts a known top of book on AAPL: bid 100.00, ask
/// 100.02, last trade 100.01.
async fn market(backend: Backend) -> (TestApp, Trader) {
    let app = spawn_app_on(backend, ws_settings()).await;
    let mut trader = Trader::new(&app, "alice").await;
    publish_quote(&app, "AAPL", 100.00, 100.02).await;
    publish_trade(&app, "AAPL", 100.01).await;
    trader
        .until(|t| {
            t.book.best_ask() == Some(Decimal::new(10002, 2))
                && t.book.best_bid() == Some(Decimal::new(10000, 2))
                && t.book.asks.len() >= 3
        })
        .await;
    (app, trader)
}

async fn a_market_buy_walks_several_levels_with_partial_fills_then_a_fill_at_the_average_price(
    backend: Backend,
) {
    let (app, mut trader) = market(backend).await;
    let levels = trader.book.ask_levels();
    let (first, second, third) = (levels[0], levels[1], levels[2]);
    let from_third = (third.1 / Decimal::TWO).trunc().max(Decimal::ONE);
    let qty = first.1 + second.1 + from_third;
    let expected_cost = first.0 * first.1 + second.0 * second.1 + third.0 * from_third;
    let expected_average = expected_cost / qty;

    let ack = trader
        .order(json!({"symbol":"AAPL","qty":qty.to_string(),"side":"buy","type":"market","time_in_force":"day"}))
        .await;
    assert_eq!(ack["T"], "order_ack", "{ack}");
    let order_id = ack["order"]["id"].as_str().expect("order id").to_owned();
    assert!(
        trader.updates_of(&order_id).is_empty(),
        "a trade update arrived before the order_ack"
    );
    let fill = trader.wait_for_event(&order_id, "fill").await;

    let fills: Vec<&Value> = trader
        .updates_of(&order_id)
        .into_iter()
        .filter(|u| u["event"] == "partial_fill" || u["event"] == "fill")
        .collect();
    let prices: Vec<(Decimal, Decimal)> = fills
        .iter()
        .map(|u| (dec(&u["price"]), dec(&u["qty"])))
        .collect();
    assert_eq!(
        prices,
        vec![
            (first.0, first.1),
            (second.0, second.1),
            (third.0, from_third)
        ]
    );
    assert_eq!(fills[0]["event"], "partial_fill");
    assert_eq!(fills[1]["event"], "partial_fill");
    assert_eq!(fill["order"]["status"], "filled");
    assert_eq!(dec(&fill["order"]["filled_qty"]), qty);
    assert_eq!(dec(&fill["position_qty"]), qty);
    let average = dec(&fill["order"]["filled_avg_price"]);
    assert!(
        (average - expected_average).abs() < Decimal::new(1, 6),
        "average {average}, expected {expected_average}"
    );

    // The portfolio catches up: cash paid exactly, position marked at the last trade.
    trader
        .until(|t| {
            t.portfolios.last().is_some_and(|p| {
                p["positions"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| dec(&x["qty"]) == qty))
            })
        })
        .await;
    let portfolio = trader.portfolios.last().cloned().expect("portfolio");
    assert_eq!(
        dec(&portfolio["cash"]),
        Decimal::from(100_000) - expected_cost
    );
    let position = &portfolio["positions"][0];
    assert_eq!(dec(&position["current_price"]), Decimal::new(10001, 2));
    assert_eq!(
        dec(&portfolio["equity"]),
        dec(&portfolio["cash"]) + qty * Decimal::new(10001, 2)
    );

    // The same numbers over HTTP.
    let http = reqwest::Client::new();
    let account: Value = http
        .get(app.url("/v1/account"))
        .bearer_auth(token_for("alice"))
        .send()
        .await
        .expect("account")
        .json()
        .await
        .expect("json");
    assert_eq!(dec(&account["cash"]), dec(&portfolio["cash"]));
    assert!(account.get("positions").is_none());
    let positions: Value = http
        .get(app.url("/v1/positions"))
        .bearer_auth(token_for("alice"))
        .send()
        .await
        .expect("positions")
        .json()
        .await
        .expect("json");
    assert_eq!(dec(&positions[0]["qty"]), qty);
    let closed: Value = http
        .get(app.url("/v1/orders?status=closed"))
        .bearer_auth(token_for("alice"))
        .send()
        .await
        .expect("orders")
        .json()
        .await
        .expect("json");
    assert!(
        closed
            .as_array()
            .expect("list")
            .iter()
            .any(|o| o["id"] == order_id.as_str())
    );
    app.stop().await.expect("stop");
}

async fn a_resting_limit_fills_when_the_market_crosses_it_and_the_portfolio_follows_the_price(
    backend: Backend,
) {
    let (app, mut trader) = market(backend).await;
    let ack = trader
        .order(json!({"symbol":"AAPL","qty":"10","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"99.50"}))
        .await;
    assert_eq!(ack["T"], "order_ack", "{ack}");
    let order_id = ack["order"]["id"].as_str().expect("id").to_owned();
    assert!(
        trader
            .last_event_of(&order_id)
            .is_none_or(|e| e == "new" || e == "accepted"),
        "nothing filled yet"
    );
    // The market trades down through the limit.
    publish_trade(&app, "AAPL", 99.40).await;
    let fill = trader.wait_for_event(&order_id, "fill").await;
    assert_eq!(dec(&fill["price"]), Decimal::new(9950, 2));
    assert_eq!(
        dec(&fill["order"]["filled_avg_price"]),
        Decimal::new(9950, 2)
    );

    // The portfolio is marked at the newest trade after every move.
    publish_trade(&app, "AAPL", 99.45).await;
    trader
        .until(|t| {
            t.portfolios.last().is_some_and(|p| {
                p["positions"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|x| dec(&x["current_price"]) == Decimal::new(9945, 2))
                })
            })
        })
        .await;
    let portfolio = trader.portfolios.last().cloned().expect("portfolio");
    assert_eq!(
        dec(&portfolio["equity"]),
        Decimal::from(100_000) - Decimal::new(99500, 2) + Decimal::from(10) * Decimal::new(9945, 2)
    );
    app.stop().await.expect("stop");
}

async fn cancel_and_replace_answer_with_acks_and_trade_updates_and_refuse_finished_orders(
    backend: Backend,
) {
    let (app, mut trader) = market(backend).await;
    let ack = trader
        .order(json!({"symbol":"AAPL","qty":"10","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"90","client_order_id":"mine-1"}))
        .await;
    let order_id = ack["order"]["id"].as_str().expect("id").to_owned();

    let replaced = trader
        .request(json!({"action":"replace","client_order_id":"mine-1","data":{"qty":"5","limit_price":"91"}}))
        .await;
    assert_eq!(replaced["T"], "order_ack", "{replaced}");
    let new_id = replaced["order"]["id"].as_str().expect("id").to_owned();
    assert_ne!(new_id, order_id);
    assert_eq!(replaced["order"]["replaces"], order_id.as_str());
    assert_eq!(dec(&replaced["order"]["qty"]), Decimal::from(5));
    assert_eq!(dec(&replaced["order"]["limit_price"]), Decimal::from(91));
    let old = trader.wait_for_event(&order_id, "replaced").await;
    assert_eq!(old["order"]["replaced_by"], new_id.as_str());

    let canceled = trader
        .request(json!({"action":"cancel","order_id":new_id}))
        .await;
    assert_eq!(canceled["T"], "order_ack", "{canceled}");
    assert_eq!(canceled["order"]["status"], "canceled");
    trader.wait_for_event(&new_id, "canceled").await;

    let again = trader
        .request(json!({"action":"cancel","order_id":new_id}))
        .await;
    assert_eq!(again["code"], 42210000, "{again}");
    let unknown = trader
        .request(json!({"action":"cancel","order_id":"no-such-order"}))
        .await;
    assert_eq!(unknown["code"], 40410000, "{unknown}");
    let invalid = trader
        .order(
            json!({"symbol":"AAPL","qty":"0","side":"buy","type":"market","time_in_force":"day"}),
        )
        .await;
    assert_eq!(invalid["code"], 40010001, "{invalid}");
    let broke = trader
        .order(json!({"symbol":"AAPL","qty":"100000","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"90"}))
        .await;
    assert_eq!(broke["code"], 40310000, "{broke}");
    app.stop().await.expect("stop");
}

async fn ioc_takes_what_is_there_and_cancels_the_rest_while_fok_fills_all_or_nothing(
    backend: Backend,
) {
    let (app, mut trader) = market(backend).await;
    let levels = trader.book.ask_levels();
    let top = levels[0];

    // IOC at the best ask for more than the level holds: one fill, then canceled.
    let ack = trader
        .order(json!({"symbol":"AAPL","qty":(top.1 + Decimal::from(50)).to_string(),"side":"buy","type":"limit","time_in_force":"ioc","limit_price":top.0.to_string()}))
        .await;
    let ioc = ack["order"]["id"].as_str().expect("id").to_owned();
    let canceled = trader.wait_for_event(&ioc, "canceled").await;
    assert_eq!(dec(&canceled["order"]["filled_qty"]), top.1);
    assert_eq!(canceled["order"]["status"], "canceled");

    // FOK for one share more than the levels within its limit hold: nothing fills.
    let top = trader.book.ask_levels()[0];
    let ack = trader
        .order(json!({"symbol":"AAPL","qty":(top.1 + Decimal::ONE).to_string(),"side":"buy","type":"limit","time_in_force":"fok","limit_price":top.0.to_string()}))
        .await;
    let fok = ack["order"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{ack}"))
        .to_owned();
    let canceled = trader.wait_for_event(&fok, "canceled").await;
    assert_eq!(dec(&canceled["order"]["filled_qty"]), Decimal::ZERO);
    assert!(
        trader
            .updates_of(&fok)
            .iter()
            .all(|u| u["event"] != "fill" && u["event"] != "partial_fill")
    );

    // FOK that fits: filled in full.
    let ack = trader
        .order(
            json!({"symbol":"AAPL","qty":"1","side":"buy","type":"market","time_in_force":"fok"}),
        )
        .await;
    let fits = ack["order"]["id"].as_str().expect("id").to_owned();
    let fill = trader.wait_for_event(&fits, "fill").await;
    assert_eq!(dec(&fill["order"]["filled_qty"]), Decimal::ONE);
    app.stop().await.expect("stop");
}

async fn day_orders_expire_at_the_close_and_gtc_orders_stay_open(backend: Backend) {
    let (app, mut trader) = market(backend).await;
    let day = trader
        .order(json!({"symbol":"AAPL","qty":"3","side":"buy","type":"limit","time_in_force":"day","limit_price":"95"}))
        .await;
    let day_id = day["order"]["id"].as_str().expect("id").to_owned();
    let gtc = trader
        .order(json!({"symbol":"AAPL","qty":"3","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"95"}))
        .await;
    let gtc_id = gtc["order"]["id"].as_str().expect("id").to_owned();

    let (status, body) = publish(
        &app,
        json!({"T":"s","S":"*","sc":"market_closed","sm":"closing bell","t":next_time()}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let expired = trader.wait_for_event(&day_id, "expired").await;
    assert_eq!(expired["order"]["status"], "expired");

    let open: Value = reqwest::Client::new()
        .get(app.url("/v1/orders?status=open"))
        .bearer_auth(token_for("alice"))
        .send()
        .await
        .expect("orders")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = open
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(ids, vec![gtc_id.as_str()]);
    app.stop().await.expect("stop");
}

async fn book_seq_is_contiguous_and_the_deltas_reproduce_the_servers_book(backend: Backend) {
    let (app, mut trader) = market(backend).await;
    // Move the market and take liquidity so the book changes in several ways.
    publish_quote(&app, "AAPL", 100.10, 100.12).await;
    trader
        .order(
            json!({"symbol":"AAPL","qty":"150","side":"buy","type":"market","time_in_force":"day"}),
        )
        .await;
    publish_trade(&app, "AAPL", 100.11).await;
    publish_quote(&app, "AAPL", 100.05, 100.08).await;
    trader
        .order(json!({"symbol":"AAPL","qty":"120","side":"sell","type":"market","time_in_force":"day"}))
        .await;

    // A second connection's snapshot is the server's book now; the first connection, having
    // applied only deltas since its snapshot, must converge to exactly the same levels.
    let mut observer = connect_as(&app, "bob").await;
    observer.subscribe(json!({"orderbooks":["AAPL"]})).await;
    let snapshot = observer.expect("o").await;
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["snapshot"], true);
    let mut server_book = LocalBook::default();
    server_book.apply(&snapshot);
    assert_eq!(server_book.best_bid(), Some(Decimal::new(10005, 2)));
    trader.until(|t| t.book.same_levels(&server_book)).await;
    assert!(trader.book.seq > 3, "several deltas were applied");

    // A resync gives a snapshot with the next seq and the same levels.
    let seq_before = trader.book.seq;
    trader
        .client
        .send_json(json!({"action":"resync","orderbooks":["AAPL"]}))
        .await;
    let mut resynced = None;
    while resynced.is_none() {
        let object = trader.read_one().await;
        if object["T"] == "o" && object["snapshot"] == true {
            resynced = Some(object);
        }
    }
    assert!(trader.book.seq > seq_before);
    assert!(trader.book.same_levels(&server_book));
    app.stop().await.expect("stop");
}

async fn a_throttled_book_gets_fewer_merged_deltas_that_still_rebuild_the_servers_book(
    backend: Backend,
) {
    let (app, mut trader) = market(backend).await;
    let mut client = connect_as(&app, "carol").await;
    let reply = client
        .subscribe(json!({"orderbooks":["AAPL"],"max_rate":1}))
        .await;
    assert_eq!(reply["max_rate"]["orderbooks"], 1, "{reply}");
    let mut throttled = Trader {
        client,
        book: LocalBook::default(),
        updates: Vec::new(),
        portfolios: Vec::new(),
    };
    throttled.until(|t| t.book.seq == 1).await;
    let unthrottled_from = trader.book.seq;
    // Several book changes within a second: regenerations and a taker.
    for step in 0..6 {
        let bid = 100.0 + f64::from(step) * 0.03;
        publish_quote(&app, "AAPL", bid, bid + 0.02).await;
    }
    trader
        .order(
            json!({"symbol":"AAPL","qty":"130","side":"buy","type":"market","time_in_force":"day"}),
        )
        .await;
    let mut observer = connect_as(&app, "bob").await;
    observer.subscribe(json!({"orderbooks":["AAPL"]})).await;
    let snapshot = observer.expect("o").await;
    let mut server_book = LocalBook::default();
    server_book.apply(&snapshot);
    // Both converge on the server's book; `apply` checks that `seq` has no gap.
    trader.until(|t| t.book.same_levels(&server_book)).await;
    throttled.until(|t| t.book.same_levels(&server_book)).await;
    let unthrottled_deltas = trader.book.seq - unthrottled_from;
    let throttled_deltas = throttled.book.seq - 1;
    assert!(
        throttled_deltas < unthrottled_deltas,
        "merged: {throttled_deltas} deltas against {unthrottled_deltas}"
    );
    app.stop().await.expect("stop");
}
