//! Several real gateway processes on one `redis-server`: resume on another node, takeover of
//! the simulator when its node dies, fencing of a paused node, Redis restarts, a killed
//! subscription, and nginx round-robin in front of three nodes. Every process is stopped by
//! its PID.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::cluster_support::{LEASE_TTL, Node, cursor, holder};
use crate::common::{SseClient, SseEvent};
use crate::redis_support::RedisServer;

const MARKET_ALL: &str = "/v1/stream/market?symbols=*&types=*";

/// Sequenced events (those with an id) until `done` says stop, skipping snapshots.
async fn collect_until(
    client: &mut SseClient,
    within: Duration,
    mut done: impl FnMut(&[SseEvent]) -> bool,
) -> Vec<SseEvent> {
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} events", events.len()))
            .expect("stream still open");
        if event.event != "snapshot" && event.id.is_some() {
            events.push(event);
        }
    }
    events
}

/// The first event with a name (the stream opens with a bare `retry:`).
async fn first_event(client: &mut SseClient) -> SseEvent {
    loop {
        let event = client.expect_event(Duration::from_secs(10)).await;
        if !event.event.is_empty() {
            return event;
        }
    }
}

fn seq_of(event: &SseEvent) -> (u64, u64) {
    cursor(event.id.as_deref().unwrap_or("0-0"))
}

/// Within one epoch, each sequenced event of an unfiltered stream follows its predecessor.
fn assert_contiguous(events: &[SseEvent], what: &str) {
    for pair in events.windows(2) {
        let (a, b) = (seq_of(&pair[0]), seq_of(&pair[1]));
        assert!(
            a.0 == b.0 && b.1 == a.1 + 1,
            "{what}: {} then {}",
            pair[0].id.as_deref().unwrap_or(""),
            pair[1].id.as_deref().unwrap_or("")
        );
    }
}

/// The two lists from their first common event on, as far as both go: streams opened on
/// different nodes start at slightly different places (nodes apply the log at their own pace).
fn overlap<'a>(a: &'a [SseEvent], b: &'a [SseEvent]) -> (&'a [SseEvent], &'a [SseEvent]) {
    let Some(start_a) = a.iter().position(|e| b.iter().any(|f| f.id == e.id)) else {
        return (&[], &[]);
    };
    let start_b = b.iter().position(|f| f.id == a[start_a].id).unwrap_or(0);
    let (a, b) = (&a[start_a..], &b[start_b..]);
    let len = a.len().min(b.len());
    (&a[..len], &b[..len])
}

fn same(events: &[SseEvent]) -> Vec<(Option<String>, String, String)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

async fn three_nodes(redis: &RedisServer) -> [Node; 3] {
    let nodes = [
        Node::spawn(redis, "node-a", &[]),
        Node::spawn(redis, "node-b", &[]),
        Node::spawn(redis, "node-c", &[]),
    ];
    for node in &nodes {
        node.wait_ready().await;
    }
    nodes
}

async fn resume_elsewhere(first: u16, second: u16, witness: u16, path: &str) {
    let mut stays = SseClient::connect(witness, path, &[]).await;
    assert_eq!(stays.status, 200);
    // The witness's snapshot first, so everything after it is in its stream.
    let snapshot = first_event(&mut stays).await;
    assert_eq!(snapshot.event, "snapshot");
    let mut moving = SseClient::connect(first, path, &[]).await;
    let before = collect_until(&mut moving, Duration::from_secs(20), |e| e.len() >= 15).await;
    drop(moving);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let last_id = before.last().and_then(|e| e.id.clone()).expect("an id");
    let mut resumed = SseClient::connect(second, path, &[("Last-Event-ID", &last_id)]).await;
    let after = collect_until(&mut resumed, Duration::from_secs(20), |e| e.len() >= 15).await;
    assert!(
        after.iter().all(|e| e.event != "snapshot"),
        "no reset on resume"
    );
    let end_id = after.last().and_then(|e| e.id.clone());
    let witnessed = collect_until(&mut stays, Duration::from_secs(20), |e| {
        e.last().map(|e| &e.id) == Some(&end_id)
    })
    .await;
    let mut moved = before;
    moved.extend(after);
    let (moved_part, witnessed_part) = overlap(&moved, &witnessed);
    // The compared part ends at the last event and holds the one before the move: it spans it.
    assert!(
        moved_part
            .iter()
            .any(|e| e.id.as_deref() == Some(last_id.as_str())),
        "compared across the move"
    );
    assert_eq!(moved_part.last().map(|e| &e.id), Some(&end_id));
    assert_eq!(
        same(moved_part),
        same(witnessed_part),
        "every event exactly once, in order, as on the node that stayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_every_event_once_in_order() {
    let redis = RedisServer::start();
    let [a, b, c] = three_nodes(&redis).await;
    resume_elsewhere(a.port, b.port, c.port, MARKET_ALL).await;
    // A filtered stream: the same through another pair of nodes.
    resume_elsewhere(
        c.port,
        a.port,
        b.port,
        "/v1/stream/market?symbols=AAPL,MSFT&types=trades",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_simulator_node_hands_it_over_within_the_bound_and_prices_continue() {
    let redis = RedisServer::start();
    // The first node's seed prices are far from the others': a node that restarted the
    // simulator from its own seed instead of the feed would show at once.
    let a = Node::spawn_with_config(
        &redis,
        "node-a",
        &[],
        "[simulator.initial_prices]\nAAPL = 100.0\n",
    );
    a.wait_ready().await;
    let mut a = a;
    assert_eq!(holder(&[&a], "simulator", Duration::from_secs(5)).await, 0);
    let seeded_far = "[simulator.initial_prices]\nAAPL = 300.0\n";
    let b = Node::spawn_with_config(&redis, "node-b", &[], seeded_far);
    let c = Node::spawn_with_config(&redis, "node-c", &[], seeded_far);
    b.wait_ready().await;
    c.wait_ready().await;
    let mut on_b = SseClient::connect(b.port, MARKET_ALL, &[]).await;
    let mut on_c = SseClient::connect(c.port, MARKET_ALL, &[]).await;
    let before_b = collect_until(&mut on_b, Duration::from_secs(10), |e| e.len() >= 20).await;

    a.kill9();
    let killed = Instant::now();
    let taker = holder(&[&b, &c], "simulator", LEASE_TTL * 4).await;
    let takeover = killed.elapsed();
    // Lease time to live plus one renewal interval, plus the polling of this test.
    let bound = LEASE_TTL + LEASE_TTL / 3 + Duration::from_millis(500);
    assert!(
        takeover <= bound,
        "takeover took {takeover:?} (bound {bound:?})"
    );
    assert!(
        !([&b, &c][1 - taker]).holds("simulator").await,
        "one holder"
    );

    let is_aapl_trade = |e: &SseEvent| e.event == "trade" && e.data.contains("\"S\":\"AAPL\"");
    let after_b = collect_until(&mut on_b, Duration::from_secs(20), |events| {
        events.iter().filter(|e| is_aapl_trade(e)).count() >= 5
    })
    .await;
    let mut all_b = before_b;
    all_b.extend(after_b);
    assert_contiguous(&all_b, "node b");
    let end = all_b.last().and_then(|e| e.id.clone());
    let all_c = collect_until(&mut on_c, Duration::from_secs(20), |e| {
        e.last().map(|e| &e.id) == Some(&end)
    })
    .await;
    assert_contiguous(&all_c, "node c");
    let (part_b, part_c) = overlap(&all_b, &all_c);
    assert_eq!(
        part_b.last().map(|e| &e.id),
        Some(&end),
        "compared to the end"
    );
    assert_eq!(same(part_b), same(part_c), "nodes b and c saw the same log");
    let ids: HashSet<_> = all_b.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), all_b.len(), "no duplicate events");
    // Every AAPL trade, before and after the takeover, is near 100, never back at 300.
    let prices: Vec<f64> = all_b
        .iter()
        .filter(|e| is_aapl_trade(e))
        .map(|e| e.json()["p"].as_f64().expect("a price"))
        .collect();
    assert!(prices.len() >= 5);
    assert!(
        prices.iter().all(|p| (80.0..120.0).contains(p)),
        "prices continued from the feed: {prices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_publishes_nothing_when_it_resumes() {
    let redis = RedisServer::start();
    let a = Node::spawn(&redis, "node-a", &[]);
    a.wait_ready().await;
    assert_eq!(holder(&[&a], "simulator", Duration::from_secs(5)).await, 0);
    let b = Node::spawn(&redis, "node-b", &[]);
    b.wait_ready().await;
    let mut on_b = SseClient::connect(b.port, MARKET_ALL, &[]).await;
    let before = collect_until(&mut on_b, Duration::from_secs(10), |e| e.len() >= 10).await;

    a.signal("STOP");
    let _ = holder(&[&b], "simulator", LEASE_TTL * 4).await;
    let during = collect_until(&mut on_b, Duration::from_secs(10), |e| e.len() >= 10).await;
    a.signal("CONT");
    // A wakes up believing for a moment that it still runs the simulator.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.holds("simulator").await {
        assert!(
            Instant::now() < deadline,
            "node a never noticed its lost lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = collect_until(&mut on_b, Duration::from_secs(10), |e| e.len() >= 40).await;
    let mut all = before;
    all.extend(during);
    all.extend(after);
    assert_contiguous(&all, "node b");
    // Had A published after waking, its trade ids (continuing its own counter) would repeat
    // the ids the new holder continued from the feed.
    let trade_ids: Vec<u64> = all
        .iter()
        .filter(|e| e.event == "trade")
        .map(|e| e.json()["i"].as_u64().expect("a trade id"))
        .collect();
    let unique: HashSet<_> = trade_ids.iter().collect();
    assert_eq!(
        unique.len(),
        trade_ids.len(),
        "no trade from the paused node: {trade_ids:?}"
    );
    assert!(b.holds("simulator").await);
    let fenced = a
        .metric("tickgate_cluster_publish_failures_total{reason=\"fenced\"}")
        .await
        .unwrap_or(0.0);
    // Counted when A's simulator tried before its renewal noticed the loss; either is fine,
    // what matters is that nothing of A's reached the log (checked above).
    eprintln!("events node a tried to publish after it lost the lease (fenced): {fenced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_is_an_explicit_reset_then_live_data() {
    let mut redis = RedisServer::start();
    let [a, b, _c] = three_nodes(&redis).await;
    let mut client = SseClient::connect(b.port, MARKET_ALL, &[]).await;
    let before = collect_until(&mut client, Duration::from_secs(10), |e| e.len() >= 5).await;
    let last_id = before.last().and_then(|e| e.id.clone()).expect("an id");
    let (old_epoch, _) = cursor(&last_id);

    redis.restart();
    // The open stream says the cluster went away, then that the feed was reset, and ends.
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Ok(Some(event)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        client.next_event(),
    )
    .await
    {
        if event.event == "status" {
            statuses.push(event.json()["sc"].as_str().unwrap_or("").to_owned());
        }
        if statuses.iter().any(|s| s == "reset") {
            break;
        }
    }
    assert!(
        statuses.contains(&"reset".to_owned()),
        "statuses: {statuses:?}"
    );
    // The node caught up with the new log: ready again.
    a.wait_ready().await;
    // Resuming with the old cursor is an explicit reset with a fresh snapshot.
    let mut resumed = SseClient::connect(b.port, MARKET_ALL, &[("Last-Event-ID", &last_id)]).await;
    let snapshot = first_event(&mut resumed).await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.json()["reset"], true);
    let live = collect_until(&mut resumed, Duration::from_secs(20), |e| e.len() >= 5).await;
    assert!(live.iter().all(|e| seq_of(e).0 != old_epoch), "a new epoch");
    assert_contiguous(&live, "after the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_readyz_says_why_and_streams_get_cluster_down_then_ok() {
    let mut redis = RedisServer::start_persistent();
    let a = Node::spawn(&redis, "node-a", &[]);
    a.wait_ready().await;
    let mut client = SseClient::connect(a.port, MARKET_ALL, &[]).await;
    let mut before = collect_until(&mut client, Duration::from_secs(10), |e| e.len() >= 3).await;
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_down = false;
    while Instant::now() < deadline && !saw_down {
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
        {
            saw_down = event.event == "status" && event.json()["sc"] == "cluster_down";
            if saw_down {
                assert!(event.id.is_none(), "a notice does not move the cursor");
            } else if event.id.is_some() {
                // Published before Redis went away, delivered since.
                before.push(event);
            }
        }
    }
    assert!(saw_down, "a cluster_down status");
    let (status, body) = a.get("/readyz").await.expect("the node still answers");
    assert_eq!(status, 503);
    assert!(body.contains("cluster"), "{body}");
    redis.restart();
    let mut saw_ok = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = Vec::new();
    while Instant::now() < deadline && (!saw_ok || after.len() < 3) {
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
        {
            if event.event == "status" && event.json()["sc"] == "cluster_ok" {
                saw_ok = true;
            } else if event.id.is_some() {
                after.push(event);
            }
        }
    }
    assert!(saw_ok, "a cluster_ok status");
    let mut all = before;
    all.extend(after);
    assert_contiguous(
        &all,
        "with the append-only file the log continues, no reset",
    );
    a.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_is_repaired_and_clients_see_no_hole() {
    let redis = RedisServer::start();
    let [a, b, c] = three_nodes(&redis).await;
    let mut clients = Vec::new();
    for node in [&a, &b, &c] {
        clients.push(SseClient::connect(node.port, MARKET_ALL, &[]).await);
    }
    let mut seen: Vec<Vec<SseEvent>> = Vec::new();
    for client in &mut clients {
        seen.push(collect_until(client, Duration::from_secs(10), |e| e.len() >= 3).await);
    }
    for _ in 0..3 {
        redis
            .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .expect("redis-cli");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (client, events) in clients.iter_mut().zip(&mut seen) {
        let more = collect_until(client, Duration::from_secs(15), |e| e.len() >= 40).await;
        events.extend(more);
        assert_contiguous(events, "across killed subscriptions");
    }
    let mut repaired = 0.0;
    for node in [&a, &b, &c] {
        repaired += node
            .metric("tickgate_cluster_repaired_events_total{feed=\"market\"}")
            .await
            .unwrap_or(0.0);
    }
    assert!(repaired > 0.0, "the missed events came from the stream");
}

/// nginx in front of three nodes, with the configuration shipped in `deploy/nginx/`.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: [u16; 3]) -> Nginx {
        let dir = tempfile::tempdir().expect("temporary directory");
        let port = crate::redis_support::free_port();
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/tickgate.conf"),
        )
        .expect("the shipped nginx configuration");
        // Only the addresses change: the shipped file names 127.0.0.1:8081..8083 and :8080.
        let site = shipped
            .replace("127.0.0.1:8081", &format!("127.0.0.1:{}", upstreams[0]))
            .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", upstreams[1]))
            .replace("127.0.0.1:8083", &format!("127.0.0.1:{}", upstreams[2]))
            .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{port}"));
        let root = dir.path();
        std::fs::write(root.join("site.conf"), site).expect("write");
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root}/client_body;\n\
             proxy_temp_path {root}/proxy;\n  fastcgi_temp_path {root}/fastcgi;\n\
             uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
             include {root}/site.conf;\n}}\n",
            root = root.display()
        );
        std::fs::write(root.join("nginx.conf"), main).expect("write");
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx runs (scripts/setup installs it)");
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_round_robin_a_reconnecting_client_misses_nothing() {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis).await;
    let nginx = Nginx::start([nodes[0].port, nodes[1].port, nodes[2].port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = reqwest::get(format!("http://127.0.0.1:{}/readyz", nginx.port))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "nginx did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut witness = SseClient::connect(nodes[0].port, MARKET_ALL, &[]).await;
    let _ = first_event(&mut witness).await;
    let mut moved: Vec<SseEvent> = Vec::new();
    let mut last_id: Option<String> = None;
    // Six connections through nginx: with round-robin they land on every node twice.
    for _ in 0..6 {
        let headers: Vec<(&str, &str)> = last_id
            .as_deref()
            .map(|id| vec![("Last-Event-ID", id)])
            .unwrap_or_default();
        let mut client = SseClient::connect(nginx.port, MARKET_ALL, &headers).await;
        assert_eq!(client.status, 200);
        let events = collect_until(&mut client, Duration::from_secs(10), |e| e.len() >= 8).await;
        last_id = events.last().and_then(|e| e.id.clone());
        moved.extend(events);
        drop(client);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_contiguous(&moved, "through nginx");
    let end = moved.last().and_then(|e| e.id.clone());
    let witnessed = collect_until(&mut witness, Duration::from_secs(20), |e| {
        e.last().map(|e| &e.id) == Some(&end)
    })
    .await;
    let (moved_part, witnessed_part) = overlap(&moved, &witnessed);
    assert!(
        moved_part.len() >= 40,
        "at least five of the six moves compared"
    );
    assert_eq!(same(moved_part), same(witnessed_part));
}

async fn publish_to(node: &Node, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(node.url("/v1/publish"))
        .bearer_auth("dev-admin-token")
        .json(&body)
        .send()
        .await
        .expect("publish request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Waits until `path` answers the same body on every node; returns it.
async fn same_everywhere(nodes: &[&Node], path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut bodies = Vec::new();
        for node in nodes {
            bodies.push(
                node.get(path)
                    .await
                    .map(|(_, body)| body)
                    .unwrap_or_default(),
            );
        }
        if bodies.windows(2).all(|pair| pair[0] == pair[1]) {
            return bodies.swap_remove(0);
        }
        assert!(Instant::now() < deadline, "{path} differs: {bodies:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_api_works_on_every_node_with_time_order_checked_across_them() {
    let redis = RedisServer::start();
    let quiet = [("TICKGATE__SIMULATOR__ENABLED", "false")];
    let a = Node::spawn(&redis, "node-a", &quiet);
    // Node b keeps bar history in a store, fed from the shared log. A cluster node's store is
    // PostgreSQL (cluster mode refuses a SQLite store).
    let data = tempfile::tempdir().expect("temporary directory");
    let data_dir = data.path().to_string_lossy().into_owned();
    let database = crate::postgres_support::TestDatabase::create();
    let database_url = database.url();
    let b = Node::spawn(
        &redis,
        "node-b",
        &[
            ("TICKGATE__SIMULATOR__ENABLED", "false"),
            ("TICKGATE__STORE__ENABLED", "true"),
            ("TICKGATE__STORE__DATA_DIR", &data_dir),
            ("TICKGATE__STORE__BACKEND", "postgres"),
            ("TICKGATE__STORE__POSTGRES_URL", &database_url),
        ],
    );
    a.wait_ready().await;
    b.wait_ready().await;
    let trade = |price: f64, time: &str| serde_json::json!({"T":"t","S":"AAPL","i":1,"x":"V","p":price,"s":100,"t":time,"c":[]});
    let (status, reply) = publish_to(&a, trade(101.5, "2026-01-02T14:30:05Z")).await;
    assert_eq!(
        (status, reply["accepted"].as_u64()),
        (200, Some(1)),
        "{reply}"
    );
    // Older than what node A published: refused on node B, with the single-node reason.
    let (status, reply) = publish_to(&b, trade(101.0, "2026-01-02T14:30:04Z")).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["rejected"][0]["reason"], "time_backwards");
    let bar = serde_json::json!({"T":"b","S":"MSFT","o":1.6,"h":2.0,"l":1.5,"c":1.8,"v":10,"n":1,"vw":1.7,"t":"2026-01-02T14:30:00Z"});
    let (status, reply) = publish_to(
        &b,
        serde_json::json!([bar, trade(102.0, "2026-01-02T14:30:06Z")]),
    )
    .await;
    assert_eq!(
        (status, reply["accepted"].as_u64()),
        (200, Some(2)),
        "{reply}"
    );

    let snapshot = same_everywhere(&[&a, &b], "/v1/snapshot").await;
    assert!(snapshot.contains("102"), "{snapshot}");
    let bars_path = "/v1/bars?symbol=MSFT&start=2026-01-02T00:00:00Z";
    let bars = same_everywhere(&[&a, &b], bars_path).await;
    assert!(bars.contains("\"c\":1.8"), "{bars}");
    // The bar reached node b's store too (written within store.bar_flush_interval).
    let deadline = Instant::now() + Duration::from_secs(10);
    while b
        .metric("tickgate_store_bars_written_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "node b stored no bar");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        database.psql("SELECT c FROM bars WHERE symbol = 'MSFT'"),
        "1.8",
        "in node b's database"
    );
    // A node that joins later has the same latest values and bars.
    let late = Node::spawn(&redis, "node-late", &quiet);
    late.wait_ready().await;
    assert_eq!(
        same_everywhere(&[&a, &late], "/v1/snapshot").await,
        snapshot
    );
    assert_eq!(same_everywhere(&[&a, &late], bars_path).await, bars);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_releases_its_leases_at_once() {
    let redis = RedisServer::start();
    let mut a = Node::spawn(&redis, "node-a", &[]);
    a.wait_ready().await;
    assert_eq!(holder(&[&a], "simulator", Duration::from_secs(5)).await, 0);
    let b = Node::spawn(&redis, "node-b", &[]);
    b.wait_ready().await;
    // Ready without running the simulator: another node does.
    let (status, body) = b.get("/readyz").await.expect("node b answers");
    assert_eq!(status, 200);
    let readiness: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        readiness["sources"]["simulator"]["state"], "standby",
        "{body}"
    );
    assert_eq!(readiness["cluster"]["state"], "up", "{body}");
    a.signal("TERM");
    let status = a
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("node a exits");
    assert!(status.success(), "a clean exit: {status:?}");
    // Released before the process ended, not left to expire: the key is gone or already
    // node b's, never still node a's.
    let lease = redis
        .cli(&["GET", "tickgate:lease:simulator"])
        .expect("redis-cli");
    assert!(
        !lease.starts_with("node-a:"),
        "still held by node a: {lease:?}"
    );
    let _ = holder(&[&b], "simulator", LEASE_TTL).await;
}
