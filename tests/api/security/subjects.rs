//! Issue 13 item 4: the built-in issuer (HS256) accepts only subjects that are configured
//! users, of sane length and characters, on every door (REST with a bearer token, ticket
//! issue, the WebSocket), and a user removed from the configuration is refused from the next
//! start on.

use serde_json::{Value, json};

use crate::common::{TestApp, spawn_app_with};
use crate::ws_support::{SECRET, claims_for, connect, sign, token_for, ws_settings};

async fn account_status(app: &TestApp, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(app.url("/v1/account"))
        .bearer_auth(token)
        .send()
        .await
        .expect("account request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ticket_status(app: &TestApp, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(app.url("/v1/auth/ticket"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("ticket request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts `token` is refused by REST, ticket issue, the upgrade header and the `auth`
/// action, each saying `why`.
async fn refused_everywhere(app: &TestApp, token: &str, why: &str) {
    for (door, (status, body)) in [
        ("account", account_status(app, token).await),
        ("ticket", ticket_status(app, token).await),
    ] {
        assert_eq!(status, 401, "{door}: {body}");
        assert_eq!(body["code"], 40110000, "{door}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{door}: {body}");
    }
    let bearer = format!("Bearer {token}");
    let mut upgraded = connect(app, "", &[("authorization", &bearer)]).await;
    upgraded.expect_success("connected").await;
    let error = upgraded.expect_error(402).await;
    assert!(
        error["msg"].as_str().unwrap_or_default().contains(why),
        "{error}"
    );
    let close = upgraded.expect_closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    let mut late = connect(app, "", &[]).await;
    late.expect_success("connected").await;
    late.send_json(json!({"action":"auth","token": token}))
        .await;
    if token.len() > 8000 {
        // Over the pre-authentication message limit: refused for its size before the
        // token is even read.
        let error = late.expect_error(400).await;
        assert!(
            error["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("before authentication")
        );
        let close = late.expect_closed().await.expect("a close frame");
        assert_eq!(u16::from(close.code), 1009);
        return;
    }
    let error = late.expect_error(402).await;
    assert!(
        error["msg"].as_str().unwrap_or_default().contains(why),
        "{error}"
    );
    late.expect_closed().await;
}

#[tokio::test]
async fn validly_signed_tokens_for_unlisted_long_or_control_character_subjects_are_refused() {
    let app = spawn_app_with(ws_settings()).await;
    // A listed user works on every door.
    let (status, body) = account_status(&app, &token_for("alice")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ticket_status(&app, &token_for("alice")).await;
    assert_eq!(status, 200, "{body}");

    refused_everywhere(
        &app,
        &token_for("never-configured"),
        "not a configured user",
    )
    .await;
    refused_everywhere(&app, &token_for(&"a".repeat(10_000)), "at most 128 allowed").await;
    for subject in ["ali\0ce", "alice\nlevel=INFO forged"] {
        refused_everywhere(&app, &token_for(subject), "control character").await;
    }
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_user_removed_from_the_configuration_is_refused_after_a_restart() {
    let settings = ws_settings();
    let app = spawn_app_with(settings.clone()).await;
    // A token issued (signed with the persistent secret) while carol is configured.
    let token = sign(&claims_for("carol"), SECRET);
    let (status, body) = account_status(&app, &token).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await.expect("stop");

    let mut without_carol = settings;
    without_carol
        .auth
        .users
        .retain(|user| user.username != "carol");
    let app = spawn_app_with(without_carol).await;
    refused_everywhere(&app, &token, "not a configured user").await;
    // Everyone else carries on.
    let (status, body) = account_status(&app, &token_for("alice")).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await.expect("stop");
}
