//! Crash recovery of the real binary: several users stream orders over the WebSocket, the
//! gateway is killed with SIGKILL at random moments, restarted on the same data directory, and
//! every order and fill acknowledged to a client must still be there with the same state,
//! with each account's cash and positions equal to what its stored fills imply. Trade updates
//! keep their per-user `seq`: the stored ones are contiguous, every update a client saw is
//! stored under the same `seq` with the same content, and a client that resumes each round
//! with `since` (the last `seq` it saw) gets every update exactly once, in order.
//!
//! It runs on both store backends (SQLite, and PostgreSQL on a server the test starts). The
//! seed of each run is printed; set `CRASH_SEED` to replay one.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::postgres_support::TestDatabase;

const SECRET: &str = "crash-recovery-test-secret-of-32-bytes-or-more";
const USERS: [&str; 4] = ["ann", "bob", "cem", "dee"];
/// Any argon2 PHC string: these users never log in with a password, but the built-in issuer
/// accepts tokens only for users in `auth.users`.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$G4k6ZCByHTmXkS9hTHTvNg$FTa5teUHJ36P4XIvkeH8VzON6zzO2UqiZ2xbb0E4Uts";
const SYMBOLS: [&str; 3] = ["AAPL", "MSFT", "NVDA"];
const ROUNDS: usize = 6;
const DEADLINE: Duration = Duration::from_secs(15);

struct Gateway {
    child: Child,
    port: u16,
}

/// Starts the binary and waits for its "listening" log line (JSON logs carry the port).
fn start_gateway(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .arg("--config-dir")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
        .arg("--config")
        .arg(config)
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    // Keeps draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut port_tx = Some(port_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                if entry["level"] == "ERROR" {
                    eprintln!("gateway: {line}");
                }
                if let Some(port) = entry["port"].as_u64()
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port as u16);
                }
            }
        }
    });
    let port = match port_rx.recv_timeout(DEADLINE) {
        Ok(port) => port,
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            panic!("tickgate did not start: {status}");
        }
    };
    Gateway { child, port }
}

fn token_for(user: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "iss": "tickgate", "aud": "tickgate", "iat": now, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

fn decimal(value: &Value) -> Decimal {
    match value {
        Value::String(text) => Decimal::from_str(text).expect("decimal string"),
        Value::Number(number) => Decimal::from_str(&number.to_string()).expect("decimal number"),
        other => panic!("not a decimal: {other}"),
    }
}

/// What one client was told: the latest order entity per order (from its ack or a later
/// trade update) and every fill.
#[derive(Debug, Default)]
struct Observed {
    orders: HashMap<String, Value>,
    /// execution id -> (order id, qty, price)
    fills: HashMap<String, (String, Decimal, Decimal)>,
    /// Every trade update in the order it arrived, by `seq` (the object without its `T`).
    updates: Vec<(u64, Value)>,
}

impl Observed {
    fn note_order(&mut self, order: &Value) {
        let id = order["id"].as_str().expect("order id").to_owned();
        self.orders.insert(id, order.clone());
    }

    fn note_frame(&mut self, item: &Value) {
        match item["T"].as_str() {
            Some("order_ack") => self.note_order(&item["order"]),
            Some("trade_update") => {
                let seq = item["seq"].as_u64().expect("a trade update has a seq");
                let mut body = item.clone();
                if let Some(object) = body.as_object_mut() {
                    object.remove("T");
                }
                self.updates.push((seq, body));
                self.note_order(&item["order"]);
                if let Some(execution_id) = item["execution_id"].as_str() {
                    self.fills.insert(
                        execution_id.to_owned(),
                        (
                            item["order"]["id"].as_str().expect("id").to_owned(),
                            decimal(&item["qty"]),
                            decimal(&item["price"]),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// Streams orders for `user` until the connection dies (the kill), after resuming its trade
/// updates from `since`.
async fn trade(port: u16, user: &'static str, seed: u64, since: u64, observed: &mut Observed) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut request = format!("ws://127.0.0.1:{port}/v1/stream")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token_for(user))
            .parse()
            .expect("header"),
    );
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
        return;
    };
    let subscribe = json!({"action":"subscribe","trade_updates":{"since": since}}).to_string();
    if socket.send(Message::text(subscribe)).await.is_err() {
        return;
    }
    let mut resting: Vec<String> = Vec::new();
    for step in 0u64.. {
        let request_id = format!("{user}-{seed}-{step}");
        let symbol = SYMBOLS[rng.random_range(0..SYMBOLS.len())];
        let action = match rng.random_range(0..100) {
            0..40 => json!({"action":"order","id":request_id,"data":{
                "symbol":symbol,"qty":rng.random_range(1..4).to_string(),"side":"buy",
                "type":"market","time_in_force":"day"}}),
            40..60 => json!({"action":"order","id":request_id,"data":{
                "symbol":symbol,"qty":rng.random_range(1..3).to_string(),"side":"sell",
                "type":"market","time_in_force":"day"}}),
            60..85 => json!({"action":"order","id":request_id,"data":{
                "symbol":symbol,"qty":"1","side":"buy","type":"limit","time_in_force":"gtc",
                "limit_price":"1.00"}}),
            _ => match resting.pop() {
                Some(order_id) => {
                    json!({"action":"cancel","id":request_id,"order_id":order_id})
                }
                None => continue,
            },
        };
        if socket
            .send(Message::text(action.to_string()))
            .await
            .is_err()
        {
            return;
        }
        // Read until the reply to this request; trade updates arrive in between.
        loop {
            let frame = match tokio::time::timeout(DEADLINE, socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                // Closed, reset or silent: the gateway was killed.
                _ => return,
            };
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&frame) else {
                continue;
            };
            let mut answered = false;
            for item in &items {
                observed.note_frame(item);
                if item["id"] == request_id.as_str() {
                    answered = true;
                    if item["T"] == "order_ack"
                        && item["order"]["type"] == "limit"
                        && item["order"]["status"] == "new"
                    {
                        resting.push(item["order"]["id"].as_str().unwrap_or("").to_owned());
                    }
                }
            }
            if answered {
                break;
            }
        }
    }
}

/// The stored view of the data directory, read while the gateway is down.
struct Stored {
    /// user -> seq -> the stored update
    updates: BTreeMap<String, BTreeMap<u64, Value>>,
    orders: HashMap<String, Value>,
    fills: HashMap<String, (String, String, Decimal, Decimal, Decimal, String)>,
    cash: HashMap<String, (Decimal, Decimal)>,
    positions: BTreeMap<(String, String), Decimal>,
}

/// The store the gateway writes, read around it (while it is down, or after a SIGKILL).
enum StoreAt {
    Sqlite(PathBuf),
    Postgres(TestDatabase),
}

impl StoreAt {
    /// Every row of `sql`, each column as text.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            StoreAt::Sqlite(db) => {
                let connection = rusqlite::Connection::open(db).expect("open the store");
                let mut statement = connection.prepare(sql).expect("prepare");
                let columns = statement.column_count();
                let rows = statement
                    .query_map([], |row| {
                        (0..columns)
                            .map(|i| {
                                Ok(match row.get_ref(i)? {
                                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                                    rusqlite::types::ValueRef::Text(t) => {
                                        String::from_utf8_lossy(t).into_owned()
                                    }
                                    other => format!("{other:?}"),
                                })
                            })
                            .collect::<Result<Vec<String>, rusqlite::Error>>()
                    })
                    .expect("query");
                rows.map(|row| row.expect("row")).collect()
            }
            // psql prints every column as text; the unit separator never occurs in the data.
            StoreAt::Postgres(database) => {
                let output = Command::new("psql")
                    .args(["-h", "127.0.0.1", "-p", &database.server.port.to_string()])
                    .args(["-U", "postgres", "-d", &database.name])
                    .args([
                        "-X",
                        "-q",
                        "-A",
                        "-t",
                        "-F",
                        "\u{1f}",
                        "-v",
                        "ON_ERROR_STOP=1",
                    ])
                    .args(["-c", sql])
                    .stdin(Stdio::null())
                    .output()
                    .expect("psql runs");
                assert!(
                    output.status.success(),
                    "{sql}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(|line| line.split('\u{1f}').map(str::to_owned).collect())
                    .collect()
            }
        }
    }
}

fn read_store(store: &StoreAt) -> Stored {
    let mut orders = HashMap::new();
    for row in store.rows("SELECT id, body FROM orders") {
        orders.insert(
            row[0].clone(),
            serde_json::from_str(&row[1]).expect("order json"),
        );
    }
    let mut fills = HashMap::new();
    for row in store
        .rows("SELECT execution_id, order_id, username, qty, price, commission, side FROM fills")
    {
        fills.insert(
            row[0].clone(),
            (
                row[1].clone(),
                row[2].clone(),
                Decimal::from_str(&row[3]).expect("qty"),
                Decimal::from_str(&row[4]).expect("price"),
                Decimal::from_str(&row[5]).expect("commission"),
                row[6].clone(),
            ),
        );
    }
    let mut cash = HashMap::new();
    for row in store.rows("SELECT username, initial_cash, cash FROM accounts") {
        cash.insert(
            row[0].clone(),
            (
                Decimal::from_str(&row[1]).expect("initial"),
                Decimal::from_str(&row[2]).expect("cash"),
            ),
        );
    }
    let mut positions = BTreeMap::new();
    for row in store.rows("SELECT username, symbol, qty FROM positions") {
        positions.insert(
            (row[0].clone(), row[1].clone()),
            Decimal::from_str(&row[2]).expect("qty"),
        );
    }
    let mut updates: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    for row in store.rows("SELECT username, seq, body FROM trade_updates") {
        updates.entry(row[0].clone()).or_default().insert(
            row[1].parse().expect("seq"),
            serde_json::from_str(&row[2]).expect("update json"),
        );
    }
    Stored {
        updates,
        orders,
        fills,
        cash,
        positions,
    }
}

/// Each user's stored updates are numbered 1, 2, 3, ... and every update a client saw is
/// stored under its `seq`, unchanged; the client saw each `seq` once, in order, from 1.
fn verify_sequences(stored: &Stored, observed: &HashMap<&str, Observed>) {
    for (user, updates) in &stored.updates {
        let seqs: Vec<u64> = updates.keys().copied().collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "{user}: stored update sequence is contiguous"
        );
    }
    for (user, seen) in observed {
        let stored_updates = stored.updates.get(*user);
        for (seq, body) in &seen.updates {
            let kept = stored_updates
                .and_then(|updates| updates.get(seq))
                .unwrap_or_else(|| panic!("{user}: update {seq} was sent but is not stored"));
            assert_eq!(kept, body, "{user}: update {seq} is stored as it was sent");
        }
        let seqs: Vec<u64> = seen.updates.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "{user}: over all rounds the client saw every update once, in order"
        );
    }
}

fn is_open(status: &str) -> bool {
    matches!(
        status,
        "accepted" | "new" | "partially_filled" | "pending_cancel" | "pending_replace"
    )
}

/// Every acknowledged order and fill is stored with the same (or, for open orders, a later)
/// state, and the books balance against the stored fills.
fn verify_store(stored: &Stored, observed: &HashMap<&str, Observed>) {
    for (user, seen) in observed {
        for (id, told) in &seen.orders {
            let kept = stored
                .orders
                .get(id)
                .unwrap_or_else(|| panic!("{user}: acknowledged order {id} is not stored"));
            let told_status = told["status"].as_str().expect("status");
            let kept_status = kept["status"].as_str().expect("status");
            let told_filled = decimal(&told["filled_qty"]);
            let kept_filled = decimal(&kept["filled_qty"]);
            if is_open(told_status) {
                assert!(
                    kept_filled >= told_filled,
                    "{user}: order {id} went back from {told_filled} to {kept_filled} filled"
                );
            } else {
                assert_eq!(kept_status, told_status, "{user}: order {id} status");
                assert_eq!(kept_filled, told_filled, "{user}: order {id} filled qty");
            }
        }
        for (execution_id, (order_id, qty, price)) in &seen.fills {
            let fill = stored
                .fills
                .get(execution_id)
                .unwrap_or_else(|| panic!("{user}: announced fill {execution_id} not stored"));
            assert_eq!(&fill.0, order_id);
            assert_eq!((&fill.2, &fill.3), (qty, price), "fill {execution_id}");
        }
    }
    let mut implied_cash: HashMap<&str, Decimal> = HashMap::new();
    let mut implied_positions: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for (order_id, user, qty, price, commission, side) in stored.fills.values() {
        let order = stored
            .orders
            .get(order_id)
            .expect("a fill's order is stored");
        let symbol = order["symbol"].as_str().expect("symbol").to_owned();
        let (cash_delta, qty_delta) = match side.as_str() {
            "buy" => (-(qty * price) - commission, *qty),
            _ => (qty * price - commission, -*qty),
        };
        *implied_cash.entry(user).or_default() += cash_delta;
        *implied_positions.entry((user.clone(), symbol)).or_default() += qty_delta;
    }
    for (user, (initial, cash)) in &stored.cash {
        let implied = initial + implied_cash.get(user.as_str()).copied().unwrap_or_default();
        assert_eq!(*cash, implied, "{user}: stored cash vs its fills");
    }
    implied_positions.retain(|_, qty| !qty.is_zero());
    assert_eq!(stored.positions, implied_positions, "positions vs fills");
}

/// After a restart the exchange reports the stored cash, positions and open orders.
async fn verify_rebuilt(port: u16, stored: &Stored) {
    let client = reqwest::Client::new();
    for user in USERS {
        let get = |path: &str| {
            client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .bearer_auth(token_for(user))
                .send()
        };
        let account: Value = get("/v1/account")
            .await
            .expect("account")
            .json()
            .await
            .expect("json");
        if let Some((_, cash)) = stored.cash.get(user) {
            assert_eq!(decimal(&account["cash"]), *cash, "{user}: rebuilt cash");
        }
        let positions: Value = get("/v1/positions")
            .await
            .expect("positions")
            .json()
            .await
            .expect("json");
        let rebuilt: BTreeMap<String, Decimal> = positions
            .as_array()
            .expect("positions array")
            .iter()
            .map(|p| {
                (
                    p["symbol"].as_str().expect("symbol").to_owned(),
                    decimal(&p["qty"]),
                )
            })
            .collect();
        let expected: BTreeMap<String, Decimal> = stored
            .positions
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|((_, s), q)| (s.clone(), *q))
            .collect();
        assert_eq!(rebuilt, expected, "{user}: rebuilt positions");
        let open: Value = get("/v1/orders?status=open")
            .await
            .expect("orders")
            .json()
            .await
            .expect("json");
        let mut rebuilt_open: Vec<String> = open
            .as_array()
            .expect("orders array")
            .iter()
            .map(|o| o["id"].as_str().expect("id").to_owned())
            .collect();
        rebuilt_open.sort();
        let mut stored_open: Vec<String> = stored
            .orders
            .values()
            .filter(|o| is_open(o["status"].as_str().unwrap_or("")) && o["_owner"] == user)
            .map(|o| o["id"].as_str().expect("id").to_owned())
            .collect();
        stored_open.sort();
        assert_eq!(rebuilt_open, stored_open, "{user}: rebuilt open orders");
    }
}

fn write_config(dir: &Path, store: &StoreAt) -> PathBuf {
    let config = dir.join("crash.toml");
    let backend = match store {
        StoreAt::Sqlite(_) => String::new(),
        StoreAt::Postgres(database) => format!(
            "backend = \"postgres\"\npostgres_url = \"{}\"\n",
            database.url()
        ),
    };
    std::fs::write(
        &config,
        format!(
            "[auth]\nhs256_secret = \"{SECRET}\"\n{users}\
             [store]\ndata_dir = \"{}\"\n{backend}\
             [simulator]\nenabled = false\n\
             [ws]\nactions_per_second = 10000.0\naction_burst = 10000\n",
            dir.join("data").display(),
            users = USERS
                .iter()
                .map(|user| format!(
                    "[[auth.users]]\nusername = \"{user}\"\npassword_hash = \"{HASH}\"\n"
                ))
                .collect::<String>(),
        ),
    )
    .expect("write config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_and_fills_survive_sigkill_and_the_books_balance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreAt::Sqlite(dir.path().join("data").join("tickgate.db"));
    survive_sigkill(dir, store).await;
}

/// The same on PostgreSQL: the database server keeps running while the gateway is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_orders_and_fills_survive_sigkill_and_the_books_balance_on_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    survive_sigkill(dir, StoreAt::Postgres(TestDatabase::create())).await;
}

async fn survive_sigkill(dir: tempfile::TempDir, db: StoreAt) {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (set CRASH_SEED to replay)");
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = write_config(dir.path(), &db);
    let mut observed: HashMap<&str, Observed> =
        USERS.iter().map(|u| (*u, Observed::default())).collect();
    let mut acknowledged = 0usize;
    for round in 0..ROUNDS {
        let mut gateway = start_gateway(&config);
        if round > 0 {
            verify_rebuilt(gateway.port, &with_owners(&db, read_store(&db))).await;
        }
        let port = gateway.port;
        let kill_after = Duration::from_millis(rng.random_range(300..1500));
        let mut clients = Vec::new();
        for user in USERS {
            let client_seed = rng.random::<u64>();
            let since = last_seq(&observed, user);
            clients.push(tokio::spawn(async move {
                let mut seen = Observed::default();
                trade(port, user, client_seed, since, &mut seen).await;
                (user, seen)
            }));
        }
        tokio::time::sleep(kill_after).await;
        // SIGKILL: no shutdown path runs.
        gateway.child.kill().expect("kill");
        gateway.child.wait().expect("reap");
        for client in clients {
            let (user, seen) = tokio::time::timeout(DEADLINE, client)
                .await
                .expect("client ends after the kill")
                .expect("client task");
            acknowledged += seen.orders.len();
            let total = observed.get_mut(user).expect("user");
            total.orders.extend(seen.orders);
            total.fills.extend(seen.fills);
            total.updates.extend(seen.updates);
        }
        let stored = read_store(&db);
        verify_store(&stored, &observed);
        verify_sequences(&stored, &observed);
        eprintln!(
            "round {round}: killed after {kill_after:?}; {} orders and {} fills stored",
            stored.orders.len(),
            stored.fills.len()
        );
    }
    assert!(
        acknowledged > 20,
        "the test exercised the exchange ({acknowledged} acks)"
    );
    // A last start shows the final state was rebuilt, and every client catches up: after a
    // resume it has seen exactly what is stored.
    let mut gateway = start_gateway(&config);
    let stored = with_owners(&db, read_store(&db));
    verify_rebuilt(gateway.port, &stored).await;
    for user in USERS {
        let since = last_seq(&observed, user);
        let caught_up = catch_up(gateway.port, user, since).await;
        observed
            .get_mut(user)
            .expect("user")
            .updates
            .extend(caught_up);
    }
    verify_sequences(&stored, &observed);
    for user in USERS {
        let seen = observed[user].updates.len();
        let kept = stored.updates.get(user).map_or(0, BTreeMap::len);
        assert_eq!(
            seen, kept,
            "{user}: after catching up the client has every update"
        );
    }
    gateway.child.kill().expect("kill");
    gateway.child.wait().expect("reap");
}

fn last_seq(observed: &HashMap<&str, Observed>, user: &str) -> u64 {
    observed
        .get(user)
        .and_then(|seen| seen.updates.last())
        .map_or(0, |(seq, _)| *seq)
}

/// Resumes `user`'s trade updates after `since` and returns the replayed ones.
async fn catch_up(port: u16, user: &str, since: u64) -> Vec<(u64, Value)> {
    let mut request = format!("ws://127.0.0.1:{port}/v1/stream")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token_for(user))
            .parse()
            .expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let subscribe = json!({"action":"subscribe","trade_updates":{"since": since}}).to_string();
    socket.send(Message::text(subscribe)).await.expect("send");
    let mut seen = Observed::default();
    loop {
        let frame = match tokio::time::timeout(DEADLINE, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            other => panic!("{user}: the resume did not finish: {other:?}"),
        };
        let items: Vec<Value> = serde_json::from_str(&frame).expect("frame");
        for item in &items {
            assert_ne!(item["T"], "trade_updates_reset", "{user}: {item}");
            seen.note_frame(item);
            if item["T"] == "trade_updates_live" {
                assert_eq!(item["replayed"], seen.updates.len(), "{item}");
                return seen.updates;
            }
        }
    }
}

/// Adds each order's owner (the `username` column) to its body as `_owner`.
fn with_owners(store: &StoreAt, mut stored: Stored) -> Stored {
    for row in store.rows("SELECT id, username FROM orders") {
        if let Some(Value::Object(body)) = stored.orders.get_mut(&row[0]) {
            body.insert("_owner".into(), Value::String(row[1].clone()));
        }
    }
    stored
}
