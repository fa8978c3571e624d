//! Cluster trading in one process: two cluster nodes on a real `redis-server`, sharing one
//! trading store (SQLite here; the store interface is the same for PostgreSQL). Orders sent
//! through either node reach the one exchange, updates reach the other node, a command left
//! pending by a dead exchange is answered from its stored reply instead of running twice, and
//! a fenced exchange stores and announces nothing, and a halt of the exchange (its store
//! refusing writes) and its resume reach both nodes, and a node that joins during the halt.
//! The exchange's own node answers its sessions in-process (no stream), so the tests of the
//! stream send through the other node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickgate::cluster::trading::{RemoteExchange, TradingStatus};
use tickgate::cluster::{ClusterConfig, ClusterNode, HubSink};
use tickgate::hub::{Hub, HubSettings};
use tickgate::market::SymbolUniverse;
use tickgate::metrics::Metrics;
use tickgate::settings::Settings;
use tickgate::store::{CommandRecord, Fence, Store, StoreError, TradingBatch, TradingStore};
use tickgate::trading::ExchangeHandle;
use tickgate::trading::api::{
    OrderError, OrderQuery, OrderRequest, OrderStatus, TradingApi, UserEvent,
};
use tickgate::trading::command::{TradingCommand, TradingReply, TradingRequest};
use tickgate::trading::engine::Engine;
use tickgate::trading::exchange::engine_settings;
use tickgate::trading::persist::{LeaseFence, Persistence};
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::redis_support::RedisServer;

const LEASE_TTL: Duration = Duration::from_millis(600);

fn limit_buy(client_order_id: &str) -> OrderRequest {
    OrderRequest {
        symbol: Some("AAPL".into()),
        qty: Some("1".into()),
        side: Some("buy".into()),
        order_type: Some("limit".into()),
        time_in_force: Some("gtc".into()),
        limit_price: Some("1.00".into()),
        client_order_id: Some(client_order_id.into()),
        ..OrderRequest::default()
    }
}

fn open_store(dir: &std::path::Path) -> Store {
    let mut settings = common::test_settings();
    settings.store.enabled = true;
    settings.store.data_dir = dir.to_path_buf();
    Store::open(&settings.store).expect("store opens").store
}

/// One node of the cluster in this process: its hub, its Redis link, its `TradingApi`.
struct InProcessNode {
    trading: RemoteExchange,
    metrics: Arc<Metrics>,
    /// The trading status codes the node told its sessions, in order.
    statuses: Arc<parking_lot::Mutex<Vec<&'static str>>>,
    shutdown: CancellationToken,
}

fn node(redis: &RedisServer, id: &str, store: Arc<dyn TradingStore>) -> InProcessNode {
    node_with_lease(redis, id, store, LEASE_TTL)
}

fn node_with_lease(
    redis: &RedisServer,
    id: &str,
    store: Arc<dyn TradingStore>,
    lease_ttl: Duration,
) -> InProcessNode {
    let settings = Settings::default();
    let metrics = Arc::new(Metrics::default());
    let universe = SymbolUniverse::new(settings.market.symbols.iter().cloned());
    let hub = Arc::new(Hub::new(
        universe,
        HubSettings::from(&settings.hub),
        Arc::clone(&metrics),
        1,
    ));
    let config = ClusterConfig {
        redis_url: redis.url(),
        node_id: id.into(),
        lease_ttl,
        exchange_silence: lease_ttl / 2,
        replay_window: 1000,
    };
    let cluster = ClusterNode::new(config, Arc::clone(&metrics)).expect("node");
    let shutdown = CancellationToken::new();
    cluster.start(Arc::new(HubSink::new(Arc::clone(&hub))), shutdown.clone());
    let statuses = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    let status: TradingStatus = Arc::new(move |code, _| seen.lock().push(code));
    let trading = tickgate::cluster::trading::start(
        &cluster,
        &settings.trading,
        &settings.simulator.initial_prices,
        hub,
        store,
        status,
        shutdown.clone(),
    );
    InProcessNode {
        trading,
        metrics,
        statuses,
        shutdown,
    }
}

/// Retries while the exchange is not there yet (start-up, failover): 50310002 says retry.
async fn submit_retrying(
    api: &RemoteExchange,
    user: &str,
    request: OrderRequest,
) -> Result<tickgate::trading::api::Order, OrderError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.submit(user, request.clone()).await {
            Err(error)
                if error.code == OrderError::EXCHANGE_UNAVAILABLE && Instant::now() < deadline =>
            {
                continue;
            }
            Err(error) if error.code == OrderError::DUPLICATE_CLIENT_ORDER_ID => {
                // An earlier attempt ran: the retry learns its order.
                return match error.order {
                    Some(order) => Ok(*order),
                    None => Err(error),
                };
            }
            other => return other,
        }
    }
}

async fn next_update(events: &mut tokio::sync::broadcast::Receiver<UserEvent>) -> u64 {
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an update in time")
        .expect("channel open");
    let UserEvent::TradeUpdate(update) = event;
    update.seq
}

/// The value of a counter without labels in `metrics` (0 when it was never incremented).
fn counter(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The id of the node holding the exchange's lease, once one does.
async fn exchange_holder(redis: &RedisServer) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holder = redis
            .cli(&["GET", "tickgate:lease:exchange"])
            .unwrap_or_default();
        if let Some((id, _token)) = holder.trim().split_once(':') {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no node took the exchange's lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commands in the command stream so far.
fn stream_length(redis: &RedisServer) -> u64 {
    redis
        .cli(&["XLEN", "tickgate:trading:commands"])
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// With the default 5 s lease the exchange's read of the command stream blocks for 500 ms,
/// as long as the Redis client's own default response timeout: the read must not fail while
/// the stream is idle (it did, and the exchange then stopped reading for a renewal interval,
/// so the first order after a quiet half second waited up to two seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_command_stream_keeps_the_exchange_reading_and_the_next_order_answered_at_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let first = node_with_lease(
        &redis,
        "node-idle",
        Arc::clone(&store.trading),
        Duration::from_secs(5),
    );
    let second = node_with_lease(
        &redis,
        "node-other",
        Arc::clone(&store.trading),
        Duration::from_secs(5),
    );
    submit_retrying(&first.trading, "alice", limit_buy("before-idle"))
        .await
        .expect("the exchange answers");
    // The orders go through the node without the exchange: the exchange's own node would
    // answer its sessions in-process, without the stream.
    let (only, requester) = if exchange_holder(&redis).await == "node-idle" {
        (first, second)
    } else {
        (second, first)
    };
    submit_retrying(&requester.trading, "alice", limit_buy("through-the-stream"))
        .await
        .expect("the exchange answers through the stream");
    for round in 0..2 {
        // Three of the exchange's blocking reads with nothing to read.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        let started = Instant::now();
        requester
            .trading
            .submit("alice", limit_buy(&format!("after-idle-{round}")))
            .await
            .expect("answered");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
    }
    assert_eq!(
        counter(
            &only.metrics,
            "tickgate_cluster_exchange_read_failures_total"
        ),
        0.0,
        "the command stream's read failed while idle"
    );
    only.shutdown.cancel();
    requester.shutdown.cancel();
}

/// A session on the exchange's own node is answered in-process: its orders never enter the
/// command stream, their updates reach every node's sessions in the one `seq` of the user,
/// and a retry with the same `client_order_id` is refused with the existing order, as for an
/// order through the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_on_the_exchanges_own_node_skip_the_command_stream_and_keep_one_sequence() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let first = node(&redis, "node-a", Arc::clone(&store.trading));
    let second = node(&redis, "node-b", Arc::clone(&store.trading));
    let mut watched_a = first.trading.user_events("alice");
    let mut watched_b = second.trading.user_events("alice");
    submit_retrying(&first.trading, "alice", limit_buy("opening"))
        .await
        .expect("the exchange runs");
    let (exchange, other) = if exchange_holder(&redis).await == "node-a" {
        (&first, &second)
    } else {
        (&second, &first)
    };

    let before = stream_length(&redis);
    for number in 0..3 {
        let order = exchange
            .trading
            .submit("alice", limit_buy(&format!("local-{number}")))
            .await
            .expect("answered in-process");
        assert_eq!(order.status, OrderStatus::New);
    }
    assert_eq!(
        stream_length(&redis),
        before,
        "nothing went through the stream"
    );
    let duplicate = exchange
        .trading
        .submit("alice", limit_buy("local-1"))
        .await
        .expect_err("a client_order_id runs once");
    assert_eq!(duplicate.code, OrderError::DUPLICATE_CLIENT_ORDER_ID);
    assert_eq!(
        duplicate.order.map(|order| order.client_order_id),
        Some("local-1".to_owned())
    );
    other
        .trading
        .submit("alice", limit_buy("remote"))
        .await
        .expect("answered through the stream");
    assert_eq!(
        stream_length(&redis),
        before + 1,
        "the other node's order did"
    );

    // One sequence on both nodes: the opening order, three in-process, one through the stream.
    for watched in [&mut watched_a, &mut watched_b] {
        for seq in 1..=5 {
            assert_eq!(next_update(watched).await, seq);
        }
    }
    let open = other
        .trading
        .orders("alice", OrderQuery::Open)
        .await
        .expect("orders");
    let mut ids: Vec<&str> = open.iter().map(|o| o.client_order_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["local-0", "local-1", "local-2", "opening", "remote"]
    );
    first.shutdown.cancel();
    second.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_from_either_node_reach_one_exchange_and_survive_its_death_with_contiguous_updates()
{
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let first = node(&redis, "node-a", Arc::clone(&store.trading));
    let second = node(&redis, "node-b", Arc::clone(&store.trading));
    let mut watched_a = first.trading.user_events("alice");
    let mut watched_b = second.trading.user_events("alice");

    let a1 = submit_retrying(&first.trading, "alice", limit_buy("a1"))
        .await
        .expect("an order through node a");
    assert_eq!(a1.status, OrderStatus::New);
    let b1 = submit_retrying(&second.trading, "alice", limit_buy("b1"))
        .await
        .expect("an order through node b");
    assert_ne!(a1.id, b1.id);
    // Both nodes' sessions see both orders' updates, whichever node placed them.
    for watched in [&mut watched_a, &mut watched_b] {
        assert_eq!(next_update(watched).await, 1);
        assert_eq!(next_update(watched).await, 2);
    }

    // The exchange's node stops: the other takes the lease, rebuilds, and goes on.
    let holder = redis
        .cli(&["GET", "tickgate:lease:exchange"])
        .unwrap_or_default();
    let (survivor, dead, mut watched) = if holder.starts_with("node-a:") {
        (second, first, watched_b)
    } else {
        (first, second, watched_a)
    };
    dead.shutdown.cancel();
    let after = submit_retrying(&survivor.trading, "alice", limit_buy("after-death"))
        .await
        .expect("an order after the failover");
    assert_eq!(after.status, OrderStatus::New);
    assert_eq!(next_update(&mut watched).await, 3, "one sequence, no gap");

    let open = survivor
        .trading
        .orders("alice", OrderQuery::Open)
        .await
        .expect("orders");
    let mut ids: Vec<&str> = open.iter().map(|o| o.client_order_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a1", "after-death", "b1"], "each order once");
    let statuses = survivor.statuses.lock().clone();
    assert!(
        !statuses.contains(&"trading_unavailable") || statuses.last() == Some(&"trading_available"),
        "an unavailable status is followed by an available one: {statuses:?}"
    );
    survivor.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_left_pending_by_a_dead_exchange_is_answered_from_its_stored_reply_not_run_again()
{
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    // A former exchange ran "ran-1" (its reply is stored) and read "waiting-1", then died
    // before acknowledging either: both are pending for the dead consumer.
    let deadline_ms = chrono::Utc::now().timestamp_millis() + 60_000;
    let command = |id: &str, client_order_id: &str| TradingCommand {
        id: id.into(),
        user: "bob".into(),
        node: "nobody".into(),
        deadline_ms,
        request: TradingRequest::Submit {
            request: limit_buy(client_order_id),
        },
    };
    let stored_reply = TradingReply::error(&OrderError::new(
        OrderError::INSUFFICIENT,
        "the reply the former exchange stored",
    ));
    store
        .trading
        .commit(TradingBatch {
            commands: vec![CommandRecord {
                id: "ran-1".into(),
                reply: stored_reply.encode(),
            }],
            ..TradingBatch::default()
        })
        .await
        .expect("stored");
    redis
        .cli(&[
            "XGROUP",
            "CREATE",
            "tickgate:trading:commands",
            "exchange",
            "0",
            "MKSTREAM",
        ])
        .expect("group");
    for (id, coid) in [("ran-1", "ran"), ("waiting-1", "waiting")] {
        let json = serde_json::to_string(&command(id, coid)).expect("json");
        redis
            .cli(&["XADD", "tickgate:trading:commands", "*", "c", &json])
            .expect("added");
    }
    let read = redis
        .cli(&[
            "XREADGROUP",
            "GROUP",
            "exchange",
            "dead-node",
            "COUNT",
            "10",
            "STREAMS",
            "tickgate:trading:commands",
            ">",
        ])
        .expect("read by the dead consumer");
    assert!(read.contains("waiting-1"));

    let survivor = node(&redis, "node-c", Arc::clone(&store.trading));
    // The survivor takes the lease, claims both, answers "ran-1" from the store and runs
    // "waiting-1" once.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = redis
            .cli(&["XPENDING", "tickgate:trading:commands", "exchange"])
            .unwrap_or_default();
        if pending.lines().next().map(str::trim) == Some("0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending commands not taken over: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orders = survivor
        .trading
        .orders("bob", OrderQuery::All)
        .await
        .expect("orders");
    let names: Vec<&str> = orders.iter().map(|o| o.client_order_id.as_str()).collect();
    assert_eq!(
        names,
        vec!["waiting"],
        "the stored command did not run again"
    );
    let stored = store
        .trading
        .command_reply("waiting-1")
        .await
        .expect("read")
        .expect("the executed command's reply is stored");
    let order = TradingReply::decode(&stored)
        .and_then(TradingReply::into_order)
        .expect("its reply is the order");
    assert_eq!(order.client_order_id, "waiting");
    survivor.shutdown.cancel();
}

#[tokio::test]
async fn a_fenced_exchange_stores_nothing_announces_nothing_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let settings = common::test_settings();
    let engine = Engine::new(
        engine_settings(&settings.trading, &BTreeMap::new()),
        SymbolUniverse::new(["AAPL"]),
    );
    let stop = CancellationToken::new();
    let persistence = Persistence::new(Arc::clone(&store.trading)).with_lease(LeaseFence {
        fence: Fence {
            name: "exchange".into(),
            token: 7,
        },
        stop: stop.clone(),
    });
    let (handle, tasks) = ExchangeHandle::new(engine, None, 16, 16, 16, stop.clone());
    tasks.with_persistence(Arc::new(persistence)).spawn();
    let mut events = handle.user_events("carol");

    let first = handle
        .submit_with(Some("cmd-1".into()), "carol", limit_buy("c1"))
        .await
        .expect("stored under token 7");
    let stored = store
        .trading
        .command_reply("cmd-1")
        .await
        .expect("read")
        .expect("the reply is stored with the order");
    assert_eq!(
        TradingReply::decode(&stored).and_then(TradingReply::into_order),
        Ok(first.clone())
    );
    assert!(events.try_recv().is_ok(), "the stored order was announced");

    // A newer exchange claims the fence.
    store
        .trading
        .commit(TradingBatch {
            fence: Some(Fence {
                name: "exchange".into(),
                token: 8,
            }),
            ..TradingBatch::default()
        })
        .await
        .expect("the newer holder's claim");
    let refused = handle
        .submit_with(Some("cmd-2".into()), "carol", limit_buy("c2"))
        .await
        .expect_err("fenced");
    assert_eq!(refused.code, OrderError::EXCHANGE_UNAVAILABLE);
    assert!(stop.is_cancelled(), "the fenced exchange stopped");
    assert!(
        events.try_recv().is_err(),
        "nothing announced after the fence"
    );
    assert_eq!(store.trading.command_reply("cmd-2").await, Ok(None));
    let stale = store
        .trading
        .commit(TradingBatch {
            fence: Some(Fence {
                name: "exchange".into(),
                token: 7,
            }),
            events: vec!["{}".into()],
            ..TradingBatch::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Fenced { .. })), "{stale:?}");
    let state = store.trading.load(10).await.expect("load");
    assert_eq!(
        state.open_orders.len(),
        1,
        "only the order stored before the fence"
    );
}

/// Makes the store refuse the exchange's writes (and its probes): triggers that raise, on the
/// event log every step is stored in and on the table the probe writes. Returns the
/// connection that [`allow_store_writes`] drops them through.
fn refuse_store_writes(dir: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(dir.join("tickgate.db")).expect("the store file");
    db.busy_timeout(Duration::from_secs(10)).expect("timeout");
    let refuse = |table: &str, what: &str| {
        format!(
            "CREATE TRIGGER refuse_{table}_{what} BEFORE {what} ON {table} \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
        )
    };
    db.execute_batch(&format!(
        "{}{}{}",
        refuse("exchange_events", "INSERT"),
        refuse("meta", "INSERT"),
        refuse("meta", "UPDATE")
    ))
    .expect("triggers");
    db
}

/// Drops the triggers of [`refuse_store_writes`].
fn allow_store_writes(db: &rusqlite::Connection) {
    db.execute_batch(
        "DROP TRIGGER refuse_exchange_events_INSERT; DROP TRIGGER refuse_meta_INSERT; \
         DROP TRIGGER refuse_meta_UPDATE;",
    )
    .expect("triggers dropped");
}

/// The halt and resume statuses a node told its sessions, in order.
fn halts_told(node: &InProcessNode) -> Vec<&'static str> {
    node.statuses
        .lock()
        .iter()
        .copied()
        .filter(|code| *code == "trading_halted" || *code == "trading_resumed")
        .collect()
}

/// Waits until `node` has told its sessions `code`.
async fn wait_for_status(node: &InProcessNode, code: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.statuses.lock().contains(&code) {
        assert!(
            Instant::now() < deadline,
            "no {code} on a node: {:?}",
            node.statuses.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_of_the_exchange_and_its_resume_reach_every_node_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let first = node(&redis, "node-a", Arc::clone(&store.trading));
    let second = node(&redis, "node-b", Arc::clone(&store.trading));
    submit_retrying(&first.trading, "alice", limit_buy("before"))
        .await
        .expect("the exchange runs");
    // The store refuses the exchange's writes (and its probes): triggers that raise, on the
    // event log every step is stored in and on the table the probe writes.
    let db = refuse_store_writes(dir.path());
    let refused = second
        .trading
        .submit("alice", limit_buy("during"))
        .await
        .expect_err("the store refuses the order's step");
    assert_eq!(refused.code, OrderError::INTERNAL, "{refused:?}");
    assert!(refused.message.contains("halted"), "{refused:?}");
    // The exchange runs on one of the two nodes; both tell their sessions.
    wait_for_status(&first, "trading_halted").await;
    wait_for_status(&second, "trading_halted").await;
    // A second order while halted is refused at once and announces nothing new.
    let again = first
        .trading
        .submit("alice", limit_buy("during-2"))
        .await
        .expect_err("still halted");
    assert!(again.message.contains("halted"), "{again:?}");

    allow_store_writes(&db);
    wait_for_status(&first, "trading_resumed").await;
    wait_for_status(&second, "trading_resumed").await;
    let after = submit_retrying(&second.trading, "alice", limit_buy("after"))
        .await
        .expect("trading resumed");
    assert_eq!(after.status, OrderStatus::New);
    // Once each, in order, on each node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for node in [&first, &second] {
        assert_eq!(halts_told(node), vec!["trading_halted", "trading_resumed"]);
    }
    first.shutdown.cancel();
    second.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_during_a_halt_learns_of_it_and_then_of_the_resume() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let first = node(&redis, "node-a", Arc::clone(&store.trading));
    submit_retrying(&first.trading, "alice", limit_buy("before"))
        .await
        .expect("the exchange runs");
    let db = refuse_store_writes(dir.path());
    first
        .trading
        .submit("alice", limit_buy("during"))
        .await
        .expect_err("the store refuses the order's step");
    wait_for_status(&first, "trading_halted").await;

    // The halt was announced before this node subscribed: pub/sub does not replay it, the
    // exchange's heartbeat carries it.
    let late = node(&redis, "node-late", Arc::clone(&store.trading));
    wait_for_status(&late, "trading_halted").await;

    allow_store_writes(&db);
    wait_for_status(&late, "trading_resumed").await;
    submit_retrying(&late.trading, "alice", limit_buy("after"))
        .await
        .expect("trading resumed");
    // Heartbeats repeat the state; a node told once is told nothing again.
    tokio::time::sleep(LEASE_TTL).await;
    for node in [&first, &late] {
        assert_eq!(halts_told(node), vec!["trading_halted", "trading_resumed"]);
    }
    first.shutdown.cancel();
    late.shutdown.cancel();
}

/// Redis's log of every command it runs (`MONITOR`, through `redis-cli`), read on a thread;
/// the child is stopped by its PID when dropped.
struct CommandLog {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CommandLog {
    fn start(redis: &RedisServer) -> CommandLog {
        use std::io::BufRead;
        let mut child = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-cli starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        // MONITOR answers OK once it is on.
        let first = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("MONITOR starts");
        assert_eq!(first.trim(), "OK");
        CommandLog { child, lines }
    }

    fn so_far(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for CommandLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_acknowledges_a_command_only_after_publishing_its_reply() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let log = CommandLog::start(&redis);
    let first = node(&redis, "node-a", Arc::clone(&store.trading));
    let second = node(&redis, "node-b", Arc::clone(&store.trading));
    submit_retrying(&first.trading, "alice", limit_buy("opening"))
        .await
        .expect("the exchange runs");
    // Through the node without the exchange (its own node's commands skip the stream).
    let requester = if exchange_holder(&redis).await == "node-a" {
        &second
    } else {
        &first
    };
    for number in 0..20 {
        submit_retrying(
            &requester.trading,
            "alice",
            limit_buy(&format!("o{number}")),
        )
        .await
        .expect("accepted");
    }
    // The last acknowledgement follows the last reply.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown.cancel();
    second.shutdown.cancel();
    let lines = log.so_far();
    // At every point of Redis's log, no more commands are acknowledged than replies were
    // published: an XACK ahead of its reply is what lost a reply when the exchange died
    // between the two (the 12 s wait of the failover benchmark).
    let (mut replies, mut acknowledged) = (0usize, 0usize);
    for line in &lines {
        if line.contains("\"PUBLISH\" \"tickgate:trading:reply:") {
            // One message carries the replies of one read to one node: each has a "reply".
            replies += line.matches(r#"\"reply\":"#).count();
        } else if let Some(at) = line.find("\"XACK\" \"tickgate:trading:commands\" \"exchange\"") {
            acknowledged += line[at..].matches('"').count() / 2 - 3;
            assert!(
                acknowledged <= replies,
                "{acknowledged} commands acknowledged after {replies} replies: {line}"
            );
        }
    }
    assert!(
        acknowledged >= 20,
        "the orders were acknowledged: {lines:?}"
    );
}
