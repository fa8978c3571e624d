//! The publisher: one keep-alive HTTP/1.1 connection that POSTs one trade per tick at a fixed
//! rate, with the send time (nanoseconds since the epoch) in the trade's `i` field.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::now_ns;
use crate::http::{ChunkedDecoder, Url, parse_head, request};

/// What the publisher did.
#[derive(Debug, Default, Clone)]
pub(crate) struct PublishReport {
    /// Messages the server accepted (2xx); each subscriber should receive all of them.
    pub(crate) accepted: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) elapsed: Duration,
}

/// One keep-alive HTTP/1.1 connection that POSTs JSON bodies to one URL, with the bearer
/// token if there is one; it connects on first use and again after [`PostConnection::reset`].
pub(crate) struct PostConnection {
    url: Url,
    address: SocketAddr,
    token: Option<String>,
    stream: Option<TcpStream>,
}

impl PostConnection {
    pub(crate) fn new(url: Url, address: SocketAddr, token: Option<String>) -> PostConnection {
        PostConnection {
            url,
            address,
            token,
            stream: None,
        }
    }

    /// POSTs `body`; the response's status and body.
    pub(crate) async fn post(&mut self, body: &str) -> Result<(u16, Vec<u8>), String> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream = TcpStream::connect(self.address)
                    .await
                    .map_err(|e| format!("publish connect failed: {e}"))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("set_nodelay: {e}"))?;
                self.stream.insert(stream)
            }
        };
        let authorization = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let raw = request(
            "POST",
            &self.url,
            &headers,
            Some(("application/json", body.as_bytes())),
        );
        stream
            .write_all(&raw)
            .await
            .map_err(|e| format!("publish write failed: {e}"))?;
        read_response(stream).await
    }

    /// Drops the connection after a failure: the next post connects again.
    pub(crate) fn reset(&mut self) {
        self.stream = None;
    }
}

pub(crate) struct Publisher {
    connection: PostConnection,
    symbols: Vec<String>,
    sequence: u64,
}

impl Publisher {
    pub(crate) fn new(
        url: Url,
        address: SocketAddr,
        token: Option<String>,
        symbols: Vec<String>,
    ) -> Publisher {
        Publisher {
            connection: PostConnection::new(url, address, token),
            symbols,
            sequence: 0,
        }
    }

    /// Publishes `rate` messages per second for `duration`.
    pub(crate) async fn run(&mut self, rate: f64, duration: Duration) -> PublishReport {
        let mut report = PublishReport::default();
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let started = Instant::now();
        let mut ticker = tokio::time::interval(period);
        // A late tick is sent at once so the average rate holds.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..total {
            ticker.tick().await;
            match self.publish_one().await {
                Ok(()) => report.accepted += 1,
                Err(error) => {
                    report.failed += 1;
                    report.first_error.get_or_insert(error);
                    self.connection.reset();
                }
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// The body of one trade; also what Nchan relays verbatim.
    pub(crate) fn body(symbol: &str, sequence: u64, sent_ns: u64) -> String {
        let time = chrono::DateTime::from_timestamp_nanos(sent_ns as i64)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        format!(
            r#"{{"T":"t","S":"{symbol}","i":{sent_ns},"x":"LG","p":{}.25,"s":{},"t":"{time}","c":[]}}"#,
            100 + sequence % 50,
            1 + sequence % 1000
        )
    }

    async fn publish_one(&mut self) -> Result<(), String> {
        self.sequence += 1;
        let symbol = &self.symbols[(self.sequence as usize) % self.symbols.len().max(1)];
        let body = Publisher::body(symbol, self.sequence, now_ns());
        let (status, body) = self.connection.post(&body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))
        }
    }
}

/// Reads one complete response (Content-Length or chunked) from a keep-alive connection.
pub(crate) async fn read_response(stream: &mut TcpStream) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("publish read failed: {e}"))?;
        if n == 0 {
            return Err("publish connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf).map_err(|e| e.to_string())? {
            break head;
        }
    };
    let mut rest = buf.split_off(head.head_len);
    let mut body = Vec::new();
    if head.chunked {
        let mut decoder = ChunkedDecoder::default();
        loop {
            decoder
                .decode(&rest, |bytes| body.extend_from_slice(bytes))
                .map_err(|e| e.to_string())?;
            if decoder.is_done() {
                break;
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("publish read failed: {e}"))?;
            if n == 0 {
                return Err("publish connection closed mid-body".into());
            }
            rest = chunk[..n].to_vec();
        }
    } else {
        let length = head.content_length.unwrap_or(0);
        while rest.len() < length {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("publish read failed: {e}"))?;
            if n == 0 {
                return Err("publish connection closed mid-body".into());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        body = rest;
    }
    Ok((head.status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trade_body_carries_the_send_time_as_its_id_and_parses_as_a_trade() {
        let sent = 1_763_900_000_123_456_789;
        let body = Publisher::body("AAPL", 3, sent);
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["T"], "t");
        assert_eq!(value["i"].as_u64(), Some(sent));
        assert_eq!(value["t"], "2025-11-23T12:13:20.123456789Z");
        let trade: tickgate::market::MarketEvent =
            serde_json::from_str(&body).expect("a valid tickgate trade");
        assert_eq!(trade.kind(), tickgate::market::EventKind::Trade);
        let mut ids = Vec::new();
        crate::sse::scan_trade_ids(body.as_bytes(), |id| ids.push(id));
        assert_eq!(ids, vec![sent]);
    }
}
