//! The Alpaca market-data stream in JSON (when the upgrade asks for it) and MessagePack, and
//! the trading stream's refusals, with a plain WebSocket client.

use crate::common;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(app: &common::TestApp, path: &str, json: bool) -> Socket {
    let mut request = format!("ws://127.0.0.1:{}{path}", app.port)
        .into_client_request()
        .expect("request");
    if json {
        request
            .headers_mut()
            .insert("content-type", "application/json".parse().expect("value"));
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("connect")
        .0
}

/// The next data frame, decoded (text as JSON, binary as MessagePack into JSON).
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("json"),
            Message::Binary(bytes) => {
                return rmp_serde::from_slice::<Value>(&bytes).unwrap_or_else(|_| {
                    // Timestamps are extension values, which JSON cannot hold: keep the rest.
                    let value = rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack");
                    json!({"msgpack": value.to_string()})
                });
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn the_json_data_stream_speaks_alpacas_messages_and_skips_channels_it_lacks() {
    let app = common::spawn_app().await;
    let mut socket = open(&app, "/v2/test", true).await;
    assert_eq!(
        next(&mut socket).await,
        json!([{"T": "success", "msg": "connected"}])
    );
    socket
        .send(Message::text(
            json!({"action": "auth", "key": "demo-key", "secret": "demo-secret"}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(
        next(&mut socket).await,
        json!([{"T": "success", "msg": "authenticated"}])
    );
    socket
        .send(Message::text(
            json!({"action": "subscribe", "trades": ["AAPL"], "dailyBars": ["AAPL"]}).to_string(),
        ))
        .await
        .expect("send");
    let error = next(&mut socket).await;
    assert_eq!(error[0]["code"], 400);
    assert!(
        error[0]["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("dailyBars")
    );
    let reply = next(&mut socket).await;
    assert_eq!(reply[0]["T"], "subscription");
    assert_eq!(reply[0]["trades"], json!(["AAPL"]));
    assert_eq!(reply[0]["dailyBars"], json!([]));
    assert!(
        reply[0].get("portfolio").is_none(),
        "tickgate-only fields are not shown"
    );
    common::publish(
        &app,
        json!([{"T": "t", "S": "AAPL", "i": 5, "x": "V", "p": 101.25, "s": 10,
                "t": chrono::Utc::now(), "c": []}]),
    )
    .await;
    let trade = next(&mut socket).await;
    assert_eq!(
        (trade[0]["T"].clone(), trade[0]["p"].clone()),
        (json!("t"), json!(101.25))
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_messagepack_data_stream_answers_in_binary_and_refuses_a_wrong_secret() {
    let app = common::spawn_app().await;
    let mut socket = open(&app, "/v2/iex", false).await;
    let greeting = socket.next().await.expect("open").expect("frame");
    let Message::Binary(bytes) = greeting else {
        panic!("MessagePack frames are binary: {greeting:?}")
    };
    assert_eq!(
        rmp_serde::from_slice::<Value>(&bytes).expect("msgpack"),
        json!([{"T": "success", "msg": "connected"}])
    );
    let auth = rmp_serde::to_vec_named(&json!({"action": "auth", "key": "demo-key",
                                                "secret": "wrong"}))
    .expect("encode");
    socket.send(Message::binary(auth)).await.expect("send");
    let error = next(&mut socket).await;
    assert_eq!(error[0]["code"], 402);
    assert_eq!(error[0]["msg"], "auth failed: invalid key id or secret");
    let unknown_feed =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v2/crypto", app.port)).await;
    assert!(
        unknown_feed.is_err(),
        "only iex, sip and test are stock feeds"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_trading_stream_answers_authenticate_and_listen_without_a_greeting() {
    let app = common::spawn_app().await;
    let mut socket = open(&app, "/stream", false).await;
    socket
        .send(Message::text(
            json!({"action": "listen", "data": {"streams": ["trade_updates"]}}).to_string(),
        ))
        .await
        .expect("send");
    let first = next(&mut socket).await;
    assert_eq!(
        first["stream"], "error",
        "listening needs auth first: {first}"
    );
    assert_eq!(first["data"]["code"], 401);
    socket
        .send(Message::text(
            json!({"action": "authenticate",
                   "data": {"key_id": "demo-key", "secret_key": "demo-secret"}})
            .to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(
        next(&mut socket).await,
        json!({"stream": "authorization",
               "data": {"status": "authorized", "action": "authenticate"}})
    );
    socket
        .send(Message::text(
            json!({"action": "listen", "data": {"streams": ["trade_updates"]}}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(
        next(&mut socket).await,
        json!({"stream": "listening", "data": {"streams": ["trade_updates"]}})
    );
    socket
        .send(Message::text(json!({"action": "subscribe"}).to_string()))
        .await
        .expect("send");
    let refused = next(&mut socket).await;
    assert_eq!(
        (refused["stream"].clone(), refused["data"]["code"].clone()),
        (json!("error"), json!(400))
    );
    app.stop().await.expect("stop");
}
