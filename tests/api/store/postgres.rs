//! What only the PostgreSQL backend has to show: the gateway binary keeps its trading state
//! in the database across restarts (with a fresh data directory each time), the schema is
//! version-checked, a former lease holder on another connection is fenced, and an unreachable
//! database is a clear start-up error that never shows the password, and a database restart
//! halts trading until it is back, then trading resumes by itself.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};
use tickgate::settings::StoreSettings;
use tickgate::store::{Fence, Store, StoreBackend, StoreError, TradingBatch};

use crate::postgres_support::TestDatabase;
use crate::redis_support::free_port;
use crate::store_support::{Backend, StoreFixture};

/// The `tickgate` binary on the test database, stopped by PID when dropped.
struct Gateway {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with the shipped configuration (demo user, simulator on) on
    /// `database`, with a data directory of its own: whatever it remembers comes from
    /// PostgreSQL.
    fn start(database: &TestDatabase) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = dir.path().join("tickgate.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
            .arg("--config-dir")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .env_remove("RUST_LOG")
            .env("TICKGATE__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("TICKGATE__SERVER__WORKERS", "1")
            .env("TICKGATE__SERVER__SHUTDOWN_GRACE", "1s")
            .env("TICKGATE__STORE__BACKEND", "postgres")
            .env("TICKGATE__STORE__POSTGRES_URL", database.url())
            .env("TICKGATE__STORE__DATA_DIR", dir.path().join("data"))
            // Each start has a data directory of its own: the database's API key hash key
            // comes from the configuration, as on nodes sharing a database.
            .env(
                "TICKGATE__AUTH__API_KEY_HASH_KEY",
                "postgres-test-api-key-hash-key-0123456789",
            )
            .env("TICKGATE__SIMULATOR__TRADES_PER_SECOND", "50")
            .env("TICKGATE__LOG__FILTER", "info,tickgate::http=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("the tickgate binary starts");
        Gateway {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            if let Ok(response) = http.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tickgate exited ({status}); log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not ready; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{status}; log:\n{}", self.log_text());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tickgate did not stop; log:\n{}", self.log_text());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn login(gateway: &Gateway) -> String {
    let (status, body) = send(
        reqwest::Client::new()
            .post(gateway.url("/v1/auth/token"))
            .json(&json!({"username": "demo", "password": "demo-password"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    format!(
        "Bearer {}",
        body["access_token"].as_str().expect("access_token")
    )
}

async fn get(gateway: &Gateway, auth: &str, path: &str) -> Value {
    let (status, body) = send(
        reqwest::Client::new()
            .get(gateway.url(path))
            .header("authorization", auth),
    )
    .await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test]
async fn the_gateway_binary_on_postgres_keeps_orders_fills_and_positions_across_a_restart() {
    let database = TestDatabase::create();
    let mut gateway = Gateway::start(&database);
    gateway.wait_ready().await;
    let auth = login(&gateway).await;
    let http = reqwest::Client::new();
    let (status, market) = send(
        http.post(gateway.url("/v1/orders"))
            .header("authorization", &auth)
            .json(
                &json!({"symbol": "AAPL", "qty": "3", "side": "buy", "type": "market",
                          "time_in_force": "day", "client_order_id": "pg-market"}),
            ),
    )
    .await;
    assert_eq!(status, 200, "{market}");
    let market_id = market["id"].as_str().expect("id").to_owned();
    let (status, resting) = send(
        http.post(gateway.url("/v1/orders"))
            .header("authorization", &auth)
            .json(
                &json!({"symbol": "AAPL", "qty": "2", "side": "buy", "type": "limit",
                          "time_in_force": "gtc", "limit_price": "1.00",
                          "client_order_id": "pg-resting"}),
            ),
    )
    .await;
    assert_eq!(status, 200, "{resting}");
    let resting_id = resting["id"].as_str().expect("id").to_owned();
    // The simulator trades AAPL: the market order fills at its next trade.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let order = get(&gateway, &auth, &format!("/v1/orders/{market_id}")).await;
        if order["status"] == "filled" {
            break;
        }
        assert!(Instant::now() < deadline, "not filled: {order}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed_before = get(&gateway, &auth, "/v2/orders?status=all").await;
    let positions_before = get(&gateway, &auth, "/v2/positions").await;
    gateway.stop();

    // What PostgreSQL holds, read around the gateway.
    assert_eq!(
        database.psql("SELECT count(*) FROM fills WHERE order_id = (SELECT id FROM orders WHERE client_order_id = 'pg-market')"),
        "1"
    );
    assert_eq!(
        database.psql("SELECT status FROM orders WHERE client_order_id = 'pg-resting'"),
        "new"
    );
    let cash: Decimal = database
        .psql("SELECT cash::text FROM accounts WHERE username = 'demo'")
        .parse()
        .expect("exact decimal cash");
    let fill_cost: Decimal = database
        .psql("SELECT (qty * price + commission)::text FROM fills WHERE username = 'demo'")
        .parse()
        .expect("exact decimal fill");
    let initial: Decimal = database
        .psql("SELECT initial_cash::text FROM accounts WHERE username = 'demo'")
        .parse()
        .expect("initial cash");
    assert_eq!(cash, initial - fill_cost, "cash is what the fill implies");

    // A fresh data directory: everything below comes from the database.
    let mut gateway = Gateway::start(&database);
    gateway.wait_ready().await;
    let auth = login(&gateway).await;
    let listed_after = get(&gateway, &auth, "/v2/orders?status=all").await;
    let ids = |listed: &Value| -> Vec<(String, String)> {
        let mut ids: Vec<(String, String)> = listed
            .as_array()
            .expect("a list")
            .iter()
            .map(|o| {
                (
                    o["id"].as_str().unwrap_or_default().to_owned(),
                    o["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&listed_after), ids(&listed_before));
    assert!(
        ids(&listed_after).contains(&(resting_id.clone(), "new".into())),
        "{listed_after}"
    );
    assert!(
        ids(&listed_after).contains(&(market_id.clone(), "filled".into())),
        "{listed_after}"
    );
    let positions_after = get(&gateway, &auth, "/v2/positions").await;
    let qty = |positions: &Value| {
        positions
            .as_array()
            .and_then(|list| list.iter().find(|p| p["symbol"] == "AAPL"))
            .and_then(|p| p["qty"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(qty(&positions_after), Some("3".into()), "{positions_after}");
    assert_eq!(qty(&positions_after), qty(&positions_before));
    // The resting order is still in the book: it can be canceled.
    let (status, canceled) = send(
        reqwest::Client::new()
            .delete(gateway.url(&format!("/v1/orders/{resting_id}")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    gateway.stop();
    assert_eq!(
        database.psql("SELECT status FROM orders WHERE client_order_id = 'pg-resting'"),
        "canceled"
    );
}

#[tokio::test]
async fn a_postgres_schema_newer_than_this_build_is_refused_and_left_untouched() {
    let fixture = StoreFixture::new(Backend::Postgres);
    drop(fixture.open());
    let database = fixture.database.as_ref().expect("postgres");
    assert_eq!(
        database.psql("SELECT count(*) FROM schema_version"),
        tickgate::store::postgres::migrations::latest_version().to_string(),
        "each migration once, even after two opens"
    );
    drop(fixture.open());
    database.psql("INSERT INTO schema_version (version, name) VALUES (99, 'future')");
    let error = Store::open(&fixture.store_settings()).expect_err("newer schema");
    assert!(
        matches!(error, StoreError::NewerSchema { found: 99, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("postgresql://127.0.0.1:"),
        "{error}"
    );
    assert_eq!(
        database.psql("SELECT max(version) FROM schema_version"),
        "99"
    );
}

#[tokio::test]
async fn a_former_lease_holder_writing_through_its_own_connection_is_fenced() {
    let fixture = StoreFixture::new(Backend::Postgres);
    // Two gateway nodes' stores on one database.
    let old_node = fixture.open();
    let new_node = fixture.open();
    let fenced = |token: u64, cash: Decimal| TradingBatch {
        accounts: vec![tickgate::store::AccountRecord {
            username: "alice".into(),
            initial_cash: dec!(1000),
            cash,
            realized_pl: Decimal::ZERO,
            commissions: Decimal::ZERO,
            updated_at: chrono::Utc::now(),
        }],
        fence: Some(Fence {
            name: "exchange".into(),
            token,
        }),
        ..TradingBatch::default()
    };
    old_node
        .trading
        .commit(fenced(1, dec!(900)))
        .await
        .expect("the first holder");
    new_node
        .trading
        .commit(fenced(2, dec!(800)))
        .await
        .expect("the holder after a takeover");
    let late = old_node.trading.commit(fenced(1, dec!(1))).await;
    assert_eq!(
        late,
        Err(StoreError::Fenced {
            name: "exchange".into(),
            token: 1,
            current: 2
        })
    );
    let state = new_node.trading.load(0).await.expect("load");
    assert_eq!(state.accounts[0].cash, dec!(800));
    assert_eq!(old_node.trading.fence_token("exchange").await, Ok(Some(2)));
}

/// A connection of its own to the fixture's database (not through the store).
async fn connect(fixture: &StoreFixture) -> tokio_postgres::Client {
    let url = fixture.database.as_ref().expect("postgres fixture").url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// The SQLSTATE and DETAIL of a server error.
fn code_and_detail(error: &tokio_postgres::Error) -> (String, Option<String>) {
    let db = error.as_db_error().expect("a server error");
    (db.code().code().to_owned(), db.detail().map(str::to_owned))
}

#[tokio::test]
async fn the_fence_raises_its_own_sqlstate_with_the_stored_token_and_first_claims_race_safely() {
    let fixture = StoreFixture::new(Backend::Postgres);
    // Opening the store applies the migrations.
    let store = fixture.open();
    let first = connect(&fixture).await;
    let second = connect(&fixture).await;
    // Two first claims of one name: the second waits for the first transaction's row.
    first
        .batch_execute("BEGIN; SELECT claim_fence('exchange', 5)")
        .await
        .expect("first claim");
    let racing = tokio::spawn(async move {
        let result = second
            .batch_execute("BEGIN; SELECT claim_fence('exchange', 4)")
            .await;
        let _ = second.batch_execute("ROLLBACK").await;
        (result, second)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !racing.is_finished(),
        "the second claim waits for the first"
    );
    first.batch_execute("COMMIT").await.expect("commit");
    let (result, second) = racing.await.expect("task");
    let error = result.expect_err("an older token after the first committed");
    assert_eq!(code_and_detail(&error), ("TGF01".into(), Some("5".into())));
    // Equal is accepted without a write, larger raises the stored token.
    second
        .batch_execute("SELECT claim_fence('exchange', 5)")
        .await
        .expect("the same token");
    second
        .batch_execute("SELECT claim_fence('exchange', 12)")
        .await
        .expect("a newer token");
    let error = second
        .batch_execute("SELECT claim_fence('exchange', 11)")
        .await
        .expect_err("older than the stored one");
    assert_eq!(code_and_detail(&error), ("TGF01".into(), Some("12".into())));
    assert_eq!(store.trading.fence_token("exchange").await, Ok(Some(12)));
    // Through the store, the raised error is the fenced error with the stored token.
    let late = store
        .trading
        .commit(TradingBatch {
            fence: Some(Fence {
                name: "exchange".into(),
                token: 11,
            }),
            commands: vec![tickgate::store::CommandRecord {
                id: "cmd-late".into(),
                reply: "{}".into(),
            }],
            ..TradingBatch::default()
        })
        .await;
    assert_eq!(
        late,
        Err(StoreError::Fenced {
            name: "exchange".into(),
            token: 11,
            current: 12
        })
    );
}

#[test]
fn an_unreachable_database_fails_at_start_naming_it_but_never_the_password() {
    let port = free_port();
    let settings = StoreSettings {
        backend: StoreBackend::Postgres,
        postgres_url: format!("postgres://tickgate:hunter2@127.0.0.1:{port}/tickgate"),
        ..StoreSettings::default()
    };
    let error = Store::open(&settings).expect_err("nobody listens");
    let text = error.to_string();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(
        text.contains(&format!("postgresql://127.0.0.1:{port}/tickgate")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

async fn readyz(port: u16) -> (u16, Value) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads the market stream until a status with code `code` arrives.
async fn expect_status(client: &mut crate::common::SseClient, code: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let event = client.expect_event(Duration::from_secs(30)).await;
        if event.event == "status" && event.json()["sc"] == code {
            return;
        }
        assert!(Instant::now() < deadline, "no {code} status");
    }
}

fn limit_order(limit: &str) -> tickgate::trading::api::OrderRequest {
    tickgate::trading::api::OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some("1".into()),
        side: Some("buy".into()),
        order_type: Some("limit".into()),
        time_in_force: Some("gtc".into()),
        limit_price: Some(limit.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_database_restart_halts_trading_and_trading_resumes_by_itself_when_it_is_back() {
    use tickgate::trading::api::OrderQuery;
    // A server of its own: this test stops it.
    let server = std::sync::Arc::new(crate::postgres_support::PostgresServer::start());
    let database = server.database();
    let mut settings = crate::common::test_settings();
    settings.store.enabled = true;
    settings.store.backend = StoreBackend::Postgres;
    settings.store.postgres_url = database.url();
    let data = tempfile::tempdir().expect("tempdir");
    settings.store.data_dir = data.path().to_path_buf();
    let app = crate::common::spawn_app_with(settings).await;
    let mut feed =
        crate::common::SseClient::connect(app.port, "/v1/stream/market?symbols=AAPL", &[]).await;
    let trading = &app.state.trading;
    let before = trading
        .submit("alice", limit_order("1.00"))
        .await
        .expect("stored");
    assert_eq!(readyz(app.port).await.0, 200);

    server.stop();
    let refused = trading
        .submit("alice", limit_order("2.00"))
        .await
        .expect_err("nothing can be stored");
    assert!(refused.message.contains("halted"), "{}", refused.message);
    expect_status(&mut feed, "trading_halted").await;
    let (status, body) = readyz(app.port).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["trading"], "halted", "{body}");
    assert_eq!(body["store"]["state"], "degraded", "{body}");

    server.restart();
    expect_status(&mut feed, "trading_resumed").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(app.port).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = trading
        .submit("alice", limit_order("3.00"))
        .await
        .expect("trading resumed");
    let open = trading
        .orders("alice", OrderQuery::Open)
        .await
        .expect("orders");
    let limits: Vec<String> = open
        .iter()
        .filter_map(|o| o.limit_price.map(|p| p.to_string()))
        .collect();
    assert!(open.iter().any(|o| o.id == before.id), "{open:?}");
    assert!(open.iter().any(|o| o.id == after.id), "{open:?}");
    assert!(
        !limits.contains(&"2.00".to_owned()),
        "never stored: {limits:?}"
    );
    assert_eq!(
        database.psql("SELECT count(*) FROM orders WHERE is_open"),
        "2",
        "what the database holds agrees"
    );
    app.stop().await.expect("stop");
}
