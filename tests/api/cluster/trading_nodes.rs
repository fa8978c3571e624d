//! Cluster trading across real processes: three gateway nodes on one `redis-server` and one
//! PostgreSQL database, four users trading over WebSockets on different nodes while the
//! exchange's node is killed (`kill -9`) three times, and an exchange node paused (`SIGSTOP`)
//! past its lease, and a halt of the exchange (the database refusing its writes) reaching the
//! sessions of every node. Every process is stopped by its PID.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::trading_outage::check_outages_told;
use crate::cluster_support::{LEASE_TTL, Node};
use crate::postgres_support::TestDatabase;
use crate::redis_support::RedisServer;
use crate::ws_support::{SECRET, token_for};

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

const WATCHERS: [&str; 3] = ["watcher-0", "watcher-1", "watcher-2"];

/// The demo user's argon2id hash (its password is irrelevant here: tokens are minted).
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$G4k6ZCByHTmXkS9hTHTvNg$FTa5teUHJ36P4XIvkeH8VzON6zzO2UqiZ2xbb0E4Uts";

pub(super) fn node_config() -> String {
    let mut toml = format!("[auth]\nhs256_secret = \"{SECRET}\"\n");
    for user in USERS {
        toml.push_str(&format!(
            "[[auth.users]]\nusername = \"{user}\"\npassword_hash = \"{HASH}\"\n"
        ));
    }
    toml
}

fn trading_node(redis: &RedisServer, database: &TestDatabase, id: &str) -> Node {
    trading_node_with(redis, database, id, &[])
}

/// A trading node on `database` with `extra` settings as `TICKGATE__…` variables.
pub(super) fn trading_node_with(
    redis: &RedisServer,
    database: &TestDatabase,
    id: &str,
    extra: &[(&str, &str)],
) -> Node {
    let url = database.url();
    let data_dir = std::env::temp_dir().join(format!("tickgate-ct-{id}-{}", std::process::id()));
    let data_dir = data_dir.to_string_lossy().into_owned();
    let mut settings = vec![
        ("TICKGATE__STORE__ENABLED", "true"),
        ("TICKGATE__STORE__BACKEND", "postgres"),
        ("TICKGATE__STORE__POSTGRES_URL", url.as_str()),
        ("TICKGATE__STORE__DATA_DIR", data_dir.as_str()),
        // Nodes sharing a database must share the API key hash key (else the second exits 2).
        (
            "TICKGATE__AUTH__API_KEY_HASH_KEY",
            "cluster-test-api-key-hash-key-0123456789",
        ),
    ];
    settings.extend_from_slice(extra);
    Node::spawn_with_config(redis, id, &settings, &node_config())
}

/// The id of the node holding the exchange's lease, from Redis.
pub(super) fn exchange_holder(redis: &RedisServer) -> Option<String> {
    let value = redis.cli(&["GET", "tickgate:lease:exchange"])?;
    let (node, _) = value.trim().rsplit_once(':')?;
    (!node.is_empty()).then(|| node.to_owned())
}

/// Waits until `nodes` are ready and one of them holds the exchange's lease; its index.
pub(super) async fn exchange_index(redis: &RedisServer, nodes: &[Node]) -> usize {
    for node in nodes {
        node.wait_ready().await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(holder) = exchange_holder(redis)
            && let Some(index) = nodes.iter().position(|n| n.id == holder)
        {
            return index;
        }
        assert!(Instant::now() < deadline, "no exchange");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one trader saw and had acknowledged.
#[derive(Default, Debug)]
pub(super) struct Ledger {
    /// Every `seq` received, in arrival order (replays included).
    pub(super) seen: Vec<u64>,
    /// Acknowledged orders: client_order_id → order id.
    pub(super) acked: BTreeMap<String, String>,
    /// Fills the trader saw.
    pub(super) executions: BTreeSet<String>,
    pub(super) reconnects: u32,
    /// Orders answered 50310002 or 408 and sent again.
    pub(super) retries: u32,
    /// The `sc` of every status frame received, in order.
    pub(super) statuses: Vec<String>,
    /// When each connection was made, and to which port.
    pub(super) connections: Vec<(Instant, u16)>,
    /// Every trading availability status received: when, on which connection (an index
    /// into `connections`), and its `sc`.
    pub(super) availability: Vec<(Instant, usize, String)>,
}

pub(super) struct Trader {
    pub(super) user: &'static str,
    pub(super) ports: Arc<Mutex<Vec<u16>>>,
    pub(super) slot: usize,
    pub(super) socket: Option<Socket>,
    pub(super) last_seq: u64,
    pub(super) ledger: Ledger,
}

pub(super) enum Outcome {
    Acked(String),
    Retry,
}

impl Trader {
    /// A trader whose sessions go to `port`.
    pub(super) fn on(user: &'static str, port: u16) -> Trader {
        Trader {
            user,
            ports: Arc::new(Mutex::new(vec![port; 3])),
            slot: 0,
            socket: None,
            last_seq: 0,
            ledger: Ledger::default(),
        }
    }

    /// Connects and resumes the trade updates after the last `seq` seen (an exchange call).
    pub(super) async fn connect(&mut self) -> bool {
        let subscribe = json!({"action": "subscribe", "trade_updates": {"since": self.last_seq}});
        if !self.dial().await || !self.send(subscribe).await {
            return false;
        }
        // Replayed updates, then `trade_updates_live`.
        loop {
            match self.next(Duration::from_secs(15)).await {
                Some(object) if object["T"] == "trade_updates_live" => return true,
                Some(object) if object["T"] == "trade_updates_reset" => {
                    panic!("{}: no resume may reset here: {object}", self.user)
                }
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// Opens the WebSocket connection, authenticated.
    pub(super) async fn dial(&mut self) -> bool {
        let port = self.ports.lock()[self.slot % 3];
        let url = format!("ws://127.0.0.1:{port}/v1/stream");
        let Ok(mut request) = url.into_client_request() else {
            return false;
        };
        let bearer = format!("Bearer {}", token_for(self.user));
        let Ok(header) = bearer.parse() else {
            return false;
        };
        request.headers_mut().insert("authorization", header);
        let Ok(Ok((socket, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(request),
        )
        .await
        else {
            return false;
        };
        self.socket = Some(socket);
        self.ledger.connections.push((Instant::now(), port));
        true
    }

    pub(super) async fn send(&mut self, value: Value) -> bool {
        match &mut self.socket {
            Some(socket) => socket.send(Message::text(value.to_string())).await.is_ok(),
            None => false,
        }
    }

    /// The next object (trade updates are recorded on the way), or `None` when the
    /// connection is gone or silent for `within`.
    pub(super) async fn next(&mut self, within: Duration) -> Option<Value> {
        loop {
            let socket = self.socket.as_mut()?;
            let frame = tokio::time::timeout(within, socket.next()).await;
            let text = match frame {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    self.socket = None;
                    return None;
                }
                Ok(Some(Ok(_))) => continue,
            };
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) else {
                panic!("not a JSON array: {text}");
            };
            // Only the last object is returned; the others are recorded (updates) or skipped.
            let mut last = None;
            for item in items {
                if item["T"] == "s"
                    && let Some(code) = item["sc"].as_str()
                {
                    self.ledger.statuses.push(code.to_owned());
                    if code == "trading_unavailable" || code == "trading_available" {
                        let connection = self.ledger.connections.len().saturating_sub(1);
                        self.ledger.availability.push((
                            Instant::now(),
                            connection,
                            code.to_owned(),
                        ));
                    }
                }
                if item["T"] == "trade_update" {
                    let seq = item["seq"].as_u64().expect("seq");
                    self.ledger.seen.push(seq);
                    self.last_seq = self.last_seq.max(seq);
                    if let Some(execution) = item["execution_id"].as_str() {
                        self.ledger.executions.insert(execution.to_owned());
                    }
                }
                last = Some(item);
            }
            if let Some(item) = last {
                return Some(item);
            }
        }
    }

    /// Sends the order once and waits for its answer.
    pub(super) async fn attempt(
        &mut self,
        request_id: u64,
        client_order_id: &str,
        side: &str,
    ) -> Outcome {
        let order = json!({"action": "order", "id": request_id, "data": {
            "symbol": "AAPL", "qty": "1", "side": side, "type": "market",
            "time_in_force": "day", "client_order_id": client_order_id}});
        if !self.send(order).await {
            return Outcome::Retry;
        }
        loop {
            let Some(object) = self.next(Duration::from_secs(20)).await else {
                return Outcome::Retry;
            };
            if object["id"].as_u64() != Some(request_id) {
                continue;
            }
            match object["T"].as_str() {
                Some("order_ack") => {
                    return Outcome::Acked(object["order"]["id"].as_str().expect("id").into());
                }
                Some("error") if object["code"] == 42210002 => {
                    // An earlier attempt ran: the error names that order.
                    let id = object["order"]["id"].as_str().expect("the existing order");
                    return Outcome::Acked(id.into());
                }
                Some("error") if object["code"] == 50310002 => return Outcome::Retry,
                // Over the action rate limit: the same order again, a little later.
                Some("error") if object["code"] == 408 => return Outcome::Retry,
                _ => panic!("{}: unexpected answer {object}", self.user),
            }
        }
    }

    pub(super) async fn run(mut self, stop: Arc<AtomicBool>) -> (&'static str, Ledger) {
        let mut number = 0u64;
        while !stop.load(Ordering::Relaxed) {
            number += 1;
            let client_order_id = format!("{}-{number}", self.user);
            let side = if number % 2 == 1 { "buy" } else { "sell" };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{client_order_id} never answered"
                );
                if self.socket.is_none() {
                    self.ledger.reconnects += 1;
                    if !self.connect().await {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                match self.attempt(number, &client_order_id, side).await {
                    Outcome::Acked(id) => {
                        self.ledger.acked.insert(client_order_id.clone(), id);
                        // A trader's pace, well under the session's action rate limit.
                        tokio::time::sleep(Duration::from_millis(60)).await;
                        break;
                    }
                    Outcome::Retry => {
                        self.ledger.retries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        (self.user, self.ledger)
    }
}

/// The stored sequences of `user`, in order.
pub(super) fn stored_seqs(database: &TestDatabase, user: &str) -> Vec<u64> {
    database
        .psql(&format!(
            "SELECT seq FROM trade_updates WHERE username = '{user}' ORDER BY seq"
        ))
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The failover test's lease: long enough that a crashed exchange's lease outlives the
/// nodes' default silence limit (1 s) with room to spare (it expires 2 to 3 s after the kill),
/// so every surviving session is told of each outage.
const FAILOVER_LEASE: [(&str, &str); 1] = [("TICKGATE__CLUSTER__LEASE_TTL", "3s")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_users_trade_through_three_kills_of_the_exchange_and_nothing_is_lost_or_doubled() {
    let redis = RedisServer::start();
    let database = TestDatabase::create();
    let mut nodes = vec![
        trading_node_with(&redis, &database, "node-a", &FAILOVER_LEASE),
        trading_node_with(&redis, &database, "node-b", &FAILOVER_LEASE),
        trading_node_with(&redis, &database, "node-c", &FAILOVER_LEASE),
    ];
    for node in &nodes {
        node.wait_ready().await;
    }
    let ports = Arc::new(Mutex::new(nodes.iter().map(|n| n.port).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let traders: Vec<_> = USERS
        .iter()
        .enumerate()
        .map(|(slot, user)| {
            let trader = Trader {
                user,
                ports: Arc::clone(&ports),
                slot,
                socket: None,
                last_seq: 0,
                ledger: Ledger::default(),
            };
            tokio::spawn(trader.run(Arc::clone(&stop)))
        })
        .collect();

    // A watcher on each node's slot follows a book and places no order, so nothing it waits
    // for holds its statuses back (a session's frames wait while an order of its own does).
    let watchers: Vec<_> = (0..3)
        .map(|slot| {
            let mut watcher = Trader::on(USERS[slot], 0);
            watcher.ports = Arc::clone(&ports);
            watcher.slot = slot;
            tokio::spawn(watcher.watch(WATCHERS[slot], Arc::clone(&stop)))
        })
        .collect();
    let mut spawned = 0;
    let mut kills = Vec::new();
    for _ in 0..3 {
        // Let trading run, then kill whichever node runs the exchange now.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let holder = loop {
            if let Some(holder) = exchange_holder(&redis)
                && let Some(index) = nodes.iter().position(|n| n.id == holder)
            {
                break index;
            }
            assert!(
                Instant::now() < deadline,
                "no node holds the exchange's lease"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        nodes[holder].kill9();
        kills.push((Instant::now(), nodes[holder].port));
        spawned += 1;
        let replacement = trading_node_with(
            &redis,
            &database,
            &format!("node-r{spawned}"),
            &FAILOVER_LEASE,
        );
        replacement.wait_ready().await;
        ports.lock()[holder] = replacement.port;
        let killed = std::mem::replace(&mut nodes[holder], replacement);
        // The next kill comes a while after this takeover, not in the middle of it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while exchange_holder(&redis).is_none_or(|holder| holder == killed.id) {
            assert!(Instant::now() < deadline, "no takeover after the kill");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut ledgers = BTreeMap::new();
    for trader in traders {
        let (user, ledger) = trader.await.expect("trader finished");
        ledgers.insert(user, ledger);
    }

    let mut watched = BTreeMap::new();
    for watcher in watchers {
        let (label, ledger) = watcher.await.expect("watcher finished");
        watched.insert(label, ledger);
    }
    check_outages_told(&ledgers, &kills, end, Duration::ZERO);
    // Told while trading was unavailable, not together with the return.
    check_outages_told(&watched, &kills, end, Duration::from_millis(200));
    let duplicates = database
        .psql("SELECT username, client_order_id FROM orders GROUP BY 1, 2 HAVING count(*) > 1");
    assert!(
        duplicates.trim().is_empty(),
        "a client_order_id twice: {duplicates}"
    );
    for (user, ledger) in &ledgers {
        assert!(ledger.acked.len() >= 3, "{user} traded: {ledger:?}");
        // Every acknowledged order is stored, under its client_order_id.
        for (client_order_id, id) in &ledger.acked {
            let stored = database.psql(&format!(
                "SELECT client_order_id FROM orders WHERE id = '{id}' AND username = '{user}'"
            ));
            assert_eq!(
                stored.trim(),
                client_order_id,
                "{user}'s acknowledged order {id}"
            );
        }
        // Every fill a client saw is stored.
        for execution in &ledger.executions {
            let stored = database.psql(&format!(
                "SELECT count(*) FROM fills WHERE execution_id = '{execution}'"
            ));
            assert_eq!(stored.trim(), "1", "{user}'s fill {execution}");
        }
        // The stored sequence is contiguous.
        let seqs = stored_seqs(&database, user);
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{user}'s stored seq is 1..=n");
        // The client saw each update it was told of exactly once, in order, with no gap
        // (it may stop before the last updates of its last order: those are stored).
        let seen = &ledger.seen;
        let expected_seen: Vec<u64> = (1..=seen.len() as u64).collect();
        assert_eq!(
            seen, &expected_seen,
            "{user} saw every update once, in order"
        );
        assert!(seen.len() <= seqs.len());
    }
    // Cash and positions are what the fills imply.
    let cash_off = database.psql(
        "SELECT a.username FROM accounts a LEFT JOIN fills f ON f.username = a.username
         GROUP BY a.username, a.cash, a.initial_cash
         HAVING a.cash <> a.initial_cash + COALESCE(SUM(CASE WHEN f.side = 'buy'
             THEN -f.qty * f.price ELSE f.qty * f.price END - f.commission), 0)",
    );
    assert!(
        cash_off.trim().is_empty(),
        "cash differs from the fills: {cash_off}"
    );
    let positions_off = database.psql(
        "SELECT COALESCE(f.username, p.username) FROM
           (SELECT username, symbol, SUM(CASE WHEN side = 'buy' THEN qty ELSE -qty END) AS qty
              FROM fills GROUP BY 1, 2) f
           FULL JOIN positions p ON p.username = f.username AND p.symbol = f.symbol
         WHERE COALESCE(f.qty, 0) <> COALESCE(p.qty, 0)",
    );
    assert!(
        positions_off.trim().is_empty(),
        "positions differ from the fills: {positions_off}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_paused_past_its_lease_writes_nothing_after_it_wakes() {
    let redis = RedisServer::start();
    let database = TestDatabase::create();
    let nodes = [
        trading_node(&redis, &database, "node-p"),
        trading_node(&redis, &database, "node-q"),
    ];
    let paused = exchange_index(&redis, &nodes).await;
    let other = &nodes[1 - paused];
    let ports = Arc::new(Mutex::new(vec![other.port; 3]));
    let trader = |user: &'static str| Trader {
        user,
        ports: Arc::clone(&ports),
        slot: 0,
        socket: None,
        last_seq: 0,
        ledger: Ledger::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Orders keep coming while the exchange is paused mid-way.
    let running = tokio::spawn(trader("alice").run(Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[paused].signal("STOP");
    // The other node takes the lease (after lease_ttl + a renewal) and runs the exchange.
    let deadline = Instant::now() + LEASE_TTL * 10;
    while exchange_holder(&redis).as_deref() != Some(other.id.as_str()) {
        assert!(Instant::now() < deadline, "no takeover while paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, ledger) = running.await.expect("trader");
    assert!(
        ledger.acked.len() >= 2,
        "orders went on after the takeover: {ledger:?}"
    );
    // Quiet: market orders leave nothing resting, so the new exchange writes nothing now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = database.psql("SELECT count(*), max(seq) FROM exchange_events");
    let fence_before = database.psql("SELECT token FROM fences WHERE name = 'exchange'");
    nodes[paused].signal("CONT");
    tokio::time::sleep(LEASE_TTL * 3).await;
    assert_eq!(
        database.psql("SELECT count(*), max(seq) FROM exchange_events"),
        before,
        "the woken former exchange wrote nothing"
    );
    assert_eq!(
        database.psql("SELECT token FROM fences WHERE name = 'exchange'"),
        fence_before,
        "the fence is still the new holder's"
    );
    assert_eq!(exchange_holder(&redis).as_deref(), Some(other.id.as_str()));
    assert!(
        !nodes[paused].holds("exchange").await,
        "the woken node knows it no longer runs the exchange"
    );
    let woken = nodes[paused].log_text();
    eprintln!(
        "paused exchange: a write refused by the fence after waking: {}",
        woken.contains("(fenced)")
    );
    let duplicates = database
        .psql("SELECT username, client_order_id FROM orders GROUP BY 1, 2 HAVING count(*) > 1");
    assert!(duplicates.trim().is_empty(), "{duplicates}");
    let seqs = stored_seqs(&database, "alice");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

impl Trader {
    /// Sends an order and returns the answer to it (whatever it is).
    pub(super) async fn answer(&mut self, request_id: u64, client_order_id: &str) -> Value {
        let order = json!({"action": "order", "id": request_id, "data": {
            "symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
            "time_in_force": "day", "client_order_id": client_order_id}});
        assert!(self.send(order).await, "{}: order sent", self.user);
        loop {
            let object = self
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("{}: no answer to {client_order_id}", self.user));
            if object["id"].as_u64() == Some(request_id) {
                return object;
            }
        }
    }

    /// Reads until a status frame with `code` arrived; fails after `within`.
    pub(super) async fn until_status(&mut self, code: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.ledger.statuses.iter().any(|seen| seen == code) {
            let left = deadline.saturating_duration_since(Instant::now());
            // `None`: silent until the deadline, or the connection closed.
            if left.is_zero() || self.next(left).await.is_none() {
                panic!(
                    "{}: no {code}; statuses {:?}",
                    self.user, self.ledger.statuses
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_of_the_exchange_on_a_database_failure_and_its_resume_reach_every_nodes_sessions_once()
 {
    let redis = RedisServer::start();
    let database = TestDatabase::create();
    let nodes = [
        trading_node(&redis, &database, "node-h"),
        trading_node(&redis, &database, "node-i"),
    ];
    let exchange = exchange_index(&redis, &nodes).await;
    // One trading session on each node: alice on the exchange's, bob on the other.
    let mut on_exchange = Trader::on("alice", nodes[exchange].port);
    let mut elsewhere = Trader::on("bob", nodes[1 - exchange].port);
    assert!(on_exchange.connect().await && elsewhere.connect().await);
    // The exchange runs and has stored an order.
    let first = loop {
        match elsewhere.attempt(1, "bob-1", "buy").await {
            Outcome::Acked(id) => break id,
            Outcome::Retry => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(!first.is_empty());

    // The database refuses the exchange's writes: its event log and the probe's row raise.
    database.psql(
        "CREATE FUNCTION refuse_write() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE TRIGGER refuse_events BEFORE INSERT ON exchange_events \
         FOR EACH ROW EXECUTE FUNCTION refuse_write(); \
         CREATE TRIGGER refuse_probe BEFORE INSERT OR UPDATE ON meta \
         FOR EACH ROW EXECUTE FUNCTION refuse_write();",
    );
    let refused = elsewhere.answer(2, "bob-2").await;
    assert_eq!(refused["T"], "error", "{refused}");
    assert!(
        refused["msg"].as_str().unwrap_or("").contains("halted"),
        "{refused}"
    );
    on_exchange
        .until_status("trading_halted", Duration::from_secs(15))
        .await;
    elsewhere
        .until_status("trading_halted", Duration::from_secs(15))
        .await;

    database.psql(
        "DROP TRIGGER refuse_events ON exchange_events; DROP TRIGGER refuse_probe ON meta; \
         DROP FUNCTION refuse_write();",
    );
    // Probes back off (0.5 s, 1 s, 2 s, ...): the resume comes within a few seconds.
    on_exchange
        .until_status("trading_resumed", Duration::from_secs(40))
        .await;
    elsewhere
        .until_status("trading_resumed", Duration::from_secs(40))
        .await;
    let after = loop {
        match elsewhere.attempt(3, "bob-3", "buy").await {
            Outcome::Acked(id) => break id,
            Outcome::Retry => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(!after.is_empty());
    // Nothing repeated: each session got each status once, the halt before the resume.
    for trader in [&mut on_exchange, &mut elsewhere] {
        while trader.next(Duration::from_millis(700)).await.is_some() {}
        let told: Vec<&str> = trader
            .ledger
            .statuses
            .iter()
            .map(String::as_str)
            .filter(|code| *code == "trading_halted" || *code == "trading_resumed")
            .collect();
        assert_eq!(
            told,
            vec!["trading_halted", "trading_resumed"],
            "{}",
            trader.user
        );
    }
    let refused_order =
        database.psql("SELECT count(*) FROM orders WHERE client_order_id = 'bob-2'");
    assert_eq!(
        refused_order.trim(),
        "0",
        "the refused order was not stored"
    );
}
