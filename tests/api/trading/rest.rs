//! REST order entry (`/v1/orders…`) and API key pairs (`/v1/api-keys`) against the real
//! gateway: orders placed over HTTP are the same orders the WebSocket announces, and a key
//! pair works on REST and on the WebSocket until it is revoked, across restarts.

use crate::common;
use crate::ws_support;

use common::{Backend, spawn_app_on, test_settings};
use serde_json::{Value, json};
use ws_support::{connect, connect_as, token_for, ws_settings};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

// These tests run on a single node and on one node of a cluster with PostgreSQL.
crate::on_both_backends!(
    orders_placed_over_rest_are_announced_on_the_websocket_and_can_be_replaced_and_canceled,
    an_issued_key_pair_trades_over_rest_and_the_websocket_until_revoked,
    unknown_channels_are_reported_and_skipped_and_statuses_can_be_subscribed_alone,
    the_demo_key_pair_is_refused_without_its_configuration,
    issued_key_pairs_survive_a_restart_and_their_secrets_are_not_stored,
);

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token_for(user))
}

async fn orders_placed_over_rest_are_announced_on_the_websocket_and_can_be_replaced_and_canceled(
    backend: Backend,
) {
    let app = spawn_app_on(backend, ws_settings()).await;
    let mut ws = connect_as(&app, "rita").await;
    ws.subscribe(json!({"trade_updates": true})).await;
    ws.expect("trade_updates_live").await;
    let auth = bearer("rita");

    let (status, order) = send(
        client()
            .post(app.url("/v1/orders"))
            .header("authorization", &auth)
            .json(
                &json!({"symbol": "AAPL", "qty": 2, "side": "buy", "type": "limit",
                          "time_in_force": "gtc", "limit_price": "50.00",
                          "client_order_id": "rest-1"}),
            ),
    )
    .await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "new");
    let id = order["id"].as_str().expect("id").to_owned();
    let update = ws.expect("trade_update").await;
    assert_eq!(update["event"], "new");
    assert_eq!(update["order"]["id"], id.as_str());

    let (status, found) = send(
        client()
            .get(app.url(&format!("/v1/orders/{id}")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(
        (status, found["client_order_id"].clone()),
        (200, json!("rest-1"))
    );

    let (status, replacement) = send(
        client()
            .patch(app.url(&format!("/v1/orders/{id}")))
            .header("authorization", &auth)
            .json(&json!({"qty": "3", "limit_price": "51"})),
    )
    .await;
    assert_eq!(status, 200, "{replacement}");
    assert_eq!(replacement["replaces"], id.as_str());
    assert_eq!(ws.expect("trade_update").await["event"], "replaced");
    assert_eq!(ws.expect("trade_update").await["event"], "new");

    let new_id = replacement["id"].as_str().expect("id").to_owned();
    let (status, canceled) = send(
        client()
            .delete(app.url(&format!("/v1/orders/{new_id}")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(
        (status, canceled["status"].clone()),
        (200, json!("canceled"))
    );
    assert_eq!(ws.expect("trade_update").await["event"], "canceled");

    // The same refusals as the WebSocket's, as HTTP statuses.
    let (status, error) = send(
        client()
            .delete(app.url(&format!("/v1/orders/{new_id}")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!((status, error["code"].clone()), (422, json!(42210000)));
    let (status, error) = send(
        client()
            .post(app.url("/v1/orders"))
            .header("authorization", &auth)
            .json(
                &json!({"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market",
                          "time_in_force": "day", "notional": 5}),
            ),
    )
    .await;
    assert_eq!((status, error["code"].clone()), (400, json!(40010001)));
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("notional")
    );
    let (status, _) = send(
        client()
            .get(app.url("/v1/orders/nope"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(client().post(app.url("/v1/orders")).json(&json!({}))).await;
    assert_eq!(status, 401, "order entry needs a credential");
    app.stop().await.expect("stop");
}

async fn an_issued_key_pair_trades_over_rest_and_the_websocket_until_revoked(backend: Backend) {
    let app = spawn_app_on(backend, ws_settings()).await;
    let auth = bearer("sam");
    let (status, issued) = send(
        client()
            .post(app.url("/v1/api-keys"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let key = issued["key_id"].as_str().expect("key").to_owned();
    let secret = issued["secret"].as_str().expect("secret").to_owned();

    let with_key = |request: reqwest::RequestBuilder| {
        request
            .header("APCA-API-KEY-ID", &key)
            .header("APCA-API-SECRET-KEY", &secret)
    };
    let (status, order) = send(with_key(client().post(app.url("/v1/orders"))).json(&json!({
        "symbol": "MSFT", "qty": 1, "side": "buy", "type": "limit", "time_in_force": "gtc",
        "limit_price": "1.00"
    })))
    .await;
    assert_eq!(status, 200, "{order}");
    let (status, account) = send(with_key(client().get(app.url("/v2/account")))).await;
    assert_eq!((status, account["status"].clone()), (200, json!("ACTIVE")));

    // An API key cannot mint more keys.
    let (status, _) = send(with_key(client().post(app.url("/v1/api-keys")))).await;
    assert_eq!(status, 401);

    let (status, listed) = send(
        client()
            .get(app.url("/v1/api-keys"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["api_keys"][0]["key_id"], key.as_str());
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );

    // The WebSocket takes the pair in its auth message.
    let mut ws = connect(&app, "", &[]).await;
    ws.expect_success("connected").await;
    ws.send_json(json!({"action": "auth", "key": key, "secret": secret}))
        .await;
    ws.expect_success("authenticated").await;
    let mut wrong = connect(&app, "", &[]).await;
    wrong.expect_success("connected").await;
    wrong
        .send_json(json!({"action": "auth", "key": key, "secret": "not-it"}))
        .await;
    let error = wrong.expect_error(402).await;
    assert_eq!(error["msg"], "auth failed: invalid key id or secret");

    let (status, _) = send(
        client()
            .delete(app.url(&format!("/v1/api-keys/{key}")))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(status, 204);
    let (status, error) = send(with_key(client().get(app.url("/v2/account")))).await;
    assert_eq!((status, error["code"].clone()), (401, json!(40110000)));
    app.stop().await.expect("stop");
}

async fn issued_key_pairs_survive_a_restart_and_their_secrets_are_not_stored(backend: Backend) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = ws_settings();
    if backend == Backend::SingleNode {
        // A cluster node gets its PostgreSQL store from `spawn_app_on`.
        settings.store.enabled = true;
        settings.store.data_dir = data.path().to_path_buf();
    }
    let app = spawn_app_on(backend, settings.clone()).await;
    let (_, issued) = send(
        client()
            .post(app.url("/v1/api-keys"))
            .header("authorization", bearer("ula")),
    )
    .await;
    let key = issued["key_id"].as_str().expect("key").to_owned();
    let secret = issued["secret"].as_str().expect("secret").to_owned();
    let app = app.restart().await;

    // What the store holds: the SQLite file and its WAL, or every row of the PostgreSQL
    // database.
    let stored = match app.database_text() {
        Some(rows) => {
            assert!(rows.contains(&key), "the key id is stored: {rows}");
            vec![rows.into_bytes()]
        }
        None => {
            let file = data.path().join(&settings.store.file_name);
            let wal = data
                .path()
                .join(format!("{}-wal", settings.store.file_name));
            vec![
                std::fs::read(file).unwrap_or_default(),
                std::fs::read(wal).unwrap_or_default(),
            ]
        }
    };
    for bytes in &stored {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is not in the store"
        );
    }

    let (status, account) = send(
        client()
            .get(app.url("/v2/account"))
            .header("APCA-API-KEY-ID", &key)
            .header("APCA-API-SECRET-KEY", &secret),
    )
    .await;
    assert_eq!(status, 200, "{account}");
    app.stop().await.expect("stop");
}

async fn unknown_channels_are_reported_and_skipped_and_statuses_can_be_subscribed_alone(
    backend: Backend,
) {
    let app = spawn_app_on(backend, ws_settings()).await;
    let mut ws = connect_as(&app, "vic").await;
    ws.send_json(json!({"action": "subscribe", "trades": ["AAPL"], "lulds": ["AAPL"]}))
        .await;
    let error = ws.expect_error(400).await;
    assert!(
        error["msg"].as_str().unwrap_or_default().contains("lulds"),
        "{error}"
    );
    let reply = ws.expect("subscription").await;
    assert_eq!(reply["trades"], json!(["AAPL"]));

    ws.subscribe(json!({"statuses": ["MSFT"]})).await;
    common::publish(
        &app,
        json!([{"T": "s", "S": "MSFT", "sc": "halted", "sm": "halt", "t": chrono::Utc::now()}]),
    )
    .await;
    let status = ws.expect("s").await;
    assert_eq!(
        (status["S"].clone(), status["sc"].clone()),
        (json!("MSFT"), json!("halted"))
    );
    app.stop().await.expect("stop");
}

async fn the_demo_key_pair_is_refused_without_its_configuration(backend: Backend) {
    let mut settings = test_settings();
    settings.auth.api_keys.clear();
    let app = spawn_app_on(backend, settings).await;
    let (status, _) = send(
        client()
            .get(app.url("/v2/account"))
            .header("APCA-API-KEY-ID", "demo-key")
            .header("APCA-API-SECRET-KEY", "demo-secret"),
    )
    .await;
    assert_eq!(status, 401);
    app.stop().await.expect("stop");
}
