//! Subscriber connections: a raw TCP socket bound to a loopback source address (so one run
//! can open more connections than one address has ports), the SSE or WebSocket handshake,
//! then a read loop that counts this run's messages and records their one-way latency.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::{ChunkedDecoder, Url, parse_head};
use crate::market::{MarketPlan, symbol_of};
use crate::sse::{SseParser, scan_trade_ids};
use crate::stats::{SubscriberResult, SymbolSeen};
use crate::ws::{FrameDecoder, OPCODE_PONG, OPCODE_TEXT, WsEvent, client_frame};

/// Bytes read per `read` call. Small, because an idle run holds 100k of these.
const READ_BUFFER_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Sse,
    WebSocket,
}

/// What every subscriber connects to.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) transport: Transport,
    pub(crate) url: Url,
    pub(crate) address: SocketAddr,
    pub(crate) headers: Vec<(String, String)>,
    /// WebSocket text messages sent right after the upgrade (auth, subscribe).
    pub(crate) ws_messages: Vec<String>,
    /// How many loopback source addresses to spread connections over (127.0.0.2 upwards).
    pub(crate) source_addresses: u32,
    pub(crate) handshake_timeout: Duration,
    /// Market runs: each subscriber's own subscription (added to the SSE query, or sent as
    /// a subscribe action after the WebSocket upgrade) and its per-symbol counts.
    pub(crate) market: Option<MarketPlan>,
}

impl Target {
    /// The source address of subscriber `index`: 127.0.0.2, 127.0.0.3, ... round robin.
    pub(crate) fn source_for(&self, index: usize) -> Ipv4Addr {
        let offset = (index as u32) % self.source_addresses.max(1);
        // 127.0.0.2 .. 127.255.255.254: skip .0/.1 so the server's own address stays free.
        let host = 2 + offset;
        Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) | (host & 0x00FF_FFFF))
    }
}

/// Counters every subscriber updates, read by the run's coordinator.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Messages with a send time below this are from before the run and are not counted.
    pub(crate) min_id: AtomicU64,
    pub(crate) ready: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) received: AtomicU64,
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            min_id: AtomicU64::new(u64::MAX),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            stop: CancellationToken::new(),
        }
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Opens a TCP connection from `source` to `target`.
pub(crate) async fn connect_from(
    source: Ipv4Addr,
    target: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&SocketAddrV4::new(source, 0).into())?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(target).await
}

/// Connects, subscribes, and reads until the run stops. `slow` subscribers stop reading right
/// after the handshake (the slow-consumer run).
pub(crate) async fn run_subscriber(
    target: Arc<Target>,
    index: usize,
    slow: bool,
    shared: Arc<Shared>,
    connect_limit: Arc<Semaphore>,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        index,
        slow,
        per_symbol: target
            .market
            .as_ref()
            .map_or_else(Vec::new, |plan| vec![SymbolSeen::default(); plan.symbols]),
        ..SubscriberResult::default()
    };
    let permit = connect_limit.acquire_owned().await;
    let opened = tokio::time::timeout(target.handshake_timeout, open(&target, index)).await;
    drop(permit);
    let (mut stream, leftover) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            result.error = Some(error);
            return result;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            result.error = Some("handshake timed out".into());
            return result;
        }
    };
    shared.ready.fetch_add(1, Ordering::Relaxed);
    if slow {
        shared.stop.cancelled().await;
        return result;
    }
    let mut reader = Reader::new(target.transport, leftover.chunked);
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut pongs = Vec::new();
    if let Err(error) = reader.process(&leftover.body, &shared, &mut result, &mut pongs) {
        result.error = Some(error);
        return result;
    }
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        let read = tokio::select! {
            biased;
            _ = &mut stop => break,
            read = stream.read(&mut buffer) => read,
        };
        match read {
            Ok(0) => {
                result.error = Some("server closed the connection".into());
                break;
            }
            Ok(n) => {
                if let Err(error) = reader.process(&buffer[..n], &shared, &mut result, &mut pongs) {
                    result.error = Some(error);
                    break;
                }
                if !pongs.is_empty() {
                    let out = std::mem::take(&mut pongs);
                    if let Err(error) = stream.write_all(&out).await {
                        result.error = Some(format!("write failed: {error}"));
                        break;
                    }
                }
                if reader.finished {
                    break;
                }
            }
            Err(error) => {
                result.error = Some(format!("read failed: {error}"));
                break;
            }
        }
    }
    result
}

/// What came after the response head in the handshake's last read.
struct Leftover {
    chunked: bool,
    body: Vec<u8>,
}

async fn open(target: &Target, index: usize) -> Result<(TcpStream, Leftover), String> {
    let mut stream = connect_from(target.source_for(index), target.address)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let headers: Vec<(&str, &str)> = target
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let follow = target.market.as_ref().map(|plan| plan.follow(index));
    let request = match target.transport {
        Transport::Sse => {
            let mut all = vec![("Accept", "text/event-stream")];
            all.extend_from_slice(&headers);
            let url = match (&target.market, &follow) {
                (Some(plan), Some(follow)) => {
                    let mut url = target.url.clone();
                    url.path
                        .push(if url.path.contains('?') { '&' } else { '?' });
                    url.path.push_str(&plan.sse_query(follow));
                    url
                }
                _ => target.url.clone(),
            };
            crate::http::request("GET", &url, &all, None)
        }
        Transport::WebSocket => crate::ws::upgrade_request(&target.url, &headers, index as u64),
    };
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head = loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("server closed the connection during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf).map_err(|e| e.to_string())? {
            break head;
        }
    };
    let wanted = match target.transport {
        Transport::Sse => 200,
        Transport::WebSocket => 101,
    };
    if head.status != wanted {
        let body = String::from_utf8_lossy(&buf[head.head_len..]);
        return Err(format!(
            "status {} (wanted {wanted}): {}",
            head.status,
            body.chars().take(200).collect::<String>()
        ));
    }
    if target.transport == Transport::WebSocket {
        let own = match (&target.market, &follow) {
            (Some(plan), Some(follow)) => Some(plan.ws_message(follow)),
            _ => None,
        };
        for (n, message) in target.ws_messages.iter().chain(own.as_ref()).enumerate() {
            let mask = ((index as u32) ^ (n as u32).rotate_left(16)).to_le_bytes();
            stream
                .write_all(&client_frame(OPCODE_TEXT, message.as_bytes(), mask))
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
    }
    buf.drain(..head.head_len);
    Ok((
        stream,
        Leftover {
            chunked: head.chunked && target.transport == Transport::Sse,
            body: buf,
        },
    ))
}

/// Turns received bytes into counted messages.
struct Reader {
    transport: Transport,
    chunked: Option<ChunkedDecoder>,
    sse: SseParser,
    ws: FrameDecoder,
    finished: bool,
}

impl Reader {
    fn new(transport: Transport, chunked: bool) -> Reader {
        Reader {
            transport,
            chunked: chunked.then(ChunkedDecoder::default),
            sse: SseParser::default(),
            ws: FrameDecoder::default(),
            finished: false,
        }
    }

    fn process(
        &mut self,
        bytes: &[u8],
        shared: &Shared,
        result: &mut SubscriberResult,
        pongs: &mut Vec<u8>,
    ) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        // One clock read per read call: messages in one read arrived together.
        let now = now_ns();
        let min_id = shared.min_id.load(Ordering::Relaxed);
        let mut counted = 0u64;
        let mut record = |data: &[u8]| {
            scan_trade_ids(data, |id| {
                if id >= min_id {
                    counted += 1;
                    if let Some(seen) = result.per_symbol.get_mut(symbol_of(id)) {
                        seen.count += 1;
                        seen.last_id = seen.last_id.max(id);
                    }
                    let latency_us = now.saturating_sub(id) / 1000;
                    result
                        .latencies_us
                        .push(latency_us.min(u64::from(u32::MAX)) as u32);
                }
            })
        };
        let mut error_event = None;
        match self.transport {
            Transport::Sse => {
                let sse = &mut self.sse;
                let mut dispatch = |event: &[u8], data: &[u8]| match event {
                    // The snapshot repeats old trades; an error event ends the stream.
                    b"snapshot" => {}
                    b"error" => error_event = Some(String::from_utf8_lossy(data).into_owned()),
                    _ => record(data),
                };
                match &mut self.chunked {
                    Some(decoder) => {
                        decoder
                            .decode(bytes, |body| sse.feed(body, &mut dispatch))
                            .map_err(|e| e.to_string())?;
                        if decoder.is_done() {
                            self.finished = true;
                        }
                    }
                    None => sse.feed(bytes, &mut dispatch),
                }
            }
            Transport::WebSocket => {
                let finished = &mut self.finished;
                self.ws
                    .feed(bytes, &mut |event| match event {
                        WsEvent::Message(payload) => record(payload),
                        WsEvent::Ping(payload) => {
                            pongs.extend_from_slice(&client_frame(OPCODE_PONG, payload, [0; 4]))
                        }
                        WsEvent::Close => *finished = true,
                    })
                    .map_err(|e| e.to_string())?;
            }
        }
        result.received += counted;
        shared.received.fetch_add(counted, Ordering::Relaxed);
        if let Some(error) = error_event {
            self.finished = true;
            return Err(format!("server sent an error event: {error}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_cycle_over_loopback_and_skip_the_first_two() {
        let target = Target {
            transport: Transport::Sse,
            url: Url::parse("http://127.0.0.1:1/").expect("url"),
            address: "127.0.0.1:1".parse().expect("addr"),
            headers: vec![],
            ws_messages: vec![],
            source_addresses: 300,
            handshake_timeout: Duration::from_secs(1),
            market: None,
        };
        assert_eq!(target.source_for(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(target.source_for(299), Ipv4Addr::new(127, 0, 1, 45));
        assert_eq!(target.source_for(300), Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn the_reader_counts_only_this_runs_trades_and_measures_their_latency() {
        let shared = Shared::new();
        let start = now_ns() - 5_000_000;
        shared.min_id.store(start, Ordering::Relaxed);
        let mut reader = Reader::new(Transport::Sse, true);
        let mut result = SubscriberResult::default();
        let body = format!(
            "event: snapshot\ndata: {{\"trades\":[{{\"i\":{start}}}]}}\n\n\
             event: trade\ndata: {{\"i\":{}}}\n\nevent: trade\ndata: {{\"i\":{start}}}\n\n",
            start - 1
        );
        let chunked = format!("{:x}\r\n{body}\r\n", body.len());
        let (left, right) = chunked.as_bytes().split_at(chunked.len() / 2);
        let mut pongs = Vec::new();
        reader
            .process(left, &shared, &mut result, &mut pongs)
            .expect("valid");
        reader
            .process(right, &shared, &mut result, &mut pongs)
            .expect("valid");
        assert_eq!(
            result.received, 1,
            "snapshot and older trades are not counted"
        );
        assert_eq!(shared.received.load(Ordering::Relaxed), 1);
        assert!(result.latencies_us[0] >= 5_000, "{:?}", result.latencies_us);
    }

    #[test]
    fn chunked_sse_counts_the_same_whatever_the_read_boundaries() {
        let shared = Shared::new();
        shared.min_id.store(1, Ordering::Relaxed);
        // Three events cut into HTTP chunks that end mid-line and mid-`\r\n`.
        let events = "id: 1-1\nevent: trade\ndata: {\"i\":10}\r\n\r\n: hb\n\n\
                      event: trade\ndata: [{\"i\":11},{\"i\":12}]\n\n";
        let mut body = String::new();
        for piece in [&events[..9], &events[9..40], &events[40..41], &events[41..]] {
            body.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
        }
        body.push_str("0\r\n\r\n");
        for split in 0..=body.len() {
            let mut reader = Reader::new(Transport::Sse, true);
            let mut result = SubscriberResult::default();
            for part in [&body.as_bytes()[..split], &body.as_bytes()[split..]] {
                reader
                    .process(part, &shared, &mut result, &mut Vec::new())
                    .expect("valid stream");
            }
            assert_eq!(result.received, 3, "split at {split}");
            assert!(reader.finished, "the last chunk ends the stream");
        }
    }

    #[test]
    fn websocket_messages_are_counted_and_pings_answered_with_masked_pongs() {
        let shared = Shared::new();
        shared.min_id.store(1, Ordering::Relaxed);
        let mut reader = Reader::new(Transport::WebSocket, false);
        let mut result = SubscriberResult::default();
        let mut pongs = Vec::new();
        let payload = br#"[{"T":"t","i":5},{"T":"t","i":6}]"#;
        let mut stream = vec![0x81, payload.len() as u8];
        stream.extend_from_slice(payload);
        stream.extend_from_slice(&[0x89, 2, b'h', b'i', 0x88, 0]);
        reader
            .process(&stream, &shared, &mut result, &mut pongs)
            .expect("valid frames");
        assert_eq!(result.received, 2);
        assert_eq!(
            &pongs[..2],
            &[0x8A, 0x80 | 2],
            "a masked pong of the ping's payload"
        );
        assert!(reader.finished, "a close frame ends the subscriber");
    }

    #[test]
    fn an_sse_error_event_ends_the_subscriber_with_its_message() {
        let shared = Shared::new();
        let mut reader = Reader::new(Transport::Sse, false);
        let mut result = SubscriberResult::default();
        let error = reader
            .process(
                b"event: error\ndata: {\"code\":407}\n\n",
                &shared,
                &mut result,
                &mut Vec::new(),
            )
            .expect_err("error event");
        assert!(error.contains("407"));
        assert!(reader.finished);
    }
}
