//! Order books across a failover of the exchange, with real processes: a book subscriber on
//! a cluster node keeps the exchange's book through a `kill -9` of the exchange's node, the
//! new exchange's snapshot stands at the market's last quote (published while no exchange
//! ran) without waiting for another, and a node that joins late serves the exchange's book,
//! not the opening one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::trading_nodes::{exchange_holder, trading_node_with};
use crate::cluster_support::Node;
use crate::postgres_support::TestDatabase;
use crate::redis_support::RedisServer;
use crate::ws_support::token_for;

const ADMIN_TOKEN: &str = "book-test-admin-token";

/// Levels per side of a generated book (`trading.book_levels` in config/default.toml).
const BOOK_LEVELS: usize = 10;

/// No simulator (only the test's quotes move the books) and a known admin token.
fn book_node(redis: &RedisServer, database: &TestDatabase, id: &str) -> Node {
    trading_node_with(
        redis,
        database,
        id,
        &[
            ("TICKGATE__SIMULATOR__ENABLED", "false"),
            ("TICKGATE__PUBLISH__ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
}

async fn publish_quote(node: &Node, bid: f64, ask: f64) {
    let quote = json!({
        "T": "q", "S": "AAPL", "bp": bid, "bs": 300, "bx": "T",
        "ap": ask, "as": 200, "ax": "T", "t": chrono::Utc::now(),
    });
    let response = reqwest::Client::new()
        .post(node.url("/v1/publish"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&quote)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "publish: {body}");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One side of a book: price → size.
type Side = BTreeMap<Decimal, Decimal>;

/// A WebSocket client following the AAPL book as docs/websocket.md says: a snapshot replaces
/// the book, a delta sets each level's absolute size ("0" removes it), `seq` rises by one.
struct BookClient {
    socket: Socket,
    bids: Side,
    asks: Side,
    seq: u64,
    snapshots: u32,
    /// The book as the last snapshot left it (before any delta after it).
    last_snapshot: (Side, Side),
}

impl BookClient {
    async fn connect(node: &Node, user: &str) -> BookClient {
        let mut request = format!("ws://127.0.0.1:{}/v1/stream", node.port)
            .into_client_request()
            .expect("request");
        let bearer = format!("Bearer {}", token_for(user))
            .parse()
            .expect("header");
        request.headers_mut().insert("authorization", bearer);
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket connects");
        let mut client = BookClient {
            socket,
            bids: Side::new(),
            asks: Side::new(),
            seq: 0,
            snapshots: 0,
            last_snapshot: (Side::new(), Side::new()),
        };
        let subscribe = json!({"action": "subscribe", "orderbooks": ["AAPL"]});
        client
            .socket
            .send(Message::text(subscribe.to_string()))
            .await
            .expect("subscribe sent");
        client
            .until(
                |client| client.snapshots > 0,
                Duration::from_secs(20),
                "a snapshot",
            )
            .await;
        client
    }

    fn apply(&mut self, object: &Value) {
        let seq = object["seq"].as_u64().expect("seq");
        assert_eq!(seq, self.seq + 1, "book seq rises by one: {object}");
        self.seq = seq;
        let levels = |key: &str| -> Vec<(Decimal, Decimal)> {
            object[key]
                .as_array()
                .expect("levels")
                .iter()
                .map(|level| {
                    let number = |index: usize| -> Decimal {
                        level[index]
                            .as_str()
                            .expect("a string")
                            .parse()
                            .expect("decimal")
                    };
                    (number(0), number(1))
                })
                .collect()
        };
        if object["snapshot"] == true {
            self.snapshots += 1;
            self.bids.clear();
            self.asks.clear();
        }
        for (side, key) in [(&mut self.bids, "b"), (&mut self.asks, "a")] {
            for (price, size) in levels(key) {
                if size.is_zero() {
                    side.remove(&price);
                } else {
                    side.insert(price, size);
                }
            }
        }
        if object["snapshot"] == true {
            self.last_snapshot = self.levels();
        }
    }

    /// Reads frames until `done` holds; panics with the book after `within`.
    async fn until(&mut self, done: impl Fn(&BookClient) -> bool, within: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            let frame = tokio::time::timeout_at(deadline, self.socket.next()).await;
            let text = match frame {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("the socket ended waiting for {what}: {other:?}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; the client's book: bids {:?} asks {:?}",
                    self.bids, self.asks
                ),
            };
            let frame: Value = serde_json::from_str(&text).expect("JSON frame");
            for object in frame.as_array().into_iter().flatten() {
                if object["T"] == "o" {
                    self.apply(object);
                }
            }
        }
    }

    /// The book as a generated one around the quote (`bid`, `ask`, sizes 300 and 200 on
    /// top): `BOOK_LEVELS` levels a tick apart on each side, nothing else.
    fn is_around(&self, bid: Decimal, ask: Decimal) -> bool {
        is_around((&self.bids, &self.asks), bid, ask)
    }

    fn levels(&self) -> (Side, Side) {
        (self.bids.clone(), self.asks.clone())
    }
}

/// Whether the book (bids, asks) is a generated one around the quote (`bid`, `ask`, sizes 300
/// and 200 on top): `BOOK_LEVELS` levels a tick apart on each side, nothing else.
fn is_around((book_bids, book_asks): (&Side, &Side), bid: Decimal, ask: Decimal) -> bool {
    let tick = dec!(0.01);
    let bids: Vec<Decimal> = book_bids.keys().rev().copied().collect();
    let asks: Vec<Decimal> = book_asks.keys().copied().collect();
    let expected_bids: Vec<Decimal> = (0..BOOK_LEVELS)
        .map(|depth| bid - tick * Decimal::from(depth))
        .collect();
    let expected_asks: Vec<Decimal> = (0..BOOK_LEVELS)
        .map(|depth| ask + tick * Decimal::from(depth))
        .collect();
    bids == expected_bids
        && asks == expected_asks
        && book_bids.get(&bid) == Some(&dec!(300))
        && book_asks.get(&ask) == Some(&dec!(200))
}

/// The index of the node whose exchange runs: it holds the lease and has finished taking over
/// (rebuilt and following the market; a quote published earlier would never reach it).
async fn running_exchange(redis: &RedisServer, nodes: &[&Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(holder) = exchange_holder(redis)
            && let Some(index) = nodes.iter().position(|n| n.id == holder)
            && nodes[index]
                .metric("tickgate_cluster_exchange_takeovers_total")
                .await
                .is_some_and(|takeovers| takeovers >= 1.0)
        {
            return index;
        }
        assert!(Instant::now() < deadline, "no exchange runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_book_subscriber_keeps_the_exchanges_book_through_a_failover_and_a_late_node_serves_it() {
    let redis = RedisServer::start();
    let database = TestDatabase::create();
    let mut nodes = vec![
        book_node(&redis, &database, "book-a"),
        book_node(&redis, &database, "book-b"),
    ];
    for node in &nodes {
        node.wait_ready().await;
    }
    let holder = running_exchange(&redis, &[&nodes[0], &nodes[1]]).await;
    let survivor = 1 - holder;
    let mut watcher = BookClient::connect(&nodes[survivor], "alice").await;

    // The first exchange moves the book; the watcher follows its deltas.
    publish_quote(&nodes[survivor], 400.00, 400.02).await;
    watcher
        .until(
            |client| client.is_around(dec!(400.00), dec!(400.02)),
            Duration::from_secs(20),
            "the book around the first quote",
        )
        .await;

    // The exchange's node dies; a quote arrives while no exchange runs.
    nodes[holder].kill9();
    publish_quote(&nodes[survivor], 250.00, 250.02).await;
    // Each node takes the lease once here, so the survivor's first takeover is this one.
    assert_eq!(running_exchange(&redis, &[&nodes[survivor]]).await, 0);
    // Without another quote, the new exchange's snapshot is the book of the market's last
    // quote (which it read from the feeds' latest values in Redis), not the opening book.
    watcher
        .until(
            |client| {
                client.snapshots >= 2
                    && is_around(
                        (&client.last_snapshot.0, &client.last_snapshot.1),
                        dec!(250.00),
                        dec!(250.02),
                    )
            },
            Duration::from_secs(20),
            "the new exchange's snapshot around the quote published before it ran",
        )
        .await;
    // The new exchange's deltas: the watcher's book must be exactly the book around this
    // quote, with nothing left of the former exchange's levels.
    publish_quote(&nodes[survivor], 150.10, 150.12).await;
    watcher
        .until(
            |client| client.is_around(dec!(150.10), dec!(150.12)),
            Duration::from_secs(20),
            "the new exchange's book around the last quote",
        )
        .await;
    assert!(
        watcher.snapshots >= 2,
        "the takeover reached the watcher as a fresh snapshot"
    );

    // A node that joins now serves the exchange's book (same levels and sizes), not the
    // opening book it starts from.
    let late = book_node(&redis, &database, "book-late");
    late.wait_ready().await;
    let mut newcomer = BookClient::connect(&late, "bob").await;
    let expected = watcher.levels();
    newcomer
        .until(
            |client| client.levels() == expected,
            Duration::from_secs(20),
            "the late node's book to equal the exchange's",
        )
        .await;
    assert!(newcomer.is_around(dec!(150.10), dec!(150.12)));
    nodes.push(late);
}
