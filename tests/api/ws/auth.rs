//! Authentication of the WebSocket at `/v1/stream` and the auth HTTP routes, over real sockets.

use crate::common;
use crate::ws_support;

use std::time::Duration;

use common::spawn_app_with;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error;
use ws_support::{SECRET, claims_for, connect, sign, token_for, try_connect, ws_settings};

async fn post_json(url: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_bearer_header_on_the_upgrade_authenticates_the_session() {
    let app = spawn_app_with(ws_settings()).await;
    let bearer = format!("Bearer {}", token_for("alice"));
    let mut client = connect(&app, "", &[("authorization", &bearer)]).await;
    client.expect_success("connected").await;
    client.expect_success("authenticated").await;
    // Another user's token is refused but the session carries on; the same user's token
    // refreshes the session in place.
    client
        .send_json(json!({"action":"auth","id":"again","token": token_for("bob")}))
        .await;
    let error = client.expect_error(403).await;
    assert_eq!(error["id"], "again");
    client
        .send_json(json!({"action":"auth","id":"fresh","token": token_for("alice")}))
        .await;
    let refreshed = client.expect("success").await;
    assert_eq!(refreshed["msg"], "token refreshed");
    assert_eq!(refreshed["id"], "fresh");
    let reply = client.subscribe(json!({"trades":["AAPL"]})).await;
    assert_eq!(reply["trades"], json!(["AAPL"]));
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_demo_user_gets_a_token_then_a_ticket_that_works_exactly_once() {
    let app = spawn_app_with(ws_settings()).await;
    let (status, issued) = post_json(
        &app.url("/v1/auth/token"),
        None,
        json!({"username":"demo","password":"demo-password"}),
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["token_type"], "Bearer");
    let token = issued["access_token"].as_str().expect("token").to_owned();

    let (status, ticket) = post_json(&app.url("/v1/auth/ticket"), Some(&token), json!({})).await;
    assert_eq!(status, 200, "{ticket}");
    let ticket = ticket["ticket"].as_str().expect("ticket").to_owned();
    assert!(!ticket.contains('.'));

    let origin = [("origin", "http://localhost:8080")];
    let mut client = connect(&app, &format!("?ticket={ticket}"), &origin).await;
    client.expect_success("connected").await;
    client.expect_success("authenticated").await;

    let mut reuse = connect(&app, &format!("?ticket={ticket}"), &origin).await;
    reuse.expect_success("connected").await;
    let error = reuse.expect_error(402).await;
    assert!(
        error["msg"].as_str().unwrap_or_default().contains("ticket"),
        "{error}"
    );
    reuse.expect_closed().await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_first_auth_message_authenticates_with_a_token_or_a_ticket() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect(&app, "", &[]).await;
    client.expect_success("connected").await;
    client
        .send_json(json!({"action":"auth","id":7,"token": token_for("alice")}))
        .await;
    let reply = client.expect("success").await;
    assert_eq!(reply["msg"], "authenticated");
    assert_eq!(reply["id"], 7);

    let (_, ticket) = post_json(
        &app.url("/v1/auth/ticket"),
        Some(&token_for("bob")),
        json!({}),
    )
    .await;
    let mut client = connect(&app, "", &[]).await;
    client.expect_success("connected").await;
    client
        .send_json(json!({"action":"auth","token": ticket["ticket"]}))
        .await;
    client.expect_success("authenticated").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn actions_before_auth_are_refused_without_closing() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect(&app, "", &[]).await;
    client.expect_success("connected").await;
    client
        .send_json(json!({"action":"subscribe","id":"s","trades":["AAPL"]}))
        .await;
    let error = client.expect_error(401).await;
    assert_eq!(error["id"], "s");
    client
        .send_json(json!({"action":"auth","token": token_for("alice")}))
        .await;
    client.expect_success("authenticated").await;
    app.stop().await.expect("stop");
}

/// Sends `token` in an auth message and expects error 402 mentioning `why`, then a close.
async fn refused(app: &common::TestApp, token: &str, why: &str) {
    let mut client = connect(app, "", &[]).await;
    client.expect_success("connected").await;
    client
        .send_json(json!({"action":"auth","token": token}))
        .await;
    let error = client.expect_error(402).await;
    let msg = error["msg"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains(why), "{why:?} not in {msg:?}");
    client.expect_closed().await;
}

#[tokio::test]
async fn bad_signature_expiry_alg_none_and_wrong_audience_are_each_refused() {
    let app = spawn_app_with(ws_settings()).await;
    refused(
        &app,
        &sign(
            &claims_for("alice"),
            "some-other-secret-that-is-32-bytes-long",
        ),
        "signature",
    )
    .await;

    let mut expired = claims_for("alice");
    expired["exp"] = (ws_support::now() - 3600).into();
    refused(&app, &sign(&expired, SECRET), "expired").await;

    let mut foreign = claims_for("alice");
    foreign["aud"] = "another-service".into();
    refused(&app, &sign(&foreign, SECRET), "audience").await;

    // `alg: none` with the signature stripped.
    let valid = token_for("alice");
    let payload = valid.split('.').nth(1).expect("payload");
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    refused(&app, &format!("{header}.{payload}."), "token").await;

    // The same failures apply to a header on the upgrade.
    let bearer = format!("Bearer {}", sign(&expired, SECRET));
    let mut client = connect(&app, "", &[("authorization", &bearer)]).await;
    client.expect_success("connected").await;
    client.expect_error(402).await;
    client.expect_closed().await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_long_lived_token_in_the_url_is_refused_even_when_valid() {
    let app = spawn_app_with(ws_settings()).await;
    let mut client = connect(&app, &format!("?ticket={}", token_for("alice")), &[]).await;
    client.expect_success("connected").await;
    let error = client.expect_error(402).await;
    assert!(
        error["msg"].as_str().unwrap_or_default().contains("URL"),
        "{error}"
    );
    client.expect_closed().await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let app = spawn_app_with(ws_settings()).await;
    let result = try_connect(&app, "", &[("origin", "https://evil.example")]).await;
    match result {
        Err(Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
        Err(other) => panic!("expected an HTTP 403, got {other}"),
        Ok(_) => panic!("a foreign origin was upgraded"),
    }
    // An allowed origin and no origin at all (a script) both connect.
    let mut client = connect(&app, "", &[("origin", "http://127.0.0.1:8080")]).await;
    client.expect_success("connected").await;
    // The gateway's own origin is allowed without being listed, so its dashboard works on
    // any port.
    let own = format!("http://127.0.0.1:{}", app.port);
    let mut same_site = connect(&app, "", &[("origin", &own)]).await;
    same_site.expect_success("connected").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_client_that_never_authenticates_gets_auth_timeout_then_a_close() {
    let mut settings = ws_settings();
    settings.ws.auth_timeout = Duration::from_millis(300);
    let app = spawn_app_with(settings).await;
    let mut client = connect(&app, "", &[]).await;
    client.expect_success("connected").await;
    client.expect_error(404).await;
    client.expect_closed().await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn sessions_beyond_the_per_user_limit_are_refused_with_406() {
    let mut settings = ws_settings();
    settings.auth.max_connections_per_user = 1;
    let app = spawn_app_with(settings).await;
    let first = ws_support::connect_as(&app, "alice").await;
    let bearer = format!("Bearer {}", token_for("alice"));
    let mut second = connect(&app, "", &[("authorization", &bearer)]).await;
    second.expect_success("connected").await;
    second.expect_error(406).await;
    second.expect_closed().await;
    // Another user is unaffected, and closing the first frees the slot.
    let _bob = ws_support::connect_as(&app, "bob").await;
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.auth.connection_count("alice") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _again = ws_support::connect_as(&app, "alice").await;
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_token_endpoint_refuses_wrong_passwords_and_unknown_users_alike() {
    let app = spawn_app_with(ws_settings()).await;
    for (username, password) in [("demo", "wrong"), ("nobody", "demo-password")] {
        let (status, body) = post_json(
            &app.url("/v1/auth/token"),
            None,
            json!({"username": username, "password": password}),
        )
        .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["message"], "wrong username or password");
        assert_eq!(body["code"], 40110000);
    }
    let (status, body) = post_json(&app.url("/v1/auth/token"), None, json!({"user":"demo"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        post_json(&app.url("/v1/auth/ticket"), Some("not-a-token"), json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "token is malformed");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn account_routes_require_a_bearer_token() {
    let app = spawn_app_with(ws_settings()).await;
    for path in ["/v1/account", "/v1/positions", "/v1/orders?status=all"] {
        let response = reqwest::get(app.url(path)).await.expect("request");
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let body: Value = response.json().await.expect("json error body");
        assert_eq!(body["code"], 40110000, "{path}");
    }
    let response = reqwest::Client::new()
        .get(app.url("/v1/orders?status=sideways"))
        .bearer_auth(token_for("alice"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn requests_that_cannot_be_upgraded_get_json_http_errors() {
    let app = spawn_app_with(ws_settings()).await;
    let plain = reqwest::get(app.url("/v1/stream")).await.expect("request");
    assert_eq!(plain.status().as_u16(), 400);
    let body: Value = plain.json().await.expect("json body");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("WebSocket"),
        "{body}"
    );
    match try_connect(&app, "", &[("authorization", "Basic abc")]).await {
        Err(Error::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        Err(other) => panic!("expected HTTP 401, got {other}"),
        Ok(_) => panic!("a malformed Authorization header was upgraded"),
    }
    match try_connect(&app, "?token=abc", &[]).await {
        Err(Error::Http(response)) => assert_eq!(response.status().as_u16(), 400),
        Err(other) => panic!("expected HTTP 400, got {other}"),
        Ok(_) => panic!("an unknown query parameter was upgraded"),
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn password_guessing_is_limited_per_client_address_with_429() {
    let mut settings = tickgate_settings_with_demo_user();
    settings.auth.max_login_attempts_per_minute = 3;
    let app = spawn_app_with(settings).await;
    let client = reqwest::Client::new();
    let attempt = |password: &'static str| {
        client
            .post(app.url("/v1/auth/token"))
            .json(&serde_json::json!({"username": "demo", "password": password}))
            .send()
    };
    for _ in 0..3 {
        let response = attempt("wrong").await.expect("request");
        assert_eq!(response.status().as_u16(), 401);
    }
    let limited = attempt("demo-password").await.expect("request");
    assert_eq!(limited.status().as_u16(), 429);
    let body: serde_json::Value = limited.json().await.expect("json");
    assert_eq!(body["code"], 42910000);
    app.stop().await.expect("stop");
}

/// The repository's defaults (which include the demo user) on port 0.
fn tickgate_settings_with_demo_user() -> tickgate::settings::Settings {
    common::test_settings()
}
