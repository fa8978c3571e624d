//! The WebSocket wire under the session: reading client frames from the upgraded socket and
//! writing server frames from the connection's body itself. Invariants kept here: sizes are
//! judged from a frame's header, so at most one message within [`InboundLimits::keep`] (plus
//! one read chunk) is ever held; a larger message is dropped as it streams in, or ends the
//! connection beyond `hard`; a fragmented message is bounded in time too; server frames are
//! never masked and close reasons are cut on a character boundary; a peer that stops reading
//! stops its connection's loop, leaving the hub's bounded queue to decide.
//!
//! actix-ws, which this replaces, hands every outgoing frame through a channel to the HTTP
//! dispatcher, a second task: two task wake-ups and a channel slot per delivery, plus the
//! channel's blocks in every idle connection. Here the connection's loop lives inside the
//! body ([`WsBody`]): the driver (`upgrade::Driver`, which owns the upgraded socket) polls
//! the body, the body polls the loop, and the loop writes finished frames into a buffer the
//! body hands back as one chunk. A market event therefore costs one wake-up of the
//! connection's own task and one write. Client bytes are read by the decoder ([`Inbound`])
//! straight from the socket into a small buffer that exists only while part of a frame is
//! held, not through actix-http's request payload channel and 8 KiB read buffer.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

// actix-ws's protocol types are actix-http's; the codec and frame writer come from there too.
use actix_http::ws::{OpCode, Parser};
use actix_web::body::{BodySize, MessageBody};
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures::task::AtomicWaker;
use tokio::net::TcpStream;

use super::session::{Output, SharedMarket, close_codes, closing};
use crate::hub::Coalescer;

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
    /// A message over [`InboundLimits::keep`] but within `hard`: its payload is dropped as
    /// it streams in (never buffered) and the connection carries on. Carries the size known
    /// when it was refused (the frame's declared length, or the fragments' total so far).
    TooLarge(u64),
    /// A frame or a fragmented message over [`InboundLimits::hard`]: the connection ends
    /// after saying so (close 1009). Carries the limit.
    Overflow(usize),
    /// A fragmented message not finished within [`InboundLimits::fragment_timeout`]: the
    /// connection ends (close 1008).
    FragmentTimeout,
    /// A protocol violation (bad opcode, unmasked frame, invalid UTF-8 text, …).
    Invalid(String),
}

/// How much of the client's input a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Largest message (one frame, or a fragmented message's total) that is buffered and
    /// delivered. A larger one within `hard` is dropped as it streams ([`Incoming::TooLarge`]).
    pub keep: usize,
    /// Largest message at all; beyond it the connection ends ([`Incoming::Overflow`]).
    pub hard: usize,
    /// Longest a fragmented message may stay unfinished.
    pub fragment_timeout: Duration,
}

/// Where the decoder is between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// No fragmented message is open.
    Idle,
    /// Inside a fragmented message whose parts are kept.
    Keeping { text: bool },
    /// Inside a fragmented message over `keep`: the rest of its fragments are dropped.
    Dropping,
}

/// A frame header, once all of it (with the masking key) is buffered.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Bytes of the header itself (2 to 14).
    len: usize,
    payload_len: u64,
}

/// Bytes asked of the socket per read. Client messages are small (an action is tens to
/// hundreds of bytes); a larger frame takes several reads, each appending to the buffer.
const READ_CHUNK_BYTES: usize = 2048;

/// Where an [`Inbound`] reads client bytes from.
pub enum Source {
    /// Nothing to read yet: the upgrade's response is still being prepared, and the driver
    /// attaches the socket when it takes the connection over ([`Inbound::attach`]).
    Detached,
    /// The upgraded socket, shared with the driver that writes to it (`upgrade::Driver`).
    /// Reads and writes register separate wakers with tokio, so the two do not interfere.
    Socket(Rc<TcpStream>),
    /// Chunks fed by a unit test, split wherever the test likes: how the decoder is checked
    /// against every way a stream can arrive (the integration tests read real sockets).
    #[cfg(test)]
    Chunks(actix_web::dev::Payload),
}

impl Source {
    /// Reads what the peer sent into `buf`; `Ok(0)` once it has gone.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Source::Detached => Poll::Pending,
            Source::Socket(socket) => loop {
                if let Err(error) = std::task::ready!(socket.poll_read_ready(cx)) {
                    return Poll::Ready(Err(error));
                }
                // Only now, with bytes waiting, does an idle connection hold a buffer.
                if buf.capacity() - buf.len() < READ_CHUNK_BYTES {
                    buf.reserve(READ_CHUNK_BYTES);
                }
                match socket.try_read_buf(buf) {
                    // The readiness was stale (tokio clears it): wait for the next, without
                    // keeping the buffer just reserved if it holds nothing. (tokio reports a
                    // socket readable until a read finds it empty, so this is the common way
                    // a drained connection goes idle: it would otherwise keep 2 KiB.)
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    done => return Poll::Ready(done),
                }
            },
            #[cfg(test)]
            Source::Chunks(payload) => {
                use futures::Stream;
                match Pin::new(payload).poll_next(cx) {
                    Poll::Ready(Some(Ok(bytes))) => {
                        buf.extend_from_slice(&bytes);
                        Poll::Ready(Ok(bytes.len()))
                    }
                    Poll::Ready(Some(Err(_)) | None) => Poll::Ready(Ok(0)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Decodes client frames from the socket and joins fragmented messages, holding at most
/// `limits.keep` bytes of message plus one read chunk however the client behaves.
pub struct Inbound {
    source: Source,
    buf: BytesMut,
    limits: InboundLimits,
    /// Payload bytes of the current (dropped) frame still to arrive and be thrown away.
    discard: u64,
    /// The open fragmented message; boxed, and only while one is open, so an idle connection
    /// carries a null pointer instead of its parts, length and timer (issue 17: idle
    /// WebSocket memory).
    fragment: Option<Box<Fragment>>,
    ended: bool,
}

/// A fragmented message between its first and last frame.
struct Fragment {
    /// `Keeping` or `Dropping`, never `Idle`.
    reading: Reading,
    parts: Vec<Bytes>,
    /// Payload bytes of the message so far, kept or dropped.
    message_len: u64,
    /// When the message must be finished.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Inbound {
    pub fn new(source: Source, limits: InboundLimits) -> Inbound {
        Inbound {
            source,
            buf: BytesMut::new(),
            limits,
            discard: 0,
            fragment: None,
            ended: false,
        }
    }

    /// Reads from `socket` from now on, after what the HTTP/1 dispatcher had read past the
    /// upgrade request already (`buffered`: a client may send its first message without
    /// waiting for the handshake's answer).
    pub fn attach(&mut self, socket: Rc<TcpStream>, buffered: BytesMut) {
        self.source = Source::Socket(socket);
        self.buf = buffered;
    }

    /// Changes the limits from the next frame on (a session that authenticates trades the
    /// small pre-authentication limit for the full one).
    pub fn set_limits(&mut self, limits: InboundLimits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> InboundLimits {
        self.limits
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
            if let Some(fragment) = self.fragment.as_mut()
                && fragment.deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Some(self.end(Incoming::FragmentTimeout)));
            }
            match self.source.poll_read_into(cx, &mut self.buf) {
                Poll::Ready(Ok(0) | Err(_)) => self.ended = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Stops decoding and frees what is held; the connection ends after `message`.
    fn end(&mut self, message: Incoming) -> Incoming {
        self.ended = true;
        self.buf = BytesMut::new();
        self.fragment = None;
        message
    }

    /// A fragmented message ends (finished or dropped); its timer goes with it.
    fn close_message(&mut self) {
        self.fragment = None;
    }

    /// Opens a fragmented message, or moves the open one to `reading` (its parts, length
    /// and timer stay).
    fn open_message(&mut self, reading: Reading) -> &mut Fragment {
        let timeout = self.limits.fragment_timeout;
        let fragment = self.fragment.get_or_insert_with(|| {
            Box::new(Fragment {
                reading,
                parts: Vec::new(),
                message_len: 0,
                deadline: Box::pin(tokio::time::sleep(timeout)),
            })
        });
        fragment.reading = reading;
        fragment
    }

    /// Where the decoder is between messages.
    fn reading(&self) -> Reading {
        self.fragment
            .as_ref()
            .map_or(Reading::Idle, |fragment| fragment.reading)
    }

    /// One message from what is buffered, if a whole one is there.
    fn decode(&mut self) -> Option<Incoming> {
        while !self.ended {
            if self.discard > 0 {
                let n = self.discard.min(self.buf.len() as u64);
                self.buf.advance(n as usize);
                self.discard -= n;
                if self.discard > 0 {
                    // Everything buffered was dropped; give the read chunk back.
                    self.buf = BytesMut::new();
                    return None;
                }
            }
            let Some(header) = parse_header(&self.buf) else {
                if self.buf.is_empty() {
                    // Release the read chunk: an idle connection holds no buffer (a message
                    // decoded from it may still share the allocation, until it is handled).
                    self.buf = BytesMut::new();
                }
                return None;
            };
            if let Some(message) = self.check(header) {
                return Some(message);
            }
            if self.discard > 0 || self.ended {
                continue;
            }
            if parse_metadata_ok(&self.buf).is_ok()
                && (self.buf.len() as u64) < header.len as u64 + header.payload_len
            {
                // A frame within the limits: wait for the rest of it. (A broken header goes
                // to Parser at once, which names the problem.)
                return None;
            }
            let (fin, opcode, payload) = match Parser::parse(&mut self.buf, true, usize::MAX) {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(error) => return Some(self.end(Incoming::Invalid(error.to_string()))),
            };
            let payload = payload.map(BytesMut::freeze).unwrap_or_default();
            if let Some(message) = self.frame(fin, opcode, payload) {
                return Some(message);
            }
        }
        None
    }

    /// Checks a frame from its header alone, before any of its payload is buffered: protocol
    /// rules that need no payload, then the limits. A frame to drop has its header consumed
    /// and `discard` set.
    fn check(&mut self, header: Header) -> Option<Incoming> {
        let control = header.opcode >= 0x8;
        if control {
            if header.payload_len > 125 || !header.fin {
                // Parser would buffer the whole frame first; the header already tells.
                return Some(self.end(Incoming::Invalid(format!(
                    "control frame of {} bytes{}: at most 125 bytes and never fragmented",
                    header.payload_len,
                    if header.fin { "" } else { ", fragmented" }
                ))));
            }
            return None;
        }
        let reading = self.reading();
        match (header.opcode, reading) {
            (0x0, Reading::Idle) => {
                return Some(self.end(Incoming::Invalid(
                    "continuation frame without a message to continue".into(),
                )));
            }
            (0x1 | 0x2, Reading::Keeping { .. } | Reading::Dropping) => {
                return Some(self.end(Incoming::Invalid(
                    "a new message began before the fragmented one ended".into(),
                )));
            }
            // Reserved opcodes, RSV bits and masking: Parser reports them from the header.
            _ => {}
        }
        let message_len = self.fragment.as_ref().map_or(0, |f| f.message_len);
        let total = message_len.saturating_add(header.payload_len);
        if total > self.limits.hard as u64 {
            return Some(self.end(Incoming::Overflow(self.limits.hard)));
        }
        if total <= self.limits.keep as u64 && reading != Reading::Dropping {
            return None;
        }
        // Over `keep`: drop this frame's payload as it arrives, and the rest of its message.
        if parse_metadata_ok(&self.buf).is_err() {
            // An unmasked or otherwise broken header: let Parser say which.
            return None;
        }
        self.buf.advance(header.len);
        self.discard = header.payload_len;
        let newly = reading != Reading::Dropping;
        if header.fin {
            self.close_message();
        } else {
            let fragment = self.open_message(Reading::Dropping);
            fragment.parts.clear();
            fragment.message_len = total;
        }
        newly.then_some(Incoming::TooLarge(total))
    }

    /// A whole data or control frame within the limits.
    fn frame(&mut self, fin: bool, opcode: OpCode, payload: Bytes) -> Option<Incoming> {
        match opcode {
            OpCode::Ping => Some(Incoming::Ping(payload)),
            OpCode::Pong => Some(Incoming::Pong),
            OpCode::Close => match Parser::try_parse_close_payload(&payload) {
                Ok(_) => Some(Incoming::Close),
                Err(error) => Some(self.end(Incoming::Invalid(error.to_string()))),
            },
            OpCode::Text if fin => Some(text(payload)),
            OpCode::Binary if fin => Some(Incoming::Binary(payload)),
            OpCode::Text | OpCode::Binary => {
                let fragment = self.open_message(Reading::Keeping {
                    text: opcode == OpCode::Text,
                });
                fragment.message_len = payload.len() as u64;
                fragment.parts.push(payload);
                None
            }
            OpCode::Continue => {
                // `check` let a continuation through only inside a kept message.
                let Some(fragment) = self.fragment.as_mut() else {
                    return Some(self.end(Incoming::Invalid(
                        "continuation frame without a message to continue".into(),
                    )));
                };
                fragment.message_len += payload.len() as u64;
                if !payload.is_empty() {
                    fragment.parts.push(payload);
                }
                if !fin {
                    return None;
                }
                let is_text = matches!(fragment.reading, Reading::Keeping { text: true });
                let parts = std::mem::take(&mut fragment.parts);
                self.close_message();
                let mut joined = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for part in parts {
                    joined.extend_from_slice(&part);
                }
                if !is_text {
                    return Some(Incoming::Binary(joined.freeze()));
                }
                Some(text(joined.freeze()))
            }
            OpCode::Bad => Some(self.end(Incoming::Invalid("reserved opcode".into()))),
        }
    }
}

fn text(bytes: Bytes) -> Incoming {
    match ByteString::try_from(bytes) {
        Ok(text) => Incoming::Text(text),
        Err(_) => Incoming::Invalid("text frame is not valid UTF-8".to_owned()),
    }
}

/// The header at the start of `buf`, once all of it is there (client frames are masked, so
/// a header is complete with its 4-byte masking key).
fn parse_header(buf: &[u8]) -> Option<Header> {
    let first = *buf.first()?;
    let second = *buf.get(1)?;
    let (payload_len, mut len) = match second & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        short => (u64::from(short), 2),
    };
    if second & 0x80 != 0 {
        len += 4;
    }
    (buf.len() >= len).then_some(Header {
        fin: first & 0x80 != 0,
        opcode: first & 0x0F,
        len,
        payload_len,
    })
}

/// Whether Parser would accept the header at the start of `buf` (masking, reserved bits and
/// opcode), without waiting for the payload: it checks those before the length.
fn parse_metadata_ok(buf: &[u8]) -> Result<(), ()> {
    let (first, second) = (buf.first().ok_or(())?, buf.get(1).ok_or(())?);
    let masked = second & 0x80 != 0;
    let reserved = first & 0x70 != 0;
    let known = matches!(first & 0x0F, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA);
    if masked && !reserved && known {
        Ok(())
    } else {
        Err(())
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

/// What a connection's loop and its body share (one thread, so `Cell`s). Held
/// inline in the body, which lends it to the loop on each poll ([`ConnectionLoop`]): no
/// allocation of its own (issue 17: idle WebSocket memory).
pub struct Wire {
    /// Finished frames the body has not handed to the driver yet.
    pub outbox: RefCell<BytesMut>,
    /// When the client was last heard from (any frame), for the idle timeout.
    pub last_heard: Cell<Instant>,
    /// Set while the loop is inside a session action (an order, a subscription): market data
    /// waits meanwhile, so a subscription's reply precedes the data it starts.
    pub busy: Cell<bool>,
}

impl Wire {
    pub fn new() -> Wire {
        Wire {
            outbox: RefCell::new(BytesMut::new()),
            last_heard: Cell::new(Instant::now()),
            busy: Cell::new(false),
        }
    }
}

impl Default for Wire {
    fn default() -> Wire {
        Wire::new()
    }
}

/// The connection's loop as the body runs it: a future that writes into the [`Wire`] the
/// body lends it on each poll (so the wire needs no shared pointer).
pub trait ConnectionLoop: Unpin {
    /// Runs the loop until it waits; `Ready` once it has ended.
    fn poll_loop(&mut self, cx: &mut Context<'_>, wire: &Wire) -> Poll<()>;
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
    /// Decides when to drain: at once, or at the end of a coalescing window.
    coalescer: Coalescer,
    /// A keep-alive tick was drained: the body polls the loop once, so the session arms a
    /// deadline that has come within reach (`SessionLimits::timer_horizon`).
    loop_tick: bool,
}

impl FastPath {
    pub fn new(
        market: SharedMarket,
        ping_every: Duration,
        idle_timeout: Duration,
        binary: bool,
        coalescer: Coalescer,
    ) -> FastPath {
        FastPath {
            market,
            ping_every,
            idle_timeout,
            last_ping: Instant::now(),
            binary,
            coalescer,
            loop_tick: false,
        }
    }

    /// Serves pending hub wake-ups into the outbox; `true` when the connection must end (the
    /// closing frames are in the outbox).
    ///
    /// Returns only with something in the outbox (the driver takes it and polls again)
    /// or with the queue's waker registered: a wake-up that leaves nothing to send (a
    /// keep-alive tick with no ping due, a feed heartbeat, events this session skips) goes
    /// round again, since a `Ready` from `poll_notified` registers nothing and returning then
    /// would leave the next push waking no one.
    fn poll(&mut self, cx: &mut Context<'_>, wire: &Wire) -> bool {
        let mut market = self.market.borrow_mut();
        loop {
            // A throttled session's releases go through the coalescing window like any
            // other write: while a hold runs, what the throttle has due waits for the hold's
            // end (the hold's timer wakes the loop then); otherwise the throttle's timer is
            // polled beside the queue, both registering their wakers. So a busy throttled
            // session writes no more often than an unthrottled one.
            if self.coalescer.poll_ready(market.queue(), cx).is_pending()
                && (self.coalescer.is_holding() || !market.poll_throttle_due(cx))
            {
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
                self.loop_tick = true;
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
                self.coalescer.wrote(market.queue());
                return false;
            }
        }
    }
}

/// The body of an upgraded connection, a `MessageBody` polled by the connection's driver
/// (`upgrade::Driver`), which writes each chunk it returns to the socket. It owns the
/// connection's loop (`run`), polls it whenever something the loop waits on has happened and
/// nothing is buffered, serves market data itself ([`FastPath`]), and ends after the loop has
/// returned (or the fast path closed the connection) and the last frames are out. If the
/// peer goes away, the driver drops the body, and with it the loop.
///
/// The loop is held inline (`F`, a hand-written future in the glue), so the body and the
/// loop are one allocation: the one the route makes when it boxes the body.
pub struct WsBody<F> {
    /// `None` once the loop has ended or was dropped (the fast path closed the connection).
    run: Option<F>,
    wire: Wire,
    fast: Option<FastPath>,
    done: bool,
    /// The waker the loop runs with: it records that something the loop waits on happened,
    /// so the driver's other polls (after each chunk, on write readiness) skip the loop.
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

impl<F: ConnectionLoop> WsBody<F> {
    pub fn new(wire: Wire, fast: Option<FastPath>, run: F) -> WsBody<F> {
        let wake = Arc::new(LoopWaker::default());
        // Runs once before anything can have woken it.
        wake.woken.store(true, Ordering::Relaxed);
        WsBody {
            run: Some(run),
            wire,
            fast,
            done: false,
            waker: Waker::from(Arc::clone(&wake)),
            wake,
        }
    }

    /// The connection's loop, while it runs.
    pub fn run_mut(&mut self) -> Option<&mut F> {
        self.run.as_mut()
    }
}

impl<F: ConnectionLoop> MessageBody for WsBody<F> {
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
        // driver stops asking) stops the connection too, and what waits meanwhile is
        // bounded by the hub's subscriber queue.
        if !this.done && this.wire.outbox.borrow().is_empty() {
            this.wake.task.register(cx.waker());
            if this.wake.woken.swap(false, Ordering::AcqRel)
                && let Some(run) = this.run.as_mut()
                && run
                    .poll_loop(&mut Context::from_waker(&this.waker), &this.wire)
                    .is_ready()
            {
                this.done = true;
                this.run = None;
            }
            if !this.done
                && !this.wire.busy.get()
                && let Some(fast) = this.fast.as_mut()
            {
                if fast.poll(cx, &this.wire) {
                    // Dropping the loop drops the session: it leaves the hub.
                    this.done = true;
                    this.run = None;
                } else if std::mem::take(&mut fast.loop_tick) {
                    // The loop runs on the next poll, which this asks for.
                    this.wake.wake_by_ref();
                }
            }
        }
        let mut outbox = this.wire.outbox.borrow_mut();
        if !outbox.is_empty() {
            // The whole buffer goes, not a `split()` of it: a split would leave the outbox
            // holding the buffer's allocation (and its shared header) for as long as the
            // connection lives, which for an idle connection is all the time. The next write
            // allocates a buffer sized to what it carries.
            return Poll::Ready(Some(Ok(std::mem::take(&mut *outbox).freeze())));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
