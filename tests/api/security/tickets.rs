//! Issue 13 item 5: a request to `/v1/stream?ticket=…` that is not a WebSocket upgrade is
//! refused without spending the ticket, so the real upgrade that follows still works.

use serde_json::{Value, json};

use crate::common::spawn_app_with;
use crate::ws_support::{connect, token_for, ws_settings};

async fn ticket_for(app: &crate::common::TestApp, user: &str) -> String {
    let response = reqwest::Client::new()
        .post(app.url("/v1/auth/ticket"))
        .bearer_auth(token_for(user))
        .json(&json!({}))
        .send()
        .await
        .expect("ticket request");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("ticket body");
    body["ticket"].as_str().expect("ticket").to_owned()
}

#[tokio::test]
async fn a_plain_get_with_a_ticket_is_refused_and_leaves_the_ticket_unspent() {
    let app = spawn_app_with(ws_settings()).await;
    let ticket = ticket_for(&app, "alice").await;
    // A plain GET (a link prefetch, a crawler, a mistyped curl) and a HEAD.
    let url = app.url(&format!("/v1/stream?ticket={ticket}"));
    let plain = reqwest::get(&url).await.expect("plain GET");
    assert_eq!(plain.status().as_u16(), 400);
    let body: Value = plain.json().await.expect("json error body");
    assert_eq!(body["code"], 40010000, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("WebSocket upgrade"),
        "{body}"
    );
    // The ticket still authenticates the real upgrade, once.
    let mut client = connect(&app, &format!("?ticket={ticket}"), &[]).await;
    client.expect_success("connected").await;
    client.expect_success("authenticated").await;
    let mut again = connect(&app, &format!("?ticket={ticket}"), &[]).await;
    again.expect_success("connected").await;
    again.expect_error(402).await;
    again.expect_closed().await;
    app.stop().await.expect("stop");
}
