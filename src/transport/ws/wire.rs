//! The WebSocket wire under the session: reading client frames from the upgraded request's
//! payload and writing server frames from the response body itself. Invariants kept here:
//! frames over `ws.max_frame_bytes` are refused from their header (never buffered); server
//! frames are never masked and close reasons are cut on a character boundary; a peer that
//! stops reading stops its connection's loop, leaving the hub's bounded queue to decide.
//!
//! actix-ws, which this replaces, hands every outgoing frame through a channel to the HTTP
//! dispatcher, a second task: two task wake-ups and a channel slot per delivery, plus the
//! channel's blocks in every idle connection. Here the connection's loop lives inside the
//! response body ([`WsBody`]): the dispatcher polls the body, the body polls the loop, and
//! the loop writes finished frames into a buffer the body hands back as one chunk. A market
//! event therefore costs one wake-up of the connection's own task and one write.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

// actix-ws's protocol types are actix-http's; the codec and frame writer come from there too.
use actix_http::ws::{Codec, Frame, OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::Payload;
use actix_ws::{Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures::Stream;
use futures::task::AtomicWaker;
use tokio_util::codec::Decoder;

use super::session::{Output, SharedMarket, close_codes, closing};

/// RFC 6455 §5.5: control frames carry at most 125 bytes, so a close reason at most 123.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
    /// A frame or a fragmented message over the limit; the rest of it cannot be skipped
    /// reliably, so the connection ends after saying so.
    Overflow,
    /// A protocol violation (bad opcode, unmasked frame, invalid UTF-8 text, …).
    Invalid(String),
}

/// Decodes client frames from the request payload and joins fragmented messages.
pub struct Inbound {
    payload: Payload,
    buf: BytesMut,
    codec: Codec,
    max_bytes: usize,
    parts: Vec<Bytes>,
    parts_len: usize,
    parts_text: bool,
    ended: bool,
}

impl Inbound {
    /// `max_bytes` limits one frame and one reassembled message alike.
    pub fn new(payload: Payload, max_bytes: usize) -> Inbound {
        Inbound {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_bytes),
            max_bytes,
            parts: Vec::new(),
            parts_len: 0,
            parts_text: false,
            ended: false,
        }
    }

    /// The next complete message; `None` once the peer has gone.
    pub async fn recv(&mut self) -> Option<Incoming> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        loop {
            if let Some(message) = self.decode() {
                return Poll::Ready(Some(message));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::from(bytes);
                    } else {
                        self.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(_)) | None) => self.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// One message from what is buffered, if a whole one is there.
    fn decode(&mut self) -> Option<Incoming> {
        loop {
            // The codec waits for a whole frame before checking its size; the header alone
            // tells, so an oversize frame is refused before any of it is buffered.
            if declared_length(&self.buf).is_some_and(|len| len > self.max_bytes as u64) {
                self.ended = true;
                self.buf = BytesMut::new();
                return Some(Incoming::Overflow);
            }
            let frame = match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    if self.buf.is_empty() {
                        // Release the read chunk: it may share the dispatcher's read buffer,
                        // which would otherwise have to allocate a new one.
                        self.buf = BytesMut::new();
                    }
                    return None;
                }
                Err(ProtocolError::Overflow) => {
                    self.ended = true;
                    return Some(Incoming::Overflow);
                }
                Err(error) => {
                    self.ended = true;
                    self.buf = BytesMut::new();
                    return Some(Incoming::Invalid(error.to_string()));
                }
            };
            let message = match frame {
                Frame::Text(bytes) => text(bytes),
                Frame::Binary(bytes) => Incoming::Binary(bytes),
                Frame::Ping(bytes) => Incoming::Ping(bytes),
                Frame::Pong(_) => Incoming::Pong,
                Frame::Close(_) => Incoming::Close,
                Frame::Continuation(item) => match self.continuation(item) {
                    Some(message) => message,
                    None => continue,
                },
            };
            return Some(message);
        }
    }

    fn continuation(&mut self, item: Item) -> Option<Incoming> {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.parts_text = true;
                (bytes, false)
            }
            Item::FirstBinary(bytes) => {
                self.parts_text = false;
                (bytes, false)
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        self.parts_len += bytes.len();
        if self.parts_len > self.max_bytes {
            self.ended = true;
            self.parts.clear();
            return Some(Incoming::Overflow);
        }
        if !bytes.is_empty() {
            self.parts.push(bytes);
        }
        if !last {
            return None;
        }
        self.parts_len = 0;
        let parts = std::mem::take(&mut self.parts);
        let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        for part in parts {
            joined.extend_from_slice(&part);
        }
        if !self.parts_text {
            return Some(Incoming::Binary(joined.freeze()));
        }
        Some(text(joined.freeze()))
    }
}

fn text(bytes: Bytes) -> Incoming {
    match ByteString::try_from(bytes) {
        Ok(text) => Incoming::Text(text),
        Err(_) => Incoming::Invalid("text frame is not valid UTF-8".to_owned()),
    }
}

/// The payload length a frame header declares, once the header's length bytes are in.
fn declared_length(buf: &[u8]) -> Option<u64> {
    let second = *buf.get(1)?;
    match second & 0x7F {
        126 => Some(u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]))),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some(u64::from_be_bytes(bytes))
        }
        short => Some(u64::from(short)),
    }
}

/// Server-to-client frames (never masked), written into the connection's outgoing buffer.
pub fn put_text(buf: &mut BytesMut, payload: &[u8]) {
    Parser::write_message(buf, payload, OpCode::Text, true, false);
}

pub fn put_binary(buf: &mut BytesMut, payload: &[u8]) {
    Parser::write_message(buf, payload, OpCode::Binary, true, false);
}

pub fn put_ping(buf: &mut BytesMut, payload: &[u8]) {
    Parser::write_message(buf, payload, OpCode::Ping, true, false);
}

pub fn put_pong(buf: &mut BytesMut, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    Parser::write_message(buf, payload, OpCode::Pong, true, false);
}

pub fn put_close(buf: &mut BytesMut, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    Parser::write_message(buf, payload, OpCode::Close, true, false);
}

/// What a connection's loop and its response body share (one thread, so `Cell`s).
pub struct Wire {
    /// Finished frames the body has not handed to the dispatcher yet.
    pub outbox: RefCell<BytesMut>,
    /// When the client was last heard from (any frame), for the idle timeout.
    pub last_heard: Cell<Instant>,
    /// Set while the loop is inside a session action (an order, a subscription): market data
    /// waits meanwhile, so a subscription's reply precedes the data it starts.
    pub busy: Cell<bool>,
}

impl Wire {
    pub fn new() -> Rc<Wire> {
        Rc::new(Wire {
            outbox: RefCell::new(BytesMut::new()),
            last_heard: Cell::new(Instant::now()),
            busy: Cell::new(false),
        })
    }
}

/// Market data served from the body itself: on a hub wake-up the body drains the session's
/// queue (see `session::MarketState`) and frames what it wants, without running the
/// connection's loop. That loop still handles everything else.
pub struct FastPath {
    pub market: SharedMarket,
    /// Ping when this long has passed since the last ping (checked when a keep-alive tick
    /// from the hub's sweep is drained: one per ping interval).
    pub ping_every: Duration,
    /// Close a client silent for this long.
    pub idle_timeout: Duration,
    last_ping: Instant,
    /// Market data goes out in binary frames (MessagePack), not text.
    binary: bool,
}

impl FastPath {
    pub fn new(
        market: SharedMarket,
        ping_every: Duration,
        idle_timeout: Duration,
        binary: bool,
    ) -> FastPath {
        FastPath {
            market,
            ping_every,
            idle_timeout,
            last_ping: Instant::now(),
            binary,
        }
    }

    /// Serves pending hub wake-ups into the outbox; `true` when the connection must end (the
    /// closing frames are in the outbox).
    ///
    /// Returns only with something in the outbox (the dispatcher takes it and polls again)
    /// or with the queue's waker registered: a wake-up that leaves nothing to send (a
    /// keep-alive tick with no ping due, a feed heartbeat, events this session skips) goes
    /// round again, since a `Ready` from `poll_notified` registers nothing and returning then
    /// would leave the next push waking no one.
    fn poll(&mut self, cx: &mut Context<'_>, wire: &Wire) -> bool {
        let mut market = self.market.borrow_mut();
        loop {
            if market.queue().poll_notified(cx).is_pending() {
                return false;
            }
            let mut outbox = wire.outbox.borrow_mut();
            let binary = self.binary;
            let (close, heartbeat) = market.deliver_into(|payload| {
                if binary {
                    put_binary(&mut outbox, payload);
                } else {
                    put_text(&mut outbox, payload);
                }
            });
            // The clock is read on keep-alive ticks only (one per ping interval, busy or
            // not), not on every delivery.
            if heartbeat && close.is_none() {
                let now = Instant::now();
                if now.duration_since(self.last_ping) >= self.ping_every {
                    if now.duration_since(wire.last_heard.get()) > self.idle_timeout {
                        put_close(&mut outbox, close_codes::GOING_AWAY, "idle timeout");
                        return true;
                    }
                    put_ping(&mut outbox, b"tickgate");
                    self.last_ping = now;
                }
            }
            if let Some(reason) = close {
                let (last, code, why) = closing(reason);
                if let Output::Frame(frame) = last {
                    put_text(&mut outbox, &frame);
                }
                put_close(&mut outbox, code, why);
                return true;
            }
            if !outbox.is_empty() {
                return false;
            }
        }
    }
}

/// The response body of an upgraded connection. It owns the connection's loop (`run`), polls
/// it whenever something the loop waits on has happened and nothing is buffered, serves
/// market data itself ([`FastPath`]), and ends after the loop has returned (or the fast path
/// closed the connection) and the last frames are out. If the peer goes away, the dispatcher
/// drops the body, and with it the loop.
pub struct WsBody {
    run: Pin<Box<dyn Future<Output = ()>>>,
    wire: Rc<Wire>,
    fast: Option<FastPath>,
    done: bool,
    /// The waker the loop runs with: it records that something the loop waits on happened,
    /// so the dispatcher's other polls (after each chunk, on socket readiness) skip the loop.
    wake: Arc<LoopWaker>,
    waker: Waker,
}

#[derive(Default)]
struct LoopWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl WsBody {
    pub fn new(
        wire: Rc<Wire>,
        fast: Option<FastPath>,
        run: impl Future<Output = ()> + 'static,
    ) -> WsBody {
        let wake = Arc::new(LoopWaker::default());
        // Runs once before anything can have woken it.
        wake.woken.store(true, Ordering::Relaxed);
        WsBody {
            run: Box::pin(run),
            wire,
            fast,
            done: false,
            waker: Waker::from(Arc::clone(&wake)),
            wake,
        }
    }
}

impl MessageBody for WsBody {
    type Error = Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Infallible>>> {
        let this = self.get_mut();
        // Nothing runs while frames wait to be taken, so a peer that stops reading (the
        // dispatcher stops asking) stops the connection too, and what waits meanwhile is
        // bounded by the hub's subscriber queue.
        if !this.done && this.wire.outbox.borrow().is_empty() {
            this.wake.task.register(cx.waker());
            if this.wake.woken.swap(false, Ordering::AcqRel)
                && this
                    .run
                    .as_mut()
                    .poll(&mut Context::from_waker(&this.waker))
                    .is_ready()
            {
                this.done = true;
            }
            if !this.done
                && !this.wire.busy.get()
                && let Some(fast) = this.fast.as_mut()
                && fast.poll(cx, &this.wire)
            {
                // Dropping the loop drops the session: it leaves the hub.
                this.done = true;
                this.run = Box::pin(std::future::ready(()));
            }
        }
        let mut outbox = this.wire.outbox.borrow_mut();
        if !outbox.is_empty() {
            return Poll::Ready(Some(Ok(outbox.split().freeze())));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::h1;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask = [1u8, 2, 3, 4];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    /// An inbound decoder fed `chunks`, as the dispatcher would, then the peer's end.
    fn inbound(chunks: Vec<Vec<u8>>, max: usize) -> Inbound {
        let (mut sender, payload) = h1::Payload::create(false);
        for chunk in chunks {
            sender.feed_data(Bytes::from(chunk));
        }
        sender.feed_eof();
        Inbound::new(Payload::from(payload), max)
    }

    async fn all(mut inbound: Inbound) -> Vec<Incoming> {
        let mut out = Vec::new();
        while let Some(message) = inbound.recv().await {
            out.push(message);
        }
        out
    }

    #[actix_web::test]
    async fn frames_split_across_reads_and_fragments_are_joined() {
        let mut bytes = masked(0x1, true, b"{\"action\":\"ping\"}");
        bytes.extend(masked(0x1, false, b"hel"));
        bytes.extend(masked(0x9, true, b"p")); // a ping between fragments
        bytes.extend(masked(0x0, false, "lo wö".as_bytes()));
        bytes.extend(masked(0x0, true, b"rld"));
        bytes.extend(masked(0x8, true, &1000u16.to_be_bytes()));
        let chunks = bytes.chunks(5).map(<[u8]>::to_vec).collect();
        assert_eq!(
            all(inbound(chunks, 1024)).await,
            vec![
                Incoming::Text("{\"action\":\"ping\"}".into()),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("hello wörld".into()),
                Incoming::Close,
            ]
        );
    }

    #[actix_web::test]
    async fn an_oversize_frame_is_refused_from_its_header() {
        // Only the header of a 10 MB frame arrives: no waiting for (or buffering) the rest.
        let header = masked(0x1, true, &vec![b'x'; 70_000])[..14].to_vec();
        assert_eq!(
            all(inbound(vec![header], 65_536)).await,
            vec![Incoming::Overflow]
        );
    }

    #[actix_web::test]
    async fn fragments_over_the_limit_overflow() {
        let mut bytes = masked(0x1, false, &[b'a'; 600]);
        bytes.extend(masked(0x0, true, &[b'b'; 600]));
        assert_eq!(
            all(inbound(vec![bytes], 1000)).await,
            vec![Incoming::Overflow]
        );
    }

    #[actix_web::test]
    async fn unmasked_and_non_utf8_frames_are_protocol_errors() {
        let mut unmasked = BytesMut::new();
        put_text(&mut unmasked, b"hi");
        let out = all(inbound(vec![unmasked.to_vec()], 1024)).await;
        assert!(matches!(out.as_slice(), [Incoming::Invalid(_)]), "{out:?}");
        let out = all(inbound(vec![masked(0x1, true, &[0xff, 0xfe])], 1024)).await;
        assert!(matches!(out.as_slice(), [Incoming::Invalid(_)]), "{out:?}");
    }

    proptest::proptest! {
        /// However the dispatcher happens to cut the byte stream, the same messages come out:
        /// text messages whole (fragmented or not), control frames between fragments.
        #[test]
        fn any_split_of_the_stream_decodes_to_the_same_messages(
            messages in proptest::collection::vec(
                (proptest::string::string_regex("[a-zé0-9 {}\":,]{0,300}").expect("regex"),
                 1usize..4, proptest::bool::ANY),
                1..12,
            ),
            cuts in proptest::collection::vec(1usize..64, 1..200),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (text, pieces, ping_inside) in &messages {
                let raw = text.as_bytes();
                let size = raw.len().div_ceil(*pieces).max(1);
                let parts: Vec<&[u8]> = if raw.is_empty() { vec![raw] } else { raw.chunks(size).collect() };
                for (i, part) in parts.iter().enumerate() {
                    let first = i == 0;
                    let last = i + 1 == parts.len();
                    bytes.extend(masked(if first { 0x1 } else { 0x0 }, last, part));
                    if *ping_inside && first && !last {
                        bytes.extend(masked(0x9, true, b"p"));
                        expected.push(Incoming::Ping(Bytes::from_static(b"p")));
                    }
                }
                expected.push(Incoming::Text(text.as_str().into()));
            }
            let mut chunks = Vec::new();
            let mut rest = bytes.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                chunks.push(chunk.to_vec());
                rest = tail;
            }
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let decoded = runtime.block_on(all(inbound(chunks, 1 << 20)));
            proptest::prop_assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn server_frames_are_unmasked_and_close_reasons_are_cut_on_a_char_boundary() {
        let mut buf = BytesMut::new();
        put_text(&mut buf, &[b'a'; 200]);
        assert_eq!(&buf[..4], &[0x81, 126, 0, 200]);
        buf.clear();
        put_close(&mut buf, 1008, &"é".repeat(100));
        assert_eq!(buf[0], 0x88);
        let len = usize::from(buf[1]);
        assert!(len <= 125);
        assert_eq!(&buf[2..4], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&buf[4..]).is_ok());
    }
}
