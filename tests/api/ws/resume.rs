//! Private streams over real sockets: a client that dropped resumes its trade updates with
//! `since` and gets exactly what it missed, then live ones; a resume it cannot be given is an
//! explicit reset; resumes work across a clean restart; a `client_order_id` sent twice at once
//! from two sessions makes one order; sessions end when their token does unless refreshed.
//! (Resuming after `kill -9` is part of `store/crash_recovery.rs`.)

use crate::common;
use crate::ws_support;

use std::path::Path;
use std::time::Duration;

use common::{Backend, TestApp, spawn_app_with};
use serde_json::{Value, json};
use tickgate::settings::Settings;
use ws_support::{SECRET, WsClient, connect, connect_as, now, sign, ws_settings};

fn store_settings(dir: &Path) -> Settings {
    let mut settings = ws_settings();
    settings.store.enabled = true;
    settings.store.data_dir = dir.to_path_buf();
    settings
}

fn market(qty: &str, client_order_id: Option<&str>) -> Value {
    let mut data =
        json!({"symbol":"AAPL","qty":qty,"side":"buy","type":"market","time_in_force":"day"});
    if let Some(id) = client_order_id {
        data["client_order_id"] = id.into();
    }
    data
}

/// Sends an order and returns its reply (`order_ack` or `error`), collecting every trade
/// update read meanwhile into `updates`.
async fn order(client: &mut WsClient, id: &str, data: Value, updates: &mut Vec<Value>) -> Value {
    client
        .send_json(json!({"action":"order","id":id,"data":data}))
        .await;
    loop {
        let object = client.next_object(ws_support::DEADLINE).await;
        if object["id"] == id {
            return object;
        }
        if object["T"] == "trade_update" {
            updates.push(object);
        }
    }
}

/// Reads trade updates until `count` have arrived.
async fn read_updates(client: &mut WsClient, count: usize, updates: &mut Vec<Value>) {
    let target = updates.len() + count;
    while updates.len() < target {
        let object = client.next_object(ws_support::DEADLINE).await;
        if object["T"] == "trade_update" {
            updates.push(object);
        }
    }
}

fn seqs(updates: &[Value]) -> Vec<u64> {
    updates
        .iter()
        .map(|u| u["seq"].as_u64().expect("seq"))
        .collect()
}

/// Subscribes with `since` and returns the replayed updates and the `trade_updates_live`.
async fn resume(client: &mut WsClient, since: u64) -> (Vec<Value>, Value) {
    client
        .subscribe(json!({"trade_updates": {"since": since}}))
        .await;
    let (live, before) = client.until("trade_updates_live").await;
    let replayed: Vec<Value> = before
        .into_iter()
        .filter(|o| o["T"] == "trade_update")
        .collect();
    (replayed, live)
}

/// Places a market buy, a resting limit and its cancel from `client`: the updates it caused
/// (new + fill, new, canceled).
async fn trade_meanwhile(client: &mut WsClient) -> usize {
    let mut ignored = Vec::new();
    let ack = order(client, "m1", market("2", None), &mut ignored).await;
    assert_eq!(ack["T"], "order_ack", "{ack}");
    let ack = order(
        client,
        "l1",
        json!({"symbol":"AAPL","qty":"1","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"1.00"}),
        &mut ignored,
    )
    .await;
    let resting = ack["order"]["id"].as_str().expect("id").to_owned();
    client
        .send_json(json!({"action":"cancel","id":"c1","order_id":resting}))
        .await;
    let (reply, _) = client.until("order_ack").await;
    assert_eq!(reply["id"], "c1");
    4
}

// These run on a single node with SQLite and on a cluster node with PostgreSQL (where a
// resume is answered by the exchange through the command stream; a restart keeps the node's
// Redis and database). The token-expiry test stays single-node: it involves no exchange, and
// a session's token handling is the same code on both.
crate::on_both_backends!(
    a_resumed_client_gets_exactly_the_missed_updates_in_order_then_live_ones,
    a_since_that_is_too_old_or_ahead_gets_a_reset_with_orders_positions_and_account,
    a_resume_after_a_clean_restart_replays_from_the_store,
    one_client_order_id_sent_at_once_from_two_sessions_makes_one_order_even_after_a_restart,
);

/// A trading app with a store on `backend`: SQLite in `dir` on a single node, PostgreSQL on
/// a cluster node.
async fn spawn_with_store(
    backend: Backend,
    dir: &Path,
    tune: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = match backend {
        Backend::SingleNode => store_settings(dir),
        Backend::ClusterPostgres => ws_settings(),
    };
    tune(&mut settings);
    common::spawn_app_on(backend, settings).await
}

async fn a_resumed_client_gets_exactly_the_missed_updates_in_order_then_live_ones(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with_store(backend, dir.path(), |_| {}).await;
    let mut first = connect_as(&app, "alice").await;
    first.subscribe(json!({"trade_updates": true})).await;
    let live = first.expect("trade_updates_live").await;
    assert_eq!(live["seq"], 0, "a fresh account starts at 0: {live}");
    let mut seen = Vec::new();
    let ack = order(&mut first, "a1", market("1", None), &mut seen).await;
    assert_eq!(ack["T"], "order_ack");
    read_updates(&mut first, 2 - seen.len(), &mut seen).await;
    assert_eq!(seqs(&seen), vec![1, 2], "new, fill");
    drop(first);

    // The user's other session trades while the first is away.
    let mut other = connect_as(&app, "alice").await;
    let missed = trade_meanwhile(&mut other).await;

    let mut back = connect_as(&app, "alice").await;
    let (replayed, live) = resume(&mut back, 2).await;
    assert_eq!(seqs(&replayed), (3..3 + missed as u64).collect::<Vec<_>>());
    assert_eq!(
        replayed
            .iter()
            .map(|u| u["event"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["new", "fill", "new", "canceled"]
    );
    assert_eq!(live["since"], 2);
    assert_eq!(live["seq"], 2 + missed as u64);
    assert_eq!(live["replayed"], missed);

    // Then live, continuing the same sequence with no repeat.
    let mut later = Vec::new();
    order(&mut other, "m2", market("1", None), &mut Vec::new()).await;
    read_updates(&mut back, 2, &mut later).await;
    assert_eq!(seqs(&later), vec![3 + missed as u64, 4 + missed as u64]);
    app.stop().await.expect("stop");
}

async fn a_since_that_is_too_old_or_ahead_gets_a_reset_with_orders_positions_and_account(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with_store(backend, dir.path(), |settings| {
        settings.trading.max_resume_updates = 2;
    })
    .await;
    let mut client = connect_as(&app, "alice").await;
    trade_meanwhile(&mut client).await;
    let resting = order(
        &mut client,
        "r",
        json!({"symbol":"AAPL","qty":"3","side":"buy","type":"limit","time_in_force":"gtc","limit_price":"2.00"}),
        &mut Vec::new(),
    )
    .await;
    let head = 5u64;

    let mut client = connect_as(&app, "alice").await;
    for (since, reason) in [(head + 7, "ahead"), (0, "too_old")] {
        client
            .subscribe(json!({"trade_updates": {"since": since}}))
            .await;
        let reset = client.expect("trade_updates_reset").await;
        assert_eq!(reset["reason"], reason, "{reset}");
        assert_eq!(reset["since"], since);
        assert_eq!(reset["seq"], head);
        let orders = reset["orders"].as_array().expect("orders");
        assert_eq!(orders.len(), 1, "the open orders: {reset}");
        assert_eq!(orders[0]["id"], resting["order"]["id"]);
        assert_eq!(reset["positions"][0]["symbol"], "AAPL");
        assert_eq!(reset["positions"][0]["qty"], "2");
        assert!(reset["account"]["cash"].is_string(), "{reset}");
        assert!(reset["account"].get("positions").is_none());
        let live = client.expect("trade_updates_live").await;
        assert_eq!(
            (live["seq"].as_u64(), live["replayed"].as_u64()),
            (Some(head), Some(0))
        );
    }
    // A since within reach replays.
    let (replayed, _) = resume(&mut client, head - 1).await;
    assert_eq!(seqs(&replayed), vec![head]);
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "tickgate_trade_update_resets_total{reason=\"ahead\"} 1",
        "tickgate_trade_update_resets_total{reason=\"too_old\"} 1",
        "tickgate_trade_updates_replayed_total{cause=\"resume\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // A malformed since is refused and changes nothing.
    client
        .send_json(json!({"action":"subscribe","trade_updates":{"since":-1}}))
        .await;
    client.expect_error(400).await;
    client
        .send_json(json!({"action":"subscribe","trade_updates":{"from":1}}))
        .await;
    client.expect_error(400).await;
    app.stop().await.expect("stop");
}

async fn a_resume_after_a_clean_restart_replays_from_the_store(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with_store(backend, dir.path(), |_| {}).await;
    let mut client = connect_as(&app, "alice").await;
    client.subscribe(json!({"trade_updates": true})).await;
    let mut seen = Vec::new();
    order(&mut client, "a", market("1", None), &mut seen).await;
    read_updates(&mut client, 2 - seen.len(), &mut seen).await;
    let missed = trade_meanwhile(&mut client).await;
    drop(client);
    let app = app.restart().await;
    let mut client = connect_as(&app, "alice").await;
    let (replayed, live) = resume(&mut client, 2).await;
    assert_eq!(seqs(&replayed), (3..3 + missed as u64).collect::<Vec<_>>());
    assert_eq!(live["seq"], 2 + missed as u64);
    // The portfolio comes at once after the (re)subscribe, even when already subscribed.
    client.subscribe(json!({"portfolio": true})).await;
    let portfolio = client.expect("portfolio").await;
    assert_eq!(portfolio["positions"][0]["qty"], "3");
    client.subscribe(json!({"portfolio": true})).await;
    client.expect("portfolio").await;
    app.stop().await.expect("stop");
}

async fn get(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn one_client_order_id_sent_at_once_from_two_sessions_makes_one_order_even_after_a_restart(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_with_store(backend, dir.path(), |_| {}).await;
    let mut first = connect_as(&app, "alice").await;
    let mut second = connect_as(&app, "alice").await;
    let request = json!({"action":"order","id":"same","data":market("1", Some("lost-ack-1"))});
    let (a, b) = tokio::join!(
        async {
            first.send_json(request.clone()).await;
            reply_to(&mut first, "same").await
        },
        async {
            second.send_json(request.clone()).await;
            reply_to(&mut second, "same").await
        }
    );
    let (ack, refusal) = match (a["T"].as_str(), b["T"].as_str()) {
        (Some("order_ack"), Some("error")) => (a, b),
        (Some("error"), Some("order_ack")) => (b, a),
        _ => panic!("expected one ack and one refusal: {a} / {b}"),
    };
    let order_id = ack["order"]["id"].clone();
    assert_eq!(refusal["code"], 42210002, "{refusal}");
    assert!(
        refusal["msg"]
            .as_str()
            .unwrap_or("")
            .contains("client_order_id must be unique"),
        "{refusal}"
    );
    assert_eq!(
        refusal["order"]["id"], order_id,
        "the refusal names the order"
    );
    let token = ws_support::token_for("alice");
    let (status, found) = get(&app, "/v1/orders/by-client-id/lost-ack-1", &token).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], order_id);
    assert_eq!(found["status"], "filled");
    let (status, missing) = get(&app, "/v1/orders/by-client-id/never-sent", &token).await;
    assert_eq!((status, missing["code"].as_u64()), (404, Some(40410000)));
    let (status, _) = get(&app, "/v1/orders/by-client-id/lost-ack-1", "not-a-token").await;
    assert_eq!(status, 401);
    let (status, all) = get(&app, "/v1/orders?status=all", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "exactly one order: {all}"
    );
    drop((first, second));

    // After a restart the retry is still recognised, with the order as it stands.
    let app = app.restart().await;
    let mut again = connect_as(&app, "alice").await;
    again.send_json(request).await;
    let refusal = reply_to(&mut again, "same").await;
    assert_eq!(refusal["code"], 42210002, "{refusal}");
    assert_eq!(refusal["order"]["id"], order_id);
    assert_eq!(refusal["order"]["status"], "filled");
    app.stop().await.expect("stop");
}

/// The reply that echoes request `id`.
async fn reply_to(client: &mut WsClient, id: &str) -> Value {
    loop {
        let object = client.next_object(ws_support::DEADLINE).await;
        if object["id"] == id {
            return object;
        }
    }
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires_unless_a_fresh_token_arrives_first() {
    let mut settings = ws_settings();
    settings.auth.leeway = Duration::ZERO;
    let app = spawn_app_with(settings).await;
    let short = |user: &str| {
        sign(
            &json!({"sub": user, "iss": "tickgate", "aud": "tickgate", "iat": now(), "exp": now() + 3}),
            SECRET,
        )
    };
    let open = |token: String| {
        let app = &app;
        async move {
            let bearer = format!("Bearer {token}");
            let mut client = connect(app, "", &[("authorization", &bearer)]).await;
            client.expect_success("connected").await;
            client.expect_success("authenticated").await;
            client
        }
    };
    let started = tokio::time::Instant::now();
    let mut expiring = open(short("alice")).await;
    let mut refreshed = open(short("bob")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    refreshed
        .send_json(json!({"action":"auth","id":"r","token": ws_support::token_for("bob")}))
        .await;
    let reply = refreshed.expect("success").await;
    assert_eq!(reply["msg"], "token refreshed");

    let error = expiring.expect_error(409).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or("")
            .contains("token expired"),
        "{error}"
    );
    let close = expiring.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    let lifetime = started.elapsed();
    assert!(
        lifetime >= Duration::from_secs(1) && lifetime < Duration::from_secs(6),
        "closed at expiry, not before or long after: {lifetime:?}"
    );
    // The refreshed session outlives its first token and still works.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(started.elapsed())).await;
    let reply = refreshed.subscribe(json!({"trades": ["AAPL"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

/// A token whose expiry lies beyond the connection's timer horizon (twice the ping interval)
/// holds no timer at first; a later poll of the session (a keep-alive tick, or the pong the
/// client answers its ping with) arms it once within reach, so the session still ends at its
/// token's expiry, not a tick late. (That a tick alone polls the loop is the unit test
/// `transport::ws::tests::a_keep_alive_tick_polls_the_loop_once_and_nothing_else_does`.)
#[tokio::test]
async fn a_far_token_expiry_is_armed_by_the_keep_alive_ticks_and_ends_the_session_on_time() {
    let mut settings = ws_settings();
    settings.auth.leeway = Duration::ZERO;
    settings.ws.ping_interval = Duration::from_millis(500);
    let app = spawn_app_with(settings).await;
    let token = sign(
        &json!({"sub": "alice", "iss": "tickgate", "aud": "tickgate", "iat": now(), "exp": now() + 4}),
        SECRET,
    );
    let started = tokio::time::Instant::now();
    let bearer = format!("Bearer {token}");
    let mut client = connect(&app, "", &[("authorization", &bearer)]).await;
    client.expect_success("connected").await;
    client.expect_success("authenticated").await;
    let error = client.expect_error(409).await;
    assert!(
        error["msg"]
            .as_str()
            .unwrap_or("")
            .contains("token expired"),
        "{error}"
    );
    let close = client.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    let lifetime = started.elapsed();
    // `exp` has whole seconds: the token expires 3 to 4 s after it was signed.
    assert!(
        lifetime >= Duration::from_millis(2500) && lifetime < Duration::from_millis(4800),
        "closed at expiry, not before or a tick late: {lifetime:?}"
    );
    app.stop().await.expect("stop");
}
