//! Helpers for the WebSocket integration tests: settings with a known HS256 secret, token
//! minting, and a small client over tokio-tungstenite that reads server frames as JSON arrays.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tickgate::settings::Settings;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::TestApp;

pub const SECRET: &str = "integration-test-secret-of-32-bytes-or-more";
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The users tests mint tokens for; the built-in issuer refuses subjects not in `auth.users`.
pub const TEST_USERS: [&str; 8] = ["alice", "bob", "carol", "dave", "rita", "sam", "ula", "vic"];

/// Test settings with a fixed HS256 secret, so tests can mint their own tokens for
/// [`TEST_USERS`] (listed in `auth.users` with the demo user's password hash).
pub fn ws_settings() -> Settings {
    let mut settings = crate::common::test_settings();
    settings.auth.hs256_secret = SECRET.into();
    let hash = settings
        .auth
        .users
        .first()
        .map(|demo| demo.password_hash.clone())
        .expect("the default config has a demo user");
    for user in TEST_USERS {
        settings.auth.users.push(tickgate::settings::UserEntry {
            username: user.into(),
            password_hash: hash.clone(),
        });
    }
    settings
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

pub fn claims_for(user: &str) -> Value {
    json!({"sub": user, "iss": "tickgate", "aud": "tickgate", "iat": now(), "exp": now() + 600})
}

pub fn token_for(user: &str) -> String {
    sign(&claims_for(user), SECRET)
}

pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Objects read but not yet consumed by `expect`.
    pending: std::collections::VecDeque<Value>,
}

/// Opens `/v1/stream` (plus `query`) with extra headers.
pub async fn try_connect(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, Error> {
    let url = format!("ws://127.0.0.1:{}/v1/stream{query}", app.port);
    let mut request = url.into_client_request().expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(http_name(name), value.parse().expect("header value"));
    }
    let (stream, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(WsClient {
        stream,
        pending: Default::default(),
    })
}

fn http_name(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
        .expect("header name")
}

pub async fn connect(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> WsClient {
    try_connect(app, query, headers)
        .await
        .expect("websocket connects")
}

/// Connects with a bearer header and consumes `connected` and `authenticated`.
pub async fn connect_as(app: &TestApp, user: &str) -> WsClient {
    let bearer = format!("Bearer {}", token_for(user));
    let mut client = connect(app, "", &[("authorization", &bearer)]).await;
    client.expect_success("connected").await;
    client.expect_success("authenticated").await;
    client
}

pub enum Received {
    Objects(Vec<Value>),
    Closed(Option<CloseFrame>),
}

impl WsClient {
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next data frame or the close, skipping pings and pongs.
    pub async fn receive(&mut self, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("a frame before the deadline");
            match next {
                None => return Received::Closed(None),
                Some(Err(error)) => {
                    eprintln!("websocket error: {error}");
                    return Received::Closed(None);
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("frame is JSON");
                    let Value::Array(items) = value else {
                        panic!("server frame is not an array: {text}");
                    };
                    return Received::Objects(items);
                }
                Some(Ok(Message::Close(frame))) => return Received::Closed(frame),
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next server object (frames are split into their objects).
    pub async fn next_object(&mut self, within: Duration) -> Value {
        loop {
            if let Some(object) = self.pending.pop_front() {
                return object;
            }
            match self.receive(within).await {
                Received::Objects(items) => self.pending.extend(items),
                Received::Closed(frame) => panic!("connection closed: {frame:?}"),
            }
        }
    }

    /// Reads objects until one with `"T": tag` (others are returned too, in order).
    pub async fn until(&mut self, tag: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let object = self.next_object(DEADLINE).await;
            if object["T"] == tag {
                return (object, skipped);
            }
            skipped.push(object);
        }
    }

    pub async fn expect(&mut self, tag: &str) -> Value {
        let object = self.next_object(DEADLINE).await;
        assert_eq!(object["T"], tag, "expected a {tag} message, got {object}");
        object
    }

    pub async fn expect_success(&mut self, msg: &str) {
        let object = self.expect("success").await;
        assert_eq!(object["msg"], msg, "{object}");
    }

    pub async fn expect_error(&mut self, code: u64) -> Value {
        let object = self.expect("error").await;
        assert_eq!(object["code"], code, "{object}");
        object
    }

    /// Asserts the server closes the connection (after any remaining frames).
    pub async fn expect_closed(&mut self) -> Option<CloseFrame> {
        if let Some(object) = self.pending.pop_front() {
            panic!("expected the connection to close, got {object}");
        }
        match self.receive(DEADLINE).await {
            Received::Objects(items) => panic!("expected a close, got {items:?}"),
            Received::Closed(frame) => frame,
        }
    }

    /// Subscribes and returns the `subscription` reply.
    pub async fn subscribe(&mut self, request: Value) -> Value {
        let mut request = request;
        request["action"] = "subscribe".into();
        self.send_json(request).await;
        self.expect("subscription").await
    }
}
