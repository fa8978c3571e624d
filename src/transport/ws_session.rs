//! The authenticated WebSocket session of PROTOCOL.md §3 as a state machine without sockets:
//! inputs are client text messages, hub deliveries, trading events and timers; outputs are the
//! text frames (each a JSON array of `T`-tagged objects) and the close the transport must send.
//! `transport::ws` is the thin actix glue around it; tests drive it directly.
//!
//! Rules kept here:
//! - Every client message gets either its effect or a specific `error`; only auth failures,
//!   auth timeout, the connection limit and a slow client end the session.
//! - One action is handled at a time and its reply is returned before any trading event is
//!   read again, so an `order_ack` always precedes the trade updates the order caused.
//! - Market data reuses the hub's encoded JSON (`Entry.json`): frames are concatenations.
//! - Order-book `seq` rises by exactly one per symbol for the life of the connection; when
//!   deltas were lost (lag) the client gets a fresh snapshot instead of a gap.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::{AuthError, AuthService, ConnectionGuard, Identity};
use crate::hub::{CloseReason, Delivery, Entry, Feed, Filter, Hub, SubscriberQueue, SymbolFilter};
use crate::market::{EventKind, SymbolId};
use crate::metrics::{Metrics, Transport};
use crate::trading::api::{
    BookUpdate, OrderError, OrderRef, OrderRequest, ReplaceRequest, TradingApi, UserEvent,
};

/// Stream-level error codes (PROTOCOL.md §3).
pub mod codes {
    pub const INVALID_SYNTAX: u32 = 400;
    pub const NOT_AUTHENTICATED: u32 = 401;
    pub const AUTH_FAILED: u32 = 402;
    pub const ALREADY_AUTHENTICATED: u32 = 403;
    pub const AUTH_TIMEOUT: u32 = 404;
    pub const SYMBOL_LIMIT: u32 = 405;
    pub const CONNECTION_LIMIT: u32 = 406;
    pub const SLOW_CLIENT: u32 = 407;
    pub const RATE_LIMITED: u32 = 408;
    pub const INTERNAL: u32 = 500;
}

/// WebSocket close codes the glue sends with [`Output::Close`].
pub mod close_codes {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
}

/// Limits of one session, from `[ws]` and `[market]` settings.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub auth_timeout: Duration,
    pub max_message_bytes: usize,
    pub actions_per_second: f64,
    pub action_burst: u32,
    /// Minimum time between two portfolio messages.
    pub portfolio_interval: Duration,
    /// Most distinct explicit symbols over all subscriptions (error 405 beyond).
    pub max_symbols: usize,
    pub queue_capacity: usize,
}

/// What a session needs from the rest of the gateway.
#[derive(Clone)]
pub struct SessionDeps {
    pub hub: Arc<Hub>,
    pub auth: Arc<AuthService>,
    pub trading: Option<Arc<dyn TradingApi>>,
    pub metrics: Arc<Metrics>,
    pub limits: SessionLimits,
}

/// What the transport must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One text frame: a JSON array (UTF-8 by construction: serde_json output or the hub's
    /// prebuilt `Entry.ws`, shared without a copy or a second UTF-8 check).
    Frame(Bytes),
    /// Send a close frame with this code and reason, then stop.
    Close { code: u16, reason: String },
}

impl Output {
    fn frame(text: String) -> Output {
        Output::Frame(Bytes::from(text))
    }

    pub fn frame_json(&self) -> Option<Value> {
        match self {
            Output::Frame(text) => serde_json::from_slice(text).ok(),
            Output::Close { .. } => None,
        }
    }
}

/// Something the session was woken for; pass it back to [`WsSession::on_wake`].
#[derive(Debug)]
pub enum Wake {
    Hub,
    UserEvent(Result<UserEvent, broadcast::error::RecvError>),
    PortfolioChanged(bool),
    PortfolioDue,
    Book(BookMessage),
    AuthDeadline,
}

/// A book update forwarded from a per-symbol broadcast; `update: None` means deltas were lost.
#[derive(Debug)]
pub struct BookMessage {
    symbol: String,
    generation: u64,
    update: Option<BookUpdate>,
}

/// A set of symbols, or all of them (`"*"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SymbolSet {
    all: bool,
    ids: BTreeSet<SymbolId>,
}

impl SymbolSet {
    fn is_empty(&self) -> bool {
        !self.all && self.ids.is_empty()
    }

    fn contains(&self, id: SymbolId) -> bool {
        self.all || self.ids.contains(&id)
    }
}

/// A [`SymbolSet`] as the JSON array of its names (`["*"]` for all), borrowed from the
/// universe rather than copied into a `Vec<String>`.
struct SymbolNames<'a> {
    set: &'a SymbolSet,
    hub: &'a Hub,
}

impl Serialize for SymbolNames<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.set.all {
            return ["*"].serialize(serializer);
        }
        let universe = self.hub.universe();
        serializer.collect_seq(self.set.ids.iter().map(|id| universe.name(*id)))
    }
}

/// The `subscription` reply: the whole subscription state after a (un)subscribe. The fields
/// are in the order a `json!` object prints its keys (sorted), which clients have seen so far.
fn subscription_frame(id: Option<&Value>, subs: &Subscriptions, hub: &Hub) -> Output {
    #[derive(Serialize)]
    struct Reply<'a> {
        #[serde(rename = "T")]
        tag: &'static str,
        bars: SymbolNames<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        news: SymbolNames<'a>,
        orderbooks: &'a BTreeSet<String>,
        portfolio: bool,
        quotes: SymbolNames<'a>,
        trade_updates: bool,
        trades: SymbolNames<'a>,
    }
    let names = |set| SymbolNames { set, hub };
    json_frame(&Reply {
        tag: "subscription",
        bars: names(&subs.bars),
        id,
        news: names(&subs.news),
        orderbooks: &subs.orderbooks,
        portfolio: subs.portfolio,
        quotes: names(&subs.quotes),
        trade_updates: subs.trade_updates,
        trades: names(&subs.trades),
    })
}

#[derive(Debug, Clone, Default)]
struct Subscriptions {
    trades: SymbolSet,
    quotes: SymbolSet,
    bars: SymbolSet,
    news: SymbolSet,
    orderbooks: BTreeSet<String>,
    trade_updates: bool,
    portfolio: bool,
}

/// The market-data part of the subscriptions: what [`MarketState::deliver`] filters by.
#[derive(Debug, Clone, Default)]
struct MarketSubs {
    trades: SymbolSet,
    quotes: SymbolSet,
    bars: SymbolSet,
    news: SymbolSet,
}

impl MarketSubs {
    fn of(subs: &Subscriptions) -> MarketSubs {
        MarketSubs {
            trades: subs.trades.clone(),
            quotes: subs.quotes.clone(),
            bars: subs.bars.clone(),
            news: subs.news.clone(),
        }
    }

    /// Whether an entry matches (the hub's filter is a superset).
    fn wants(&self, entry: &Entry) -> bool {
        match (entry.kind, entry.symbol) {
            (EventKind::Trade, Some(id)) => self.trades.contains(id),
            (EventKind::Quote, Some(id)) => self.quotes.contains(id),
            (EventKind::Bar, Some(id)) => self.bars.contains(id),
            (EventKind::Status, Some(id)) => {
                self.trades.contains(id) || self.quotes.contains(id) || self.bars.contains(id)
            }
            (EventKind::Status, None) => {
                !(self.trades.is_empty() && self.quotes.is_empty() && self.bars.is_empty())
            }
            (EventKind::News, _) => {
                self.news.all
                    || (!self.news.is_empty()
                        && (entry.tagged.is_empty()
                            || entry.tagged.iter().any(|id| self.news.contains(*id))))
            }
            _ => false,
        }
    }
}

/// What delivering market data needs of a session: its hub queue, the last sequence sent per
/// feed, and what it subscribed to. It is shared (`Rc<RefCell>`, one connection's thread) so
/// the transport can serve a hub wake-up straight from the response body, without running the
/// session's loop; the session borrows it only between awaits, never across one.
pub struct MarketState {
    queue: Arc<SubscriberQueue>,
    spare: VecDeque<Delivery>,
    last_seq: [u64; 2],
    wanted: MarketSubs,
    metrics: Arc<Metrics>,
    /// A keep-alive tick was drained since [`MarketState::deliver_into`] last said so.
    heartbeat: bool,
}

pub type SharedMarket = Rc<RefCell<MarketState>>;

impl MarketState {
    pub fn queue(&self) -> &Arc<SubscriberQueue> {
        &self.queue
    }

    /// Turns queued hub deliveries (plus any `extra`) into at most one data frame, pushed on
    /// `out`, and returns the hub's close if one was queued. One wanted event goes out as the
    /// hub's prebuilt frame (`Entry.ws`, shared, no copy).
    pub fn deliver(&mut self, extra: Vec<Delivery>, out: &mut Vec<Output>) -> Option<CloseReason> {
        let (frame, close) = self.collect(extra);
        match frame {
            Some(Pending::One(entry)) => out.push(Output::Frame(entry.ws.clone())),
            Some(Pending::Many(buffer)) => out.push(Output::Frame(buffer.freeze())),
            None => {}
        }
        close
    }

    /// [`MarketState::deliver`] for the transport's fast path: the frame's payload is handed
    /// to `frame` (which copies it behind a frame header), so a single event costs no
    /// reference count of its own.
    /// Also says whether a keep-alive tick was among what was drained.
    pub fn deliver_into(&mut self, frame: impl FnOnce(&[u8])) -> (Option<CloseReason>, bool) {
        let (pending, close) = self.collect(Vec::new());
        match pending {
            Some(Pending::One(entry)) => frame(&entry.ws),
            Some(Pending::Many(buffer)) => frame(&buffer),
            None => {}
        }
        (close, std::mem::take(&mut self.heartbeat))
    }

    /// Drains the queue (plus `extra`): the wanted events, as one event or one coalesced
    /// array, and the hub's close if one was queued. The drained deque is reused, so
    /// steady-state delivery allocates nothing per subscriber beyond a batch buffer.
    fn collect(&mut self, extra: Vec<Delivery>) -> (Option<Pending>, Option<CloseReason>) {
        let mut items = std::mem::take(&mut self.spare);
        self.queue.drain_into(&mut items);
        items.extend(extra);
        let mut close = None;
        // Replays and live items of two feeds may interleave: order events by feed and
        // sequence (a stable sort, linear on the usual already-sorted batch), controls last.
        let slice = items.make_contiguous();
        if slice.len() > 1 {
            slice.sort_by_key(|item| match item {
                Delivery::Event(entry) => (feed_slot(entry.feed), entry.seq),
                _ => (usize::MAX, 0),
            });
        }
        let mut pending: Option<Pending> = None;
        let mut delivered = 0u64;
        for item in items.drain(..) {
            let entry = match item {
                Delivery::Event(entry) => entry,
                // A heartbeat writes nothing here; the transport's fast path pings when it
                // sees one (the keep-alive sweep pushes one per ping interval).
                Delivery::Heartbeat => {
                    self.heartbeat = true;
                    continue;
                }
                Delivery::Close(reason) => {
                    close = Some(reason);
                    continue;
                }
            };
            let slot = feed_slot(entry.feed);
            // Sequence 0 is a notice outside every log (a cluster status): never a duplicate.
            if entry.seq != 0 {
                if entry.seq <= self.last_seq[slot] {
                    continue;
                }
                self.last_seq[slot] = entry.seq;
            }
            if !self.wanted.wants(&entry) {
                continue;
            }
            delivered += 1;
            pending = Some(match pending {
                None => Pending::One(entry),
                Some(Pending::One(first)) => {
                    // `first.ws` is `[json]`: its opening starts the batch.
                    let mut buffer =
                        BytesMut::with_capacity(2 * (first.ws.len() + entry.json.len()));
                    buffer.put_slice(&first.ws[..first.ws.len() - 1]);
                    buffer.put_u8(b',');
                    buffer.put_slice(&entry.json);
                    Pending::Many(buffer)
                }
                Some(Pending::Many(mut buffer)) => {
                    buffer.put_u8(b',');
                    buffer.put_slice(&entry.json);
                    Pending::Many(buffer)
                }
            });
        }
        self.spare = items;
        if let Some(Pending::Many(buffer)) = pending.as_mut() {
            buffer.put_u8(b']');
        }
        if pending.is_some() {
            self.metrics.delivered(Transport::WebSocket, delivered);
        }
        (pending, close)
    }
}

/// The data frame a drain produced.
enum Pending {
    One(Arc<Entry>),
    Many(BytesMut),
}

/// What a session sends when the hub closes its queue: the last frame, then the close code
/// and reason.
pub fn closing(reason: CloseReason) -> (Output, u16, &'static str) {
    match reason {
        CloseReason::SlowClient => (
            error_frame(
                None,
                codes::SLOW_CLIENT,
                "slow client: could not keep up; reconnect and resubscribe",
            ),
            close_codes::POLICY,
            "slow client",
        ),
        CloseReason::Shutdown => {
            let status = json!({
                "T": "s", "S": "*", "sc": "shutdown",
                "sm": "server restarting; reconnect", "t": chrono::Utc::now(),
            });
            (
                Output::frame(format!("[{status}]")),
                close_codes::RESTART,
                "server restarting",
            )
        }
        CloseReason::Reset => {
            let status = json!({
                "T": "s", "S": "*", "sc": "reset",
                "sm": "the feed was reset; reconnect and subscribe again for a fresh snapshot",
                "t": chrono::Utc::now(),
            });
            (
                Output::frame(format!("[{status}]")),
                close_codes::RESTART,
                "feed reset",
            )
        }
    }
}

/// A token bucket over client actions.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill_per_second: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            refill_per_second: per_second.max(0.001),
            last: Instant::now(),
        }
    }

    fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct BookStream {
    generation: u64,
    forwarder: JoinHandle<()>,
}

/// One client connection's state.
pub struct WsSession {
    deps: SessionDeps,
    identity: Option<Identity>,
    guard: Option<ConnectionGuard>,
    auth_deadline: Instant,
    queue: Arc<SubscriberQueue>,
    /// Market-data delivery state, shared with the transport's fast path.
    market: SharedMarket,
    /// Whether the transport serves [`Wake::Hub`] itself (see [`WsSession::market`]).
    hub_in_transport: bool,
    registered: [bool; 2],
    subs: Subscriptions,
    bucket: TokenBucket,
    user_events: Option<broadcast::Receiver<UserEvent>>,
    portfolio_changes: Option<watch::Receiver<u64>>,
    portfolio_dirty: bool,
    portfolio_last_sent: Option<Instant>,
    books: BTreeMap<String, BookStream>,
    book_seq: HashMap<String, u64>,
    next_generation: u64,
    /// Created with the first order-book subscription: an idle market-data connection does
    /// not carry a channel buffer it never uses.
    book_channel: Option<(mpsc::Sender<BookMessage>, mpsc::Receiver<BookMessage>)>,
    closed: bool,
}

/// `{"T":..., ...fields of inner}` without building an intermediate `Value`.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "T")]
    tag: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

fn tagged<T: Serialize>(tag: &'static str, inner: &T) -> String {
    serde_json::to_string(&Tagged { tag, inner }).unwrap_or_else(|e| {
        tracing::error!(error = %e, tag, "could not encode a server message");
        format!(r#"{{"T":"error","code":500,"msg":"internal error encoding {tag}"}}"#)
    })
}

fn array(objects: &[String]) -> String {
    let mut out = String::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (index, object) in objects.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(object);
    }
    out.push(']');
    out
}

fn error_object(id: Option<&Value>, code: u32, msg: &str) -> String {
    let mut object = json!({"T": "error", "code": code, "msg": msg});
    if let (Some(id), Some(map)) = (id, object.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    object.to_string()
}

/// The `id` of a message the session will not process, so the client still learns which
/// request was dropped. Only the id is deserialized; oversize or malformed messages give none.
fn request_id(text: &str, max_message_bytes: usize) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    if text.len() > max_message_bytes {
        return None;
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id?;
    (id.is_string() || id.is_number()).then_some(id)
}

fn error_frame(id: Option<&Value>, code: u32, msg: &str) -> Output {
    Output::frame(format!("[{}]", error_object(id, code, msg)))
}

/// The greeting every connection gets first; constant, so it is not encoded per connection.
const CONNECTED_FRAME: &[u8] = br#"[{"T":"success","msg":"connected"}]"#;

/// `[{"T":"success","id":...,"msg":...}]`, the keys in the order a `json!` object prints them
/// (sorted), written straight into the frame instead of through a `Value` and `format!`.
fn success_frame_with_id(id: Option<&Value>, msg: &str) -> Output {
    #[derive(Serialize)]
    struct Success<'a> {
        #[serde(rename = "T")]
        tag: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        msg: &'a str,
    }
    json_frame(&Success {
        tag: "success",
        id,
        msg,
    })
}

/// `[object]` for a reply whose encoding cannot fail (strings, numbers, bools, `Value`s).
fn json_frame<T: Serialize>(object: &T) -> Output {
    let mut frame = Vec::with_capacity(128);
    frame.push(b'[');
    if let Err(error) = serde_json::to_writer(&mut frame, object) {
        tracing::error!(%error, "could not encode a server message");
        return error_frame(None, codes::INTERNAL, "internal error encoding a reply");
    }
    frame.push(b']');
    Output::Frame(Bytes::from(frame))
}

fn decimal_levels(levels: &[(rust_decimal::Decimal, rust_decimal::Decimal)]) -> Value {
    Value::Array(
        levels
            .iter()
            .map(|(price, size)| json!([price.to_string(), size.to_string()]))
            .collect(),
    )
}

/// A client message that could not be acted on: its reply code and message.
struct Refusal {
    code: u32,
    msg: String,
}

fn refuse(code: u32, msg: impl Into<String>) -> Refusal {
    Refusal {
        code,
        msg: msg.into(),
    }
}

/// Keys every action accepts besides its own.
const COMMON_KEYS: [&str; 2] = ["action", "id"];

fn check_keys(map: &Map<String, Value>, action: &str, allowed: &[&str]) -> Result<(), Refusal> {
    if let Some(key) = map
        .keys()
        .find(|k| !COMMON_KEYS.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
    {
        return Err(refuse(
            codes::INVALID_SYNTAX,
            format!(
                "unknown field {key:?} for action {action:?}; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A decimal field of an order: a JSON string or number, kept as text for the engine.
fn decimal_text(data: &Map<String, Value>, key: &str) -> Result<Option<String>, OrderError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(OrderError::invalid(format!(
            "{key} must be a decimal string such as \"10\" or \"126.50\""
        ))),
    }
}

fn string_field(data: &Map<String, Value>, key: &str) -> Result<Option<String>, OrderError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(OrderError::invalid(format!("{key} must be a string"))),
    }
}

fn data_object<'a>(
    map: &'a Map<String, Value>,
    allowed: &[&str],
    what: &str,
) -> Result<&'a Map<String, Value>, OrderError> {
    let data = match map.get("data") {
        Some(Value::Object(data)) => data,
        Some(_) => return Err(OrderError::invalid("data must be an object")),
        None => return Err(OrderError::invalid(format!("data is required for {what}"))),
    };
    if let Some(key) = data.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(OrderError::invalid(format!(
            "unknown field {key:?} in {what} data; allowed: {}",
            allowed.join(", ")
        )));
    }
    Ok(data)
}

fn parse_order_request(map: &Map<String, Value>) -> Result<OrderRequest, OrderError> {
    const KEYS: [&str; 8] = [
        "symbol",
        "qty",
        "side",
        "type",
        "time_in_force",
        "limit_price",
        "stop_price",
        "client_order_id",
    ];
    let data = data_object(map, &KEYS, "order")?;
    Ok(OrderRequest {
        symbol: string_field(data, "symbol")?,
        qty: decimal_text(data, "qty")?,
        side: string_field(data, "side")?,
        order_type: string_field(data, "type")?,
        time_in_force: string_field(data, "time_in_force")?,
        limit_price: decimal_text(data, "limit_price")?,
        stop_price: decimal_text(data, "stop_price")?,
        client_order_id: string_field(data, "client_order_id")?,
    })
}

fn parse_replace_request(map: &Map<String, Value>) -> Result<ReplaceRequest, OrderError> {
    const KEYS: [&str; 5] = [
        "qty",
        "time_in_force",
        "limit_price",
        "stop_price",
        "client_order_id",
    ];
    let data = data_object(map, &KEYS, "replace")?;
    Ok(ReplaceRequest {
        qty: decimal_text(data, "qty")?,
        time_in_force: string_field(data, "time_in_force")?,
        limit_price: decimal_text(data, "limit_price")?,
        stop_price: decimal_text(data, "stop_price")?,
        client_order_id: string_field(data, "client_order_id")?,
    })
}

fn parse_target(map: &Map<String, Value>) -> Result<OrderRef, OrderError> {
    let order_id = string_field(map, "order_id")?;
    let client_order_id = string_field(map, "client_order_id")?;
    match (order_id, client_order_id) {
        (Some(id), None) if !id.is_empty() => Ok(OrderRef::Id(id)),
        (None, Some(id)) if !id.is_empty() => Ok(OrderRef::ClientOrderId(id)),
        (Some(_), Some(_)) => Err(OrderError::invalid(
            "give either order_id or client_order_id, not both",
        )),
        _ => Err(OrderError::invalid(
            "order_id or client_order_id is required",
        )),
    }
}

async fn recv_user_event(
    receiver: &mut Option<broadcast::Receiver<UserEvent>>,
) -> Result<UserEvent, broadcast::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn portfolio_changed(receiver: &mut Option<watch::Receiver<u64>>) -> bool {
    match receiver {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn recv_book(
    channel: &mut Option<(mpsc::Sender<BookMessage>, mpsc::Receiver<BookMessage>)>,
) -> Option<BookMessage> {
    match channel {
        Some((_, receiver)) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl WsSession {
    pub fn new(deps: SessionDeps) -> WsSession {
        let queue = SubscriberQueue::new(deps.limits.queue_capacity, Transport::WebSocket);
        let bucket = TokenBucket::new(deps.limits.actions_per_second, deps.limits.action_burst);
        let market = Rc::new(RefCell::new(MarketState {
            queue: Arc::clone(&queue),
            spare: VecDeque::new(),
            last_seq: [0; 2],
            wanted: MarketSubs::default(),
            metrics: Arc::clone(&deps.metrics),
            heartbeat: false,
        }));
        WsSession {
            auth_deadline: Instant::now() + deps.limits.auth_timeout,
            deps,
            identity: None,
            guard: None,
            market,
            queue,
            hub_in_transport: false,
            registered: [false; 2],
            subs: Subscriptions::default(),
            bucket,
            user_events: None,
            portfolio_changes: None,
            portfolio_dirty: false,
            portfolio_last_sent: None,
            books: BTreeMap::new(),
            book_seq: HashMap::new(),
            next_generation: 0,
            book_channel: None,
            closed: false,
        }
    }

    /// The queue the hub (and its keep-alive sweep) pushes into; wake-ups surface as
    /// [`Wake::Hub`].
    pub fn queue(&self) -> &Arc<SubscriberQueue> {
        &self.queue
    }

    /// Hands market-data delivery to the transport: from now on [`WsSession::wait`] no longer
    /// watches the hub queue, and the caller drains it through the returned state (see
    /// `ws_wire::WsBody`), pinging on those wake-ups as the loop otherwise would.
    pub fn market(&mut self) -> SharedMarket {
        self.hub_in_transport = true;
        Rc::clone(&self.market)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.as_str())
    }

    /// The greeting, then (when the upgrade carried a credential) its outcome.
    pub fn start(&mut self, upgrade_auth: Option<Result<Identity, AuthError>>) -> Vec<Output> {
        let mut out = vec![Output::Frame(Bytes::from_static(CONNECTED_FRAME))];
        if let Some(result) = upgrade_auth {
            self.finish_auth(None, result, &mut out);
        }
        out
    }

    fn close(&mut self, out: &mut Vec<Output>, code: u16, reason: &str) {
        self.closed = true;
        out.push(Output::Close {
            code,
            reason: reason.to_owned(),
        });
    }

    fn finish_auth(
        &mut self,
        id: Option<&Value>,
        result: Result<Identity, AuthError>,
        out: &mut Vec<Output>,
    ) {
        match result {
            Ok(identity) => match self.deps.auth.acquire_connection(&identity.user) {
                Ok(guard) => {
                    tracing::debug!(user = %identity.user, "websocket authenticated");
                    self.guard = Some(guard);
                    self.identity = Some(identity);
                    out.push(success_frame_with_id(id, "authenticated"));
                }
                Err(error) => {
                    out.push(error_frame(id, codes::CONNECTION_LIMIT, &error.to_string()));
                    self.close(out, close_codes::POLICY, "connection limit exceeded");
                }
            },
            Err(error) => {
                out.push(error_frame(
                    id,
                    codes::AUTH_FAILED,
                    &format!("auth failed: {error}"),
                ));
                self.close(out, close_codes::POLICY, "auth failed");
            }
        }
    }

    /// The server is stopping. The connection hears the shutdown token before the hub's
    /// close reaches its queue, so the session flushes what is queued and, when it receives
    /// market data, ends with the shutdown status itself; then it closes with 1012.
    pub fn on_shutdown(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        if self.registered.iter().any(|registered| *registered) {
            self.deliver(vec![Delivery::Close(CloseReason::Shutdown)], &mut out);
        } else {
            self.close(&mut out, close_codes::RESTART, "server restarting");
        }
        out
    }

    /// A frame too large to handle (`len` bytes) that was skipped.
    pub fn on_oversize(&mut self, len: usize) -> Vec<Output> {
        vec![error_frame(
            None,
            codes::INVALID_SYNTAX,
            &format!(
                "message too large: {len} bytes, at most {} allowed",
                self.deps.limits.max_message_bytes
            ),
        )]
    }

    /// A frame beyond the hard frame limit: the rest of it cannot be skipped, so the session
    /// ends (close 1009) after saying why.
    pub fn on_frame_overflow(&mut self, max_frame_bytes: usize) -> Vec<Output> {
        let mut out = vec![error_frame(
            None,
            codes::INVALID_SYNTAX,
            &format!("message too large: frames over {max_frame_bytes} bytes end the connection"),
        )];
        self.close(&mut out, close_codes::TOO_BIG, "message too large");
        out
    }

    /// A binary frame: the protocol is JSON text only.
    pub fn on_binary(&mut self) -> Vec<Output> {
        vec![error_frame(
            None,
            codes::INVALID_SYNTAX,
            "binary frames are not supported: send JSON text frames",
        )]
    }

    /// One client text message.
    pub async fn on_text(&mut self, text: &str) -> Vec<Output> {
        if self.closed {
            return Vec::new();
        }
        if !self.bucket.try_take() {
            return vec![error_frame(
                request_id(text, self.deps.limits.max_message_bytes).as_ref(),
                codes::RATE_LIMITED,
                "rate limited: too many actions; slow down",
            )];
        }
        if text.len() > self.deps.limits.max_message_bytes {
            return self.on_oversize(text.len());
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                return vec![error_frame(
                    None,
                    codes::INVALID_SYNTAX,
                    &format!("invalid JSON: {error}"),
                )];
            }
        };
        let Value::Object(map) = value else {
            return vec![error_frame(
                None,
                codes::INVALID_SYNTAX,
                "a message must be a JSON object with an \"action\"",
            )];
        };
        let id = map.get("id").cloned();
        if let Some(bad) = &id
            && !(bad.is_string() || bad.is_number())
        {
            return vec![error_frame(
                None,
                codes::INVALID_SYNTAX,
                "id must be a string or a number",
            )];
        }
        let id = id.as_ref();
        let action = match map.get("action") {
            Some(Value::String(action)) => action.clone(),
            Some(_) => {
                return vec![error_frame(
                    id,
                    codes::INVALID_SYNTAX,
                    "action must be a string",
                )];
            }
            None => {
                return vec![error_frame(id, codes::INVALID_SYNTAX, "action is required")];
            }
        };
        let mut out = Vec::new();
        match action.as_str() {
            "auth" => self.auth_action(id, &map, &mut out),
            "subscribe" | "unsubscribe" | "resync" | "order" | "cancel" | "replace"
                if self.identity.is_none() =>
            {
                out.push(error_frame(
                    id,
                    codes::NOT_AUTHENTICATED,
                    "not authenticated: send {\"action\":\"auth\",\"token\":...} first",
                ));
            }
            "subscribe" => self.subscribe_action(id, &map, true, &mut out).await,
            "unsubscribe" => self.subscribe_action(id, &map, false, &mut out).await,
            "resync" => self.resync_action(id, &map, &mut out),
            "order" | "cancel" | "replace" => self.order_action(&action, id, &map, &mut out).await,
            other => out.push(error_frame(
                id,
                codes::INVALID_SYNTAX,
                &format!(
                    "unknown action {other:?}; use auth, subscribe, unsubscribe, resync, order, cancel or replace"
                ),
            )),
        }
        out
    }

    fn auth_action(&mut self, id: Option<&Value>, map: &Map<String, Value>, out: &mut Vec<Output>) {
        if self.identity.is_some() {
            out.push(error_frame(
                id,
                codes::ALREADY_AUTHENTICATED,
                "already authenticated",
            ));
            return;
        }
        if let Err(refusal) = check_keys(map, "auth", &["token"]) {
            out.push(error_frame(id, refusal.code, &refusal.msg));
            return;
        }
        let token = match map.get("token") {
            Some(Value::String(token)) => token,
            Some(_) => {
                out.push(error_frame(
                    id,
                    codes::INVALID_SYNTAX,
                    "token must be a string: a bearer JWT or a ticket from POST /v1/auth/ticket",
                ));
                return;
            }
            None => {
                out.push(error_frame(
                    id,
                    codes::INVALID_SYNTAX,
                    "token is required: a bearer JWT or a ticket from POST /v1/auth/ticket",
                ));
                return;
            }
        };
        let result = self.deps.auth.verify_token_or_ticket(token);
        self.finish_auth(id, result, out);
    }

    fn parse_symbol_list(
        &self,
        value: &Value,
        key: &str,
        allow_all: bool,
    ) -> Result<SymbolSet, Refusal> {
        let Value::Array(items) = value else {
            return Err(refuse(
                codes::INVALID_SYNTAX,
                format!("{key} must be an array of symbols"),
            ));
        };
        let mut set = SymbolSet::default();
        let mut unknown = Vec::new();
        for item in items {
            let Value::String(name) = item else {
                return Err(refuse(
                    codes::INVALID_SYNTAX,
                    format!("{key} must contain only symbol strings"),
                ));
            };
            let name = name.trim().to_ascii_uppercase();
            if name == "*" {
                if !allow_all {
                    return Err(refuse(
                        codes::INVALID_SYNTAX,
                        format!("{key} does not accept \"*\": name the symbols"),
                    ));
                }
                set.all = true;
                continue;
            }
            match self.deps.hub.universe().id(&name) {
                Some(id) => {
                    set.ids.insert(id);
                }
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            return Err(refuse(
                codes::INVALID_SYNTAX,
                format!("unknown symbol(s) in {key}: {}", unknown.join(", ")),
            ));
        }
        Ok(set)
    }

    /// Builds the subscription set after a subscribe (`add`) or unsubscribe, or refuses it.
    fn next_subscriptions(
        &self,
        map: &Map<String, Value>,
        add: bool,
    ) -> Result<Subscriptions, Refusal> {
        const KEYS: [&str; 7] = [
            "trades",
            "quotes",
            "bars",
            "news",
            "orderbooks",
            "trade_updates",
            "portfolio",
        ];
        let action = if add { "subscribe" } else { "unsubscribe" };
        check_keys(map, action, &KEYS)?;
        let mut next = self.subs.clone();
        for key in ["trades", "quotes", "bars", "news"] {
            let Some(value) = map.get(key) else { continue };
            let change = self.parse_symbol_list(value, key, true)?;
            let target = match key {
                "trades" => &mut next.trades,
                "quotes" => &mut next.quotes,
                "bars" => &mut next.bars,
                _ => &mut next.news,
            };
            if add {
                target.all |= change.all;
                target.ids.extend(change.ids);
            } else if change.all {
                *target = SymbolSet::default();
            } else {
                target.ids.retain(|id| !change.ids.contains(id));
            }
        }
        if let Some(value) = map.get("orderbooks") {
            let change = self.parse_symbol_list(value, "orderbooks", false)?;
            let names = change
                .ids
                .iter()
                .map(|id| self.deps.hub.universe().name(*id).to_owned());
            if add {
                next.orderbooks.extend(names);
            } else {
                for name in names {
                    next.orderbooks.remove(&name);
                }
            }
        }
        for key in ["trade_updates", "portfolio"] {
            let Some(value) = map.get(key) else { continue };
            let Value::Bool(flag) = value else {
                return Err(refuse(
                    codes::INVALID_SYNTAX,
                    format!("{key} must be true or false"),
                ));
            };
            let target = if key == "trade_updates" {
                &mut next.trade_updates
            } else {
                &mut next.portfolio
            };
            // In an unsubscribe, `true` means "stop this stream"; `false` changes nothing.
            if *flag {
                *target = add;
            }
        }
        let mut explicit: BTreeSet<SymbolId> = BTreeSet::new();
        for set in [&next.trades, &next.quotes, &next.bars, &next.news] {
            explicit.extend(set.ids.iter().copied());
        }
        explicit.extend(
            next.orderbooks
                .iter()
                .filter_map(|name| self.deps.hub.universe().id(name)),
        );
        if explicit.len() > self.deps.limits.max_symbols {
            return Err(refuse(
                codes::SYMBOL_LIMIT,
                format!(
                    "symbol limit exceeded: {} symbols requested, at most {}",
                    explicit.len(),
                    self.deps.limits.max_symbols
                ),
            ));
        }
        let wants_trading = next.trade_updates || next.portfolio || !next.orderbooks.is_empty();
        if wants_trading && self.deps.trading.is_none() {
            return Err(refuse(
                codes::INTERNAL,
                "trading streams are not available on this server",
            ));
        }
        Ok(next)
    }

    async fn subscribe_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        add: bool,
        out: &mut Vec<Output>,
    ) {
        let next = match self.next_subscriptions(map, add) {
            Ok(next) => next,
            Err(refusal) => {
                out.push(error_frame(id, refusal.code, &refusal.msg));
                return;
            }
        };
        let previous = std::mem::replace(&mut self.subs, next);
        self.market.borrow_mut().wanted = MarketSubs::of(&self.subs);
        let mut followups = Vec::new();

        // Market and news registrations with the hub.
        let market_changed = previous.trades != self.subs.trades
            || previous.quotes != self.subs.quotes
            || previous.bars != self.subs.bars;
        if market_changed {
            let filter = self.market_filter();
            self.reregister(Feed::Market, filter, &mut followups);
        }
        if previous.news != self.subs.news {
            let filter = (!self.subs.news.is_empty()).then(|| Filter {
                symbols: symbol_filter(&self.subs.news),
                kinds: EventKind::News.bit(),
            });
            self.reregister(Feed::News, filter, &mut followups);
        }

        let user = self.user().unwrap_or_default().to_owned();
        if let Some(trading) = self.deps.trading.clone() {
            if self.subs.trade_updates && !previous.trade_updates {
                self.user_events = Some(trading.user_events(&user));
            } else if !self.subs.trade_updates {
                self.user_events = None;
            }
            if self.subs.portfolio && !previous.portfolio {
                let mut changes = trading.portfolio_changes(&user);
                changes.borrow_and_update();
                self.portfolio_changes = Some(changes);
                self.portfolio_dirty = false;
                self.push_portfolio(&trading, &user, &mut followups).await;
            } else if !self.subs.portfolio {
                self.portfolio_changes = None;
                self.portfolio_dirty = false;
            }
            let removed: Vec<String> = self
                .books
                .keys()
                .filter(|s| !self.subs.orderbooks.contains(*s))
                .cloned()
                .collect();
            for symbol in removed {
                if let Some(stream) = self.books.remove(&symbol) {
                    stream.forwarder.abort();
                }
            }
            let added: Vec<String> = self
                .subs
                .orderbooks
                .iter()
                .filter(|s| !self.books.contains_key(*s))
                .cloned()
                .collect();
            for symbol in added {
                self.open_book(&trading, &symbol, &mut followups);
            }
        }

        out.push(subscription_frame(id, &self.subs, &self.deps.hub));
        out.extend(followups);
    }

    fn market_filter(&self) -> Option<Filter> {
        let sets = [
            (&self.subs.trades, EventKind::Trade),
            (&self.subs.quotes, EventKind::Quote),
            (&self.subs.bars, EventKind::Bar),
        ];
        let mut kinds = 0u8;
        let mut union = SymbolSet::default();
        for (set, kind) in sets {
            if !set.is_empty() {
                kinds |= kind.bit();
                union.all |= set.all;
                union.ids.extend(set.ids.iter().copied());
            }
        }
        (kinds != 0).then(|| Filter {
            symbols: symbol_filter(&union),
            kinds,
        })
    }

    /// Replaces this session's registration on `feed` without a gap or a duplicate: the new
    /// registration resumes from the feed's cursor taken before the old one was removed, and
    /// everything queued is merged in sequence order (see `deliver`).
    fn reregister(&mut self, feed: Feed, filter: Option<Filter>, out: &mut Vec<Output>) {
        let slot = feed_slot(feed);
        let cursor = self.deps.hub.cursor(feed);
        let was_registered = self.registered[slot];
        if was_registered {
            self.deps.hub.unsubscribe(feed, &self.queue);
            self.registered[slot] = false;
        }
        let Some(filter) = filter else {
            return;
        };
        let resume = (cursor.seq > 0).then_some(cursor);
        let subscribed = self
            .deps
            .hub
            .subscribe(feed, filter, resume, false, &self.queue);
        self.registered[slot] = true;
        if !was_registered {
            // A fresh registration on this feed: only events after now.
            self.market.borrow_mut().last_seq[slot] = cursor.seq;
        }
        let replay: Vec<Delivery> = subscribed.replay.into_iter().map(Delivery::Event).collect();
        self.deliver(replay, out);
    }

    /// Turns queued hub deliveries (plus any `extra`) into at most one data frame (see
    /// [`MarketState::deliver`]); a close from the hub ends the session.
    fn deliver(&mut self, extra: Vec<Delivery>, out: &mut Vec<Output>) {
        let close = self.market.borrow_mut().deliver(extra, out);
        if let Some(reason) = close {
            let (frame, code, why) = closing(reason);
            out.push(frame);
            self.close(out, code, why);
        }
    }

    async fn push_portfolio(
        &mut self,
        trading: &Arc<dyn TradingApi>,
        user: &str,
        out: &mut Vec<Output>,
    ) {
        self.portfolio_last_sent = Some(Instant::now());
        match trading.portfolio(user).await {
            Ok(portfolio) => out.push(Output::frame(format!(
                "[{}]",
                tagged("portfolio", &portfolio)
            ))),
            Err(error) => {
                tracing::error!(error = %error, "portfolio unavailable");
                out.push(error_frame(None, codes::INTERNAL, "portfolio unavailable"));
            }
        }
    }

    fn open_book(&mut self, trading: &Arc<dyn TradingApi>, symbol: &str, out: &mut Vec<Output>) {
        if let Some(old) = self.books.remove(symbol) {
            old.forwarder.abort();
        }
        let (snapshot, mut receiver) = match trading.book(symbol) {
            Ok(pair) => pair,
            Err(error) => {
                self.subs.orderbooks.remove(symbol);
                out.push(error_frame(None, codes::INVALID_SYNTAX, &error.message));
                return;
            }
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        let sender = self
            .book_channel
            .get_or_insert_with(|| mpsc::channel(1024))
            .0
            .clone();
        let name = symbol.to_owned();
        let forwarder = tokio::spawn(async move {
            loop {
                let update = match receiver.recv().await {
                    Ok(update) => Some(update),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let lost = update.is_none();
                let message = BookMessage {
                    symbol: name.clone(),
                    generation,
                    update,
                };
                if sender.send(message).await.is_err() || lost {
                    return;
                }
            }
        });
        self.books.insert(
            symbol.to_owned(),
            BookStream {
                generation,
                forwarder,
            },
        );
        out.push(Output::frame(format!("[{}]", self.book_object(&snapshot))));
    }

    fn book_object(&mut self, update: &BookUpdate) -> String {
        let seq = self.book_seq.entry(update.symbol.clone()).or_insert(0);
        *seq += 1;
        let mut object = json!({
            "T": "o",
            "S": update.symbol,
            "seq": *seq,
            "b": decimal_levels(&update.bids),
            "a": decimal_levels(&update.asks),
            "t": update.t,
        });
        if update.snapshot
            && let Some(map) = object.as_object_mut()
        {
            map.insert("snapshot".into(), Value::Bool(true));
        }
        object.to_string()
    }

    fn resync_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        if let Err(refusal) = check_keys(map, "resync", &["orderbooks"]) {
            out.push(error_frame(id, refusal.code, &refusal.msg));
            return;
        }
        let Some(value) = map.get("orderbooks") else {
            out.push(error_frame(
                id,
                codes::INVALID_SYNTAX,
                "orderbooks is required",
            ));
            return;
        };
        let set = match self.parse_symbol_list(value, "orderbooks", false) {
            Ok(set) => set,
            Err(refusal) => {
                out.push(error_frame(id, refusal.code, &refusal.msg));
                return;
            }
        };
        let names: Vec<String> = set
            .ids
            .iter()
            .map(|i| self.deps.hub.universe().name(*i).to_owned())
            .collect();
        // An empty list would produce no frame at all, leaving a client waiting for a reply.
        if names.is_empty() {
            out.push(error_frame(
                id,
                codes::INVALID_SYNTAX,
                "orderbooks must name at least one subscribed order book",
            ));
            return;
        }
        if let Some(missing) = names.iter().find(|n| !self.books.contains_key(*n)) {
            out.push(error_frame(
                id,
                codes::INVALID_SYNTAX,
                &format!("not subscribed to the {missing} order book"),
            ));
            return;
        }
        let Some(trading) = self.deps.trading.clone() else {
            return;
        };
        for name in names {
            self.open_book(&trading, &name, out);
        }
    }

    async fn order_action(
        &mut self,
        action: &str,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        let allowed: &[&str] = match action {
            "order" => &["data"],
            "cancel" => &["order_id", "client_order_id"],
            _ => &["order_id", "client_order_id", "data"],
        };
        if let Err(refusal) = check_keys(map, action, allowed) {
            out.push(error_frame(id, OrderError::INVALID, &refusal.msg));
            return;
        }
        let Some(trading) = self.deps.trading.clone() else {
            out.push(error_frame(
                id,
                codes::INTERNAL,
                "trading is not available on this server",
            ));
            return;
        };
        let user = self.user().unwrap_or_default().to_owned();
        let result = match action {
            "order" => match parse_order_request(map) {
                Ok(request) => trading.submit(&user, request).await,
                Err(error) => Err(error),
            },
            "cancel" => match parse_target(map) {
                Ok(target) => trading.cancel(&user, target).await,
                Err(error) => Err(error),
            },
            _ => match parse_target(map).and_then(|t| Ok((t, parse_replace_request(map)?))) {
                Ok((target, patch)) => trading.replace(&user, target, patch).await,
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(order) => {
                let mut reply = json!({"T": "order_ack", "order": order});
                if let (Some(id), Some(object)) = (id, reply.as_object_mut()) {
                    object.insert("id".into(), id.clone());
                }
                out.push(Output::frame(format!("[{reply}]")));
            }
            Err(error) => out.push(error_frame(id, error.code, &error.message)),
        }
    }

    /// When a throttled portfolio message is due.
    fn portfolio_due(&self) -> Option<Instant> {
        if !self.portfolio_dirty {
            return None;
        }
        Some(self.portfolio_last_sent.map_or_else(Instant::now, |last| {
            last + self.deps.limits.portfolio_interval
        }))
    }

    /// Waits for the next thing the session must react to besides client messages.
    /// Cancel-safe: the glue selects on it together with the socket.
    pub async fn wait(&mut self) -> Wake {
        let auth_deadline = self.identity.is_none().then_some(self.auth_deadline);
        let portfolio_due = self.portfolio_due();
        // Biased: the hub's queue (market data, the hot path) is checked first, without the
        // random start that costs a thread-local RNG draw per wake-up.
        tokio::select! {
            biased;
            _ = self.queue.notified(), if !self.hub_in_transport => Wake::Hub,
            event = recv_user_event(&mut self.user_events) => Wake::UserEvent(event),
            ok = portfolio_changed(&mut self.portfolio_changes) => Wake::PortfolioChanged(ok),
            Some(message) = recv_book(&mut self.book_channel) => Wake::Book(message),
            _ = sleep_until_opt(portfolio_due) => Wake::PortfolioDue,
            _ = sleep_until_opt(auth_deadline) => Wake::AuthDeadline,
        }
    }

    /// Reacts to what [`WsSession::wait`] returned.
    pub async fn on_wake(&mut self, wake: Wake) -> Vec<Output> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        match wake {
            Wake::Hub => self.deliver(Vec::new(), &mut out),
            Wake::AuthDeadline => {
                if self.identity.is_none() {
                    out.push(error_frame(
                        None,
                        codes::AUTH_TIMEOUT,
                        "auth timeout: no valid auth message in time",
                    ));
                    self.close(&mut out, close_codes::POLICY, "auth timeout");
                }
            }
            Wake::UserEvent(first) => self.on_user_events(first, &mut out),
            Wake::PortfolioChanged(ok) => {
                if ok {
                    self.portfolio_dirty = true;
                } else {
                    self.portfolio_changes = None;
                }
            }
            Wake::PortfolioDue => {
                self.portfolio_dirty = false;
                if let Some(trading) = self.deps.trading.clone()
                    && self.subs.portfolio
                {
                    let user = self.user().unwrap_or_default().to_owned();
                    self.push_portfolio(&trading, &user, &mut out).await;
                }
            }
            Wake::Book(first) => self.on_book_messages(first, &mut out),
        }
        out
    }

    fn on_user_events(
        &mut self,
        first: Result<UserEvent, broadcast::error::RecvError>,
        out: &mut Vec<Output>,
    ) {
        let mut objects = Vec::new();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(UserEvent::TradeUpdate(update)) => {
                    objects.push(tagged("trade_update", update.as_ref()));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if !objects.is_empty() {
                        out.push(Output::frame(array(&objects)));
                    }
                    out.push(error_frame(
                        None,
                        codes::SLOW_CLIENT,
                        &format!(
                            "slow client: {missed} trade updates were dropped; reconnect and read GET /v1/orders"
                        ),
                    ));
                    self.close(out, close_codes::POLICY, "slow client");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.user_events = None;
                    break;
                }
            }
            if objects.len() < 256
                && let Some(receiver) = &mut self.user_events
            {
                next = match receiver.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                };
            }
        }
        if !objects.is_empty() {
            out.push(Output::frame(array(&objects)));
        }
    }

    fn on_book_messages(&mut self, first: BookMessage, out: &mut Vec<Output>) {
        let mut objects = Vec::new();
        let mut lagged = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let current = self
                .books
                .get(&message.symbol)
                .is_some_and(|b| b.generation == message.generation);
            if current {
                match &message.update {
                    Some(update) => {
                        let object = self.book_object(update);
                        objects.push(object);
                    }
                    None => lagged.push(message.symbol.clone()),
                }
            }
            if objects.len() < 256 {
                next = self
                    .book_channel
                    .as_mut()
                    .and_then(|(_, receiver)| receiver.try_recv().ok());
            }
        }
        if !objects.is_empty() {
            out.push(Output::frame(array(&objects)));
        }
        if let Some(trading) = self.deps.trading.clone() {
            for symbol in lagged {
                // Deltas were lost: a fresh snapshot replaces the gap.
                self.open_book(&trading, &symbol, out);
            }
        }
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        self.queue.mark_gone();
        for feed in [Feed::Market, Feed::News] {
            if self.registered[feed_slot(feed)] {
                self.deps.hub.unsubscribe(feed, &self.queue);
            }
        }
        for stream in self.books.values() {
            stream.forwarder.abort();
        }
    }
}

fn feed_slot(feed: Feed) -> usize {
    match feed {
        Feed::News => 1,
        _ => 0,
    }
}

fn symbol_filter(set: &SymbolSet) -> SymbolFilter {
    if set.all {
        SymbolFilter::All
    } else {
        SymbolFilter::from_ids(set.ids.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{MarketEvent, SymbolUniverse, Trade};
    use crate::settings::AuthSettings;
    use crate::trading::api::{
        Order, OrderQuery, OrderStatus, OrderType, Portfolio, Side, TimeInForce, TradeEvent,
        TradeUpdate,
    };
    use chrono::Utc;
    use futures::future::BoxFuture;
    use parking_lot::Mutex;
    use rust_decimal::Decimal;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A stand-in exchange: acks every order with a `new` trade update, serves books from
    /// broadcasts the test drives, and counts portfolio reads.
    struct FakeTrading {
        events: broadcast::Sender<UserEvent>,
        changes: watch::Sender<u64>,
        books: Mutex<HashMap<String, broadcast::Sender<BookUpdate>>>,
        portfolio_reads: AtomicU64,
    }

    impl FakeTrading {
        fn new() -> Arc<FakeTrading> {
            Arc::new(FakeTrading {
                events: broadcast::channel(64).0,
                changes: watch::channel(0).0,
                books: Mutex::new(HashMap::new()),
                portfolio_reads: AtomicU64::new(0),
            })
        }

        fn book_sender(&self, symbol: &str) -> broadcast::Sender<BookUpdate> {
            self.books
                .lock()
                .entry(symbol.to_owned())
                .or_insert_with(|| broadcast::channel(4).0)
                .clone()
        }
    }

    fn order(request: &OrderRequest) -> Order {
        let now = Utc::now();
        Order {
            id: "o-1".into(),
            client_order_id: request.client_order_id.clone().unwrap_or_default(),
            symbol: request.symbol.clone().unwrap_or_default(),
            side: Side::Buy,
            order_type: OrderType::Market,
            time_in_force: TimeInForce::Day,
            qty: Decimal::from(10),
            filled_qty: Decimal::ZERO,
            filled_avg_price: None,
            limit_price: None,
            stop_price: None,
            status: OrderStatus::New,
            created_at: now,
            updated_at: now,
            submitted_at: now,
            filled_at: None,
            canceled_at: None,
            expired_at: None,
            replaced_by: None,
            replaces: None,
            commission: Decimal::ZERO,
        }
    }

    impl TradingApi for FakeTrading {
        fn submit(
            &self,
            _user: &str,
            request: OrderRequest,
        ) -> BoxFuture<'static, Result<Order, OrderError>> {
            if request.qty.as_deref() == Some("0") {
                return Box::pin(async { Err(OrderError::invalid("qty must be positive")) });
            }
            let order = order(&request);
            let _ = self
                .events
                .send(UserEvent::TradeUpdate(Box::new(TradeUpdate {
                    event: TradeEvent::New,
                    execution_id: None,
                    price: None,
                    qty: None,
                    position_qty: None,
                    timestamp: Utc::now(),
                    order: order.clone(),
                })));
            Box::pin(async move { Ok(order) })
        }

        fn cancel(&self, _: &str, _: OrderRef) -> BoxFuture<'static, Result<Order, OrderError>> {
            Box::pin(async { Err(OrderError::new(OrderError::NOT_FOUND, "order not found")) })
        }

        fn replace(
            &self,
            _: &str,
            _: OrderRef,
            _: ReplaceRequest,
        ) -> BoxFuture<'static, Result<Order, OrderError>> {
            Box::pin(async { Err(OrderError::new(OrderError::NOT_FOUND, "order not found")) })
        }

        fn portfolio(&self, _: &str) -> BoxFuture<'static, Result<Portfolio, OrderError>> {
            let reads = self.portfolio_reads.fetch_add(1, Ordering::Relaxed) + 1;
            Box::pin(async move {
                Ok(Portfolio {
                    cash: Decimal::from(reads),
                    equity: Decimal::from(reads),
                    long_market_value: Decimal::ZERO,
                    short_market_value: Decimal::ZERO,
                    buying_power: Decimal::from(reads),
                    realized_pl: Decimal::ZERO,
                    t: Utc::now(),
                    positions: Vec::new(),
                })
            })
        }

        fn orders(
            &self,
            _: &str,
            _: OrderQuery,
        ) -> BoxFuture<'static, Result<Vec<Order>, OrderError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn user_events(&self, _: &str) -> broadcast::Receiver<UserEvent> {
            self.events.subscribe()
        }

        fn portfolio_changes(&self, _: &str) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }

        fn book(
            &self,
            symbol: &str,
        ) -> Result<(BookUpdate, broadcast::Receiver<BookUpdate>), OrderError> {
            let sender = self.book_sender(symbol);
            let snapshot = BookUpdate {
                symbol: symbol.to_owned(),
                snapshot: true,
                bids: vec![(Decimal::new(10000, 2), Decimal::from(300))],
                asks: vec![(Decimal::new(10002, 2), Decimal::from(200))],
                t: Utc::now(),
            };
            Ok((snapshot, sender.subscribe()))
        }
    }

    fn session_with(trading: Option<Arc<FakeTrading>>) -> (WsSession, Arc<Hub>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT"]),
            crate::hub::HubSettings::default(),
            Arc::clone(&metrics),
            7,
        ));
        let auth = AuthService::new(&AuthSettings {
            hs256_secret: "unit-test-secret-of-at-least-32-bytes".into(),
            ..AuthSettings::default()
        })
        .expect("auth");
        let deps = SessionDeps {
            hub: Arc::clone(&hub),
            auth: Arc::new(auth),
            trading: trading.map(|t| t as Arc<dyn TradingApi>),
            metrics,
            limits: SessionLimits {
                auth_timeout: Duration::from_secs(5),
                max_message_bytes: 4096,
                actions_per_second: 100.0,
                action_burst: 100,
                portfolio_interval: Duration::from_secs(1),
                max_symbols: 10,
                queue_capacity: 64,
            },
        };
        (WsSession::new(deps), hub)
    }

    fn authenticated(trading: Option<Arc<FakeTrading>>) -> (WsSession, Arc<Hub>) {
        let (mut session, hub) = session_with(trading);
        let out = session.start(Some(Ok(Identity {
            user: "alice".into(),
        })));
        assert_eq!(out.len(), 2);
        (session, hub)
    }

    fn objects(outputs: &[Output]) -> Vec<Value> {
        outputs
            .iter()
            .filter_map(Output::frame_json)
            .flat_map(|frame| frame.as_array().cloned().unwrap_or_default())
            .collect()
    }

    async fn next_wake_objects(session: &mut WsSession) -> Vec<Value> {
        let wake = tokio::time::timeout(Duration::from_secs(5), session.wait())
            .await
            .expect("a wake-up");
        objects(&session.on_wake(wake).await)
    }

    fn trade(id: u64) -> MarketEvent {
        MarketEvent::Trade(Trade {
            symbol: "AAPL".into(),
            id,
            venue: "V".into(),
            price: 100.0,
            size: 1.0,
            time: chrono::DateTime::from_timestamp(1_700_000_000 + id as i64, 0)
                .unwrap_or_default(),
            conditions: vec![],
        })
    }

    #[tokio::test]
    async fn the_order_ack_goes_out_before_the_trade_update_the_order_caused() {
        let trading = FakeTrading::new();
        let (mut session, _hub) = authenticated(Some(Arc::clone(&trading)));
        session
            .on_text(r#"{"action":"subscribe","trade_updates":true}"#)
            .await;
        let out = session
            .on_text(r#"{"action":"order","id":"r1","data":{"symbol":"AAPL","qty":10,"side":"buy","type":"market","time_in_force":"day"}}"#)
            .await;
        let acks = objects(&out);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0]["T"], "order_ack");
        assert_eq!(acks[0]["id"], "r1");
        assert_eq!(acks[0]["order"]["qty"], "10");
        let updates = next_wake_objects(&mut session).await;
        assert_eq!(updates[0]["T"], "trade_update");
        assert_eq!(updates[0]["event"], "new");

        let out = session
            .on_text(r#"{"action":"order","id":"r2","data":{"symbol":"AAPL","qty":"0"}}"#)
            .await;
        let error = &objects(&out)[0];
        assert_eq!(error["code"], OrderError::INVALID);
        assert_eq!(error["id"], "r2");
        let out = session
            .on_text(r#"{"action":"order","data":{"symbol":"AAPL","qty":"1","colour":"red"}}"#)
            .await;
        assert!(
            objects(&out)[0]["msg"]
                .as_str()
                .unwrap_or_default()
                .contains("colour")
        );
        let out = session
            .on_text(r#"{"action":"cancel","id":"c","order_id":"nope"}"#)
            .await;
        assert_eq!(objects(&out)[0]["code"], OrderError::NOT_FOUND);
    }

    #[tokio::test]
    async fn book_seq_rises_by_one_and_lost_deltas_are_replaced_by_a_snapshot() {
        let trading = FakeTrading::new();
        let (mut session, _hub) = authenticated(Some(Arc::clone(&trading)));
        let out = session
            .on_text(r#"{"action":"subscribe","orderbooks":["AAPL"]}"#)
            .await;
        let all = objects(&out);
        assert_eq!(all[0]["T"], "subscription");
        assert_eq!(all[1]["T"], "o");
        assert_eq!(all[1]["seq"], 1);
        assert_eq!(all[1]["snapshot"], true);
        assert_eq!(all[1]["b"], json!([["100.00", "300"]]));

        let sender = trading.book_sender("AAPL");
        let delta = |price: i64| BookUpdate {
            symbol: "AAPL".into(),
            snapshot: false,
            bids: vec![(Decimal::new(price, 2), Decimal::ZERO)],
            asks: vec![],
            t: Utc::now(),
        };
        sender.send(delta(10000)).expect("a receiver");
        let got = next_wake_objects(&mut session).await;
        assert_eq!(got[0]["seq"], 2);
        assert!(got[0].get("snapshot").is_none());

        // More deltas than the broadcast holds, before the forwarder runs: it lags.
        for price in 0..10 {
            sender.send(delta(9000 + price)).expect("a receiver");
        }
        let mut seqs = Vec::new();
        let mut snapshot_seen = false;
        while !snapshot_seen {
            for object in next_wake_objects(&mut session).await {
                seqs.push(object["seq"].as_u64().expect("seq"));
                snapshot_seen |= object["snapshot"] == true;
            }
        }
        let expected: Vec<u64> = (3..3 + seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "seq stays contiguous across the resnapshot");

        // A resync also sends a snapshot with the next seq.
        let out = session
            .on_text(r#"{"action":"resync","orderbooks":["AAPL"]}"#)
            .await;
        let object = &objects(&out)[0];
        assert_eq!(object["snapshot"], true);
        assert_eq!(object["seq"], seqs.last().copied().unwrap_or(0) + 1);
        let out = session
            .on_text(r#"{"action":"resync","orderbooks":["MSFT"]}"#)
            .await;
        assert_eq!(objects(&out)[0]["code"], codes::INVALID_SYNTAX);
    }

    #[tokio::test(start_paused = true)]
    async fn portfolio_messages_are_throttled_to_the_configured_rate() {
        let trading = FakeTrading::new();
        let (mut session, _hub) = authenticated(Some(Arc::clone(&trading)));
        let out = session
            .on_text(r#"{"action":"subscribe","portfolio":true}"#)
            .await;
        let all = objects(&out);
        assert_eq!(all[1]["T"], "portfolio");
        let first_sent = Instant::now();
        for n in 1..=5 {
            trading.changes.send_replace(n);
        }
        // The change marks it dirty; the message itself waits for the interval.
        assert!(next_wake_objects(&mut session).await.is_empty());
        let got = next_wake_objects(&mut session).await;
        assert_eq!(got[0]["T"], "portfolio");
        assert!(first_sent.elapsed() >= Duration::from_secs(1));
        assert_eq!(trading.portfolio_reads.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_never_authenticates_times_out_with_404() {
        let (mut session, _hub) = session_with(None);
        session.start(None);
        let wake = session.wait().await;
        let out = session.on_wake(wake).await;
        assert_eq!(objects(&out)[0]["code"], codes::AUTH_TIMEOUT);
        assert!(matches!(out.last(), Some(Output::Close { .. })));
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn changing_subscriptions_neither_loses_nor_repeats_market_data() {
        let (mut session, hub) = authenticated(None);
        session
            .on_text(r#"{"action":"subscribe","trades":["AAPL"]}"#)
            .await;
        hub.publish_event(trade(1)).expect("valid");
        hub.publish_event(trade(2)).expect("valid");
        // Re-registration happens with those two still queued.
        let out = session
            .on_text(r#"{"action":"subscribe","quotes":["MSFT"]}"#)
            .await;
        let mut ids: Vec<u64> = objects(&out)
            .iter()
            .filter(|o| o["T"] == "t")
            .filter_map(|o| o["i"].as_u64())
            .collect();
        hub.publish_event(trade(3)).expect("valid");
        while ids.len() < 3 {
            ids.extend(
                next_wake_objects(&mut session)
                    .await
                    .iter()
                    .filter_map(|o| o["i"].as_u64()),
            );
        }
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_client_whose_queue_overflows_gets_407_and_the_session_ends() {
        let (mut session, hub) = authenticated(None);
        session
            .on_text(r#"{"action":"subscribe","trades":["*"],"bars":["*"]}"#)
            .await;
        // Bars are never conflated, so a queue that is not drained overflows.
        for minute in 0..100i64 {
            hub.publish_event(MarketEvent::Bar(crate::market::Bar {
                symbol: if minute % 2 == 0 { "AAPL" } else { "MSFT" }.into(),
                open: 1.0,
                high: 1.0,
                low: 1.0,
                close: 1.0,
                volume: 1.0,
                trade_count: 1,
                vwap: 1.0,
                time: chrono::DateTime::from_timestamp(1_700_000_000 + minute * 60, 0)
                    .unwrap_or_default(),
            }))
            .expect("valid bar");
        }
        let wake = session.wait().await;
        let out = session.on_wake(wake).await;
        assert_eq!(
            objects(&out).last().map(|o| o["code"].clone()),
            Some(json!(407))
        );
        assert!(
            matches!(out.last(), Some(Output::Close { code, .. }) if *code == close_codes::POLICY)
        );
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn trading_streams_without_an_engine_are_refused_with_500() {
        let (mut session, _hub) = authenticated(None);
        let out = session
            .on_text(r#"{"action":"subscribe","portfolio":true}"#)
            .await;
        assert_eq!(objects(&out)[0]["code"], codes::INTERNAL);
    }

    /// The replies written without `json!` are byte for byte what the `json!` objects printed.
    #[test]
    fn replies_match_their_json_object_encoding() {
        let (_, hub) = session_with(None);
        let old_names = |set: &SymbolSet| -> Vec<String> {
            if set.all {
                vec!["*".into()]
            } else {
                set.ids
                    .iter()
                    .map(|id| hub.universe().name(*id).to_owned())
                    .collect()
            }
        };
        let frame_text = |output: Output| match output {
            Output::Frame(bytes) => String::from_utf8(bytes.to_vec()).expect("utf-8"),
            Output::Close { .. } => panic!("expected a frame"),
        };
        let aapl = hub.universe().id("AAPL").expect("AAPL");
        let msft = hub.universe().id("MSFT").expect("MSFT");
        let mut subs = Subscriptions::default();
        let mut states = vec![subs.clone()];
        subs.trades.ids.insert(aapl);
        states.push(subs.clone());
        subs.quotes.ids.extend([aapl, msft]);
        subs.news.all = true;
        subs.bars.all = true;
        subs.bars.ids.insert(msft);
        subs.orderbooks
            .extend(["MSFT".to_owned(), "AAPL".to_owned()]);
        subs.trade_updates = true;
        states.push(subs.clone());
        subs.portfolio = true;
        states.push(subs);
        let ids = [
            None,
            Some(json!(7)),
            Some(json!(-1.5)),
            Some(json!("req \"1\" \u{e9}\n")),
        ];
        assert_eq!(
            frame_text(Output::Frame(Bytes::from_static(CONNECTED_FRAME))),
            format!("[{}]", json!({"T": "success", "msg": "connected"}))
        );
        for id in &ids {
            let mut old = json!({"T": "success", "msg": "authenticated"});
            if let (Some(id), Some(map)) = (id, old.as_object_mut()) {
                map.insert("id".into(), id.clone());
            }
            assert_eq!(
                frame_text(success_frame_with_id(id.as_ref(), "authenticated")),
                format!("[{old}]")
            );
            for subs in &states {
                let mut old = json!({
                    "T": "subscription",
                    "trades": old_names(&subs.trades),
                    "quotes": old_names(&subs.quotes),
                    "bars": old_names(&subs.bars),
                    "news": old_names(&subs.news),
                    "orderbooks": subs.orderbooks.iter().collect::<Vec<_>>(),
                    "trade_updates": subs.trade_updates,
                    "portfolio": subs.portfolio,
                });
                if let (Some(id), Some(object)) = (id, old.as_object_mut()) {
                    object.insert("id".into(), id.clone());
                }
                assert_eq!(
                    frame_text(subscription_frame(id.as_ref(), subs, &hub)),
                    format!("[{old}]")
                );
            }
        }
    }
}
