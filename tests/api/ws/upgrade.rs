//! The server boundary of WebSocket upgrades (actix-http's upgrade hook, src/transport/ws/upgrade.rs),
//! over raw sockets: an upgrade to a path without a WebSocket, a first message sent with the
//! upgrade request, and the end of a connection.

use crate::common;
use crate::ws_support;

use std::time::Duration;

use common::spawn_app_with;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws_support::{token_for, ws_settings};

const DEADLINE: Duration = Duration::from_secs(10);

fn upgrade_request(port: u16, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked client frame (key `1 2 3 4`) with a payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Everything the server sends until it closes the connection.
async fn read_to_end(socket: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut all))
        .await
        .expect("the server closes the connection")
        .expect("read");
    String::from_utf8_lossy(&all).into_owned()
}

/// The response head (up to and including the blank line), byte by byte so nothing after it
/// is consumed.
async fn read_head(socket: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(DEADLINE, socket.read_u8())
            .await
            .expect("a response head")
            .expect("read");
        head.push(byte);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One server frame: (opcode, payload). Server frames are never masked.
async fn read_frame(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    tokio::time::timeout(DEADLINE, async {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => u64::from(socket.read_u16().await?),
            127 => socket.read_u64().await?,
            short => u64::from(short),
        };
        let mut payload = vec![0u8; len as usize];
        socket.read_exact(&mut payload).await?;
        std::io::Result::Ok((head[0] & 0x0F, payload))
    })
    .await
    .expect("a frame in time")
    .expect("read frame")
}

#[tokio::test]
async fn an_upgrade_to_a_path_without_a_websocket_gets_a_json_400_and_the_connection_closes() {
    let app = spawn_app_with(ws_settings()).await;
    for path in ["/healthz", "/v1/stream/market?symbols=AAPL", "/nowhere"] {
        let mut socket = TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connect");
        socket
            .write_all(upgrade_request(app.port, path, "").as_bytes())
            .await
            .expect("write");
        let response = read_to_end(&mut socket).await;
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{path}: {head}"
        );
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        assert_eq!(body["code"], 40010000, "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("does not take a WebSocket upgrade") && message.contains("/v1/stream"),
            "{path}: {message}"
        );
    }
    // The WebSocket routes themselves still answer a plain request (no upgrade) with their
    // own 400, and upgrade a real one.
    let plain = reqwest::get(app.url("/v2/iex")).await.expect("request");
    assert_eq!(plain.status().as_u16(), 400);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_refused_upgrade_is_answered_in_json_and_the_connection_closes() {
    let app = spawn_app_with(ws_settings()).await;
    let mut socket = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let request = upgrade_request(app.port, "/v1/stream", "Origin: http://evil.example\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let response = read_to_end(&mut socket).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["code"], 40310001, "{body}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read_before_the_socket() {
    let app = spawn_app_with(ws_settings()).await;
    let mut socket = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // One write: the upgrade request, a ping, then the auth message, without waiting for
    // the 101. The dispatcher has read them with the request; they must not be lost.
    let mut bytes = upgrade_request(app.port, "/v1/stream", "").into_bytes();
    bytes.extend(client_frame(0x9, b"early"));
    let auth = format!(r#"{{"action":"auth","token":"{}"}}"#, token_for("alice"));
    // A token is longer than a short frame holds: send it with a 16-bit length.
    let mask = [1u8, 2, 3, 4];
    bytes.extend([0x81, 0x80 | 126]);
    bytes.extend((auth.len() as u16).to_be_bytes());
    bytes.extend(mask);
    bytes.extend(auth.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&bytes).await.expect("write");
    let head = read_head(&mut socket).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let mut seen = Vec::new();
    let mut ponged = false;
    while !seen
        .iter()
        .any(|text: &String| text.contains("authenticated"))
    {
        match read_frame(&mut socket).await {
            (0xA, payload) => {
                assert_eq!(payload, b"early");
                ponged = true;
            }
            (0x1, payload) => seen.push(String::from_utf8(payload).expect("UTF-8 text")),
            (opcode, payload) => panic!("unexpected frame {opcode}: {payload:?}"),
        }
    }
    assert!(
        ponged,
        "the early ping was answered before authentication: {seen:?}"
    );
    assert!(seen[0].contains("connected"), "{seen:?}");
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn a_client_close_is_answered_and_the_server_closes_the_socket() {
    let app = spawn_app_with(ws_settings()).await;
    let mut socket = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    socket
        .write_all(upgrade_request(app.port, "/v1/stream", "").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut socket).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (opcode, greeting) = read_frame(&mut socket).await;
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&greeting).contains("connected"));
    socket
        .write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .expect("write close");
    let (opcode, payload) = read_frame(&mut socket).await;
    assert_eq!(opcode, 0x8, "a close frame answers the client's");
    assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    // Then the server ends the connection: end of stream, not a reset.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut rest))
        .await
        .expect("the server closes the socket");
    assert!(read.is_ok(), "{read:?}");
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
    app.stop().await.expect("stop");
}
