//! Property tests over real sockets for the inputs issue 13 found mishandled (item 9), so
//! they keep being tried: any `Last-Event-ID` a client can send (bytes outside ASCII
//! included) opens the stream with a snapshot, a reset unless the header is blank; and any
//! query string on `/v1/bars` is answered with JSON, never a 5xx.

use crate::common;

use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` (a complete request head) and reads until `enough` says the answer so far
/// is sufficient, the connection ends or a second passes.
async fn exchange(port: u16, head: &[u8], enough: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    while !enough(&answer) {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    answer
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes a client can put in a header value: tab, visible ASCII, space and obs-text.
fn header_byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_last_event_id_opens_the_stream_with_a_snapshot_and_a_reset_unless_blank(
        id in proptest::collection::vec(header_byte(), 0..48),
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let app = common::spawn_app().await;
            let mut head = b"GET /v1/stream/market?symbols=AAPL HTTP/1.1\r\nHost: x\r\nLast-Event-ID: ".to_vec();
            head.extend_from_slice(&id);
            head.extend_from_slice(b"\r\n\r\n");
            let answer = exchange(app.port, &head, |a| contains(a, b"event: snapshot\ndata: {")
                && contains(a, b"\"cursor\"")).await;
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 200"), "{id:?}: {text}");
            assert!(text.contains("event: snapshot"), "{id:?}: {text}");
            let blank = id.iter().all(|b| *b == b' ' || *b == b'\t');
            let reset = text.contains("\"reset\":true");
            assert_eq!(reset, !blank, "{id:?}: {text}");
            app.stop().await.expect("stop");
        });
    }

    #[test]
    fn any_bars_query_is_answered_with_json_and_never_a_server_error(
        pairs in proptest::collection::vec(
            (
                prop_oneof![
                    Just("symbol"), Just("timeframe"), Just("start"), Just("end"),
                    Just("limit"), Just("page_token"), Just("x"),
                ],
                "[ -~]{0,12}",
            ),
            0..5,
        ),
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let app = common::spawn_app().await;
            let query: String = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let head = format!("GET /v1/bars?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let answer = exchange(app.port, head.as_bytes(), |_| false).await;
            let text = String::from_utf8_lossy(&answer);
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            assert!((200..500).contains(&status), "{query}: {text}");
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
            let json: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{query}: not JSON ({e}): {text}"));
            if status != 200 {
                assert!(json["code"].is_u64(), "{query}: {json}");
            }
            app.stop().await.expect("stop");
        });
    }
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
