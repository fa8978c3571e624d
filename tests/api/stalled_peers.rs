//! Clients that stop reading for good: once data sent to them stays unacknowledged for
//! `server.stalled_peer_timeout`, the connection is dropped (the kernel resets it), on both
//! transports, while the server and other clients carry on.

use crate::common;
use crate::ws_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{SseClient, TestApp, news, spawn_app_with};
use tickgate::settings::Settings;

fn stalling_settings() -> Settings {
    let mut settings = ws_support::ws_settings();
    settings.server.stalled_peer_timeout = Duration::from_secs(1);
    settings
}

/// A client socket with a small receive buffer, so its window closes after a few news items.
fn small_window_connect(port: u16) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    socket.into()
}

/// Reads until `needle` has arrived (the stream is set up), without draining more.
fn read_until(stream: &mut TcpStream, needle: &[u8]) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = stream.read(&mut buf).expect("setup bytes");
        assert!(
            n > 0,
            "closed during setup: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Publishes far more news than the stalled client's socket buffers hold, while a healthy SSE
/// client proves delivery goes on, then waits past the timeout and reads the stalled socket:
/// it must end in a reset (or an end of stream), never block.
async fn stalls_and_is_dropped(app: &TestApp, mut stalled: TcpStream) {
    let mut healthy = SseClient::connect(app.port, "/v1/stream/news", &[]).await;
    healthy.expect_event(Duration::from_secs(10)).await; // retry block
    for id in 1..=300u64 {
        app.state
            .hub
            .publish_event(news(id, &[], 16 * 1024))
            .expect("valid news");
        let event = healthy.expect_event(Duration::from_secs(10)).await;
        assert_eq!(event.json()["id"], id, "{}", event.data);
    }
    // The timeout is 1 s; zero-window probes back off from 200 ms, so the kernel gives up
    // within a few seconds. Wait without reading, which would reopen the window.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let outcome = tokio::task::spawn_blocking(move || {
        stalled
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stalled.read(&mut buf) {
                Ok(0) => return "end of stream".to_owned(),
                Ok(_) if started.elapsed() < Duration::from_secs(60) => continue,
                Ok(_) => return "still streaming after a minute".to_owned(),
                Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                    return "reset".to_owned();
                }
                Err(error) => return format!("still open: {error}"),
            }
        }
    })
    .await
    .expect("reader");
    assert!(
        outcome == "reset" || outcome == "end of stream",
        "the stalled connection was not dropped: {outcome}"
    );
    // Everyone else carries on.
    app.state
        .hub
        .publish_event(news(301, &[], 10))
        .expect("valid news");
    let event = healthy.expect_event(Duration::from_secs(10)).await;
    assert_eq!(event.json()["id"], 301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_dropped_after_the_stalled_peer_timeout() {
    let app = spawn_app_with(stalling_settings()).await;
    let mut stalled = small_window_connect(app.port);
    write!(
        stalled,
        "GET /v1/stream/news HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        app.port
    )
    .expect("request");
    read_until(&mut stalled, b"retry:");
    stalls_and_is_dropped(&app, stalled).await;
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_dropped_after_the_stalled_peer_timeout() {
    let app = spawn_app_with(stalling_settings()).await;
    let mut stalled = small_window_connect(app.port);
    write!(
        stalled,
        "GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {}\r\n\r\n",
        app.port,
        ws_support::token_for("alice")
    )
    .expect("upgrade");
    read_until(&mut stalled, b"authenticated");
    // One masked text frame: subscribe to all news.
    let payload = br#"{"action":"subscribe","news":["*"]}"#;
    let mask = [7u8, 1, 9, 3];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stalled.write_all(&frame).expect("subscribe");
    read_until(&mut stalled, b"subscription");
    stalls_and_is_dropped(&app, stalled).await;
    app.stop().await.expect("stop");
}
