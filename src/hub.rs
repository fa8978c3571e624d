//! The hub: per-feed sequenced logs with a bounded replay window, latest-value snapshots, and
//! fan-out into bounded per-subscriber queues.
//!
//! Invariants this module keeps:
//! - Each event is encoded exactly once, at publish: the SSE frame is built then, and the JSON
//!   object used by WebSocket frames is a zero-copy slice of it. Subscribers share the bytes.
//! - Publishing never waits on a subscriber. Queues are bounded; when one is full its price
//!   data is conflated (only the latest trade and quote per symbol are kept), and if that does
//!   not free room the subscriber is closed with [`CloseReason::SlowClient`] (code 407).
//! - Subscribing collects the replay and registers the queue under the feed's lock, so a
//!   resuming client sees every event after its cursor exactly once, then live events.
//! - Sequence numbers rise by exactly one per event per feed; a cursor is `<epoch>-<seq>`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::market::{
    Bar, EventKind, InvalidEvent, MarketEvent, SymbolId, SymbolUniverse, validate_event,
};
use crate::metrics::{Metrics, Transport};

/// The public feeds, each with its own sequence and replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    Market,
    News,
    Alerts,
}

impl Feed {
    pub const ALL: [Feed; 3] = [Feed::Market, Feed::News, Feed::Alerts];

    fn index(self) -> usize {
        match self {
            Feed::Market => 0,
            Feed::News => 1,
            Feed::Alerts => 2,
        }
    }

    pub fn of(kind: EventKind) -> Feed {
        match kind {
            EventKind::Trade | EventKind::Quote | EventKind::Bar | EventKind::Status => {
                Feed::Market
            }
            EventKind::News => Feed::News,
            EventKind::Alert => Feed::Alerts,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feed::Market => "market",
            Feed::News => "news",
            Feed::Alerts => "alerts",
        }
    }
}

/// A position in a feed's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Cursor, ()> {
        let (epoch, seq) = text.trim().split_once('-').ok_or(())?;
        Ok(Cursor {
            epoch: epoch.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// One published event, encoded once and shared by every subscriber.
#[derive(Debug)]
pub struct Entry {
    pub feed: Feed,
    pub seq: u64,
    pub kind: EventKind,
    /// The symbol of a market event; `None` for `*` statuses, news and alerts.
    pub symbol: Option<SymbolId>,
    /// Symbols a news item is tagged with.
    pub tagged: Box<[SymbolId]>,
    /// The complete SSE frame: `id:`, `event:`, `data:` and the blank line.
    pub sse: Bytes,
    /// The JSON object alone (a slice of `sse`), for WebSocket frames and snapshots.
    pub json: Bytes,
    /// The single-event WebSocket text frame `[<json>]`, built in the same allocation as
    /// `sse`, so a connection with one pending event sends it without copying or encoding.
    pub ws: Bytes,
}

/// Which symbols a subscription wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolFilter {
    All,
    Some(Box<[u64]>),
}

impl SymbolFilter {
    pub fn from_ids(ids: impl IntoIterator<Item = SymbolId>) -> SymbolFilter {
        // Sized to the highest id asked for, not to MAX_SYMBOLS: every subscription holds one
        // of these, and a 512-byte bitmap per connection was a tenth of its memory.
        let mut bits: Vec<u64> = Vec::new();
        for id in ids {
            let word = usize::from(id) / 64;
            if word >= bits.len() {
                // Exact, so `into_boxed_slice` below has nothing to shrink (no reallocation).
                bits.reserve_exact(word + 1 - bits.len());
                bits.resize(word + 1, 0);
            }
            bits[word] |= 1 << (id % 64);
        }
        SymbolFilter::Some(bits.into_boxed_slice())
    }

    pub fn contains(&self, id: SymbolId) -> bool {
        match self {
            SymbolFilter::All => true,
            SymbolFilter::Some(bits) => bits
                .get(usize::from(id) / 64)
                .is_some_and(|word| word & (1 << (id % 64)) != 0),
        }
    }

    pub fn ids(&self, universe: &SymbolUniverse) -> Vec<SymbolId> {
        (0..universe.len() as SymbolId)
            .filter(|id| self.contains(*id))
            .collect()
    }
}

/// What a subscriber receives from a feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub symbols: SymbolFilter,
    /// Bit mask of [`EventKind::bit`]; statuses are always delivered on the market feed.
    pub kinds: u8,
}

impl Filter {
    pub fn everything() -> Filter {
        Filter {
            symbols: SymbolFilter::All,
            kinds: u8::MAX,
        }
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        if entry.kind != EventKind::Status && self.kinds & entry.kind.bit() == 0 {
            return false;
        }
        match (&self.symbols, entry.symbol) {
            (SymbolFilter::All, _) => true,
            (filter, Some(id)) => filter.contains(id),
            (filter, None) => {
                // News with no tags goes to everyone; tagged news to subscribers of any tag.
                entry.tagged.is_empty() || entry.tagged.iter().any(|id| filter.contains(*id))
            }
        }
    }
}

/// Why a subscriber's queue was closed by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client could not keep up even after conflation (error code 407).
    SlowClient,
    /// The server is shutting down; clients should reconnect and resume.
    Shutdown,
    /// The feed's log started afresh (cluster mode: Redis lost the stream, or this node
    /// missed events the stream no longer holds). Clients reconnect with their cursor and get
    /// an explicit reset with a fresh snapshot.
    Reset,
}

/// One item in a subscriber's queue.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Entry>),
    /// Time for a keep-alive (SSE comment or WebSocket ping), from the shared sweep.
    Heartbeat,
    /// The last item: write the matching final message and end the connection.
    Close(CloseReason),
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    closed: bool,
}

/// A bounded queue owned by one client connection; the hub pushes, the connection drains.
#[derive(Debug)]
pub struct SubscriberQueue {
    state: Mutex<QueueState>,
    /// Set by every push, cleared when `notified` returns: a wake-up that arrives while the
    /// connection is busy is kept, like a `Notify` permit.
    pending: AtomicBool,
    /// The one connection task draining this queue. Cheaper than `Notify` per delivery: no
    /// waiter list and no lock, only an atomic swap of the registered waker.
    waker: AtomicWaker,
    capacity: usize,
    /// Set when the connection is gone, so the hub drops the registration lazily.
    gone: AtomicBool,
    transport: Transport,
    /// Which tick of the shared sweeps visits this queue (see [`SWEEP_SLICES`]).
    slice: u8,
}

/// The shared heartbeat and keep-alive sweeps visit every connection once per interval, but
/// in this many ticks, each taking the queues of one slice: a large population is not all
/// written to in one burst (100,000 idle connections would otherwise be 100,000 writes in a
/// row, delaying live data on every other connection by as long), and the feed lock is held
/// for a sixteenth of the pushes. Each queue keeps its slice for life, so it still gets
/// exactly one heartbeat per interval.
pub const SWEEP_SLICES: u8 = 16;

/// Hands out slices round-robin, so they stay even however connections come and go.
static NEXT_SLICE: AtomicUsize = AtomicUsize::new(0);

impl SubscriberQueue {
    pub fn new(capacity: usize, transport: Transport) -> Arc<SubscriberQueue> {
        Arc::new(SubscriberQueue {
            state: Mutex::new(QueueState::default()),
            pending: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity: capacity.max(2),
            gone: AtomicBool::new(false),
            transport,
            slice: (NEXT_SLICE.fetch_add(1, Ordering::Relaxed) % usize::from(SWEEP_SLICES)) as u8,
        })
    }

    /// The sweep slice this queue belongs to.
    pub fn slice(&self) -> u8 {
        self.slice
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Waits until something was pushed since the last drain. Meant for the one task that
    /// drains the queue (a second concurrent waiter would not be woken).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    /// The poll form of [`SubscriberQueue::notified`], for connections that are themselves a
    /// hand-written stream.
    pub fn poll_notified(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A push between the check above and the registration must not be lost.
        if self.pending.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Wakes the draining task, once per batch: while a wake-up is pending, further pushes
    /// need none (the task drains everything queued when it runs).
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Moves every queued item into `out` (which the caller reuses, so steady-state draining
    /// does not allocate).
    pub fn drain_into(&self, out: &mut VecDeque<Delivery>) {
        let mut state = self.state.lock();
        std::mem::swap(&mut state.items, out);
    }

    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the connection as gone; the hub forgets it on its next pass.
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Pushes an event, conflating or closing when full. Never blocks beyond a short lock.
    fn push_event(&self, entry: &Arc<Entry>, metrics: &Metrics) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        if state.items.len() >= self.capacity {
            let removed = conflate(&mut state.items);
            metrics
                .conflated
                .fetch_add(removed as u64, Ordering::Relaxed);
            if state.items.len() >= self.capacity {
                let dropped = state.items.len() as u64;
                state.items.clear();
                state
                    .items
                    .push_back(Delivery::Close(CloseReason::SlowClient));
                state.closed = true;
                drop(state);
                metrics.dropped.fetch_add(dropped, Ordering::Relaxed);
                metrics
                    .slow_client_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.mark_gone();
                self.wake();
                return;
            }
        }
        state.items.push_back(Delivery::Event(Arc::clone(entry)));
        drop(state);
        self.wake();
    }

    /// Pushes a control item (heartbeat only when idle; close always).
    /// A keep-alive tick: pushed even behind queued data, since the connection reads its
    /// clock only when it drains one.
    pub fn push_keepalive(&self) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        state.items.push_back(Delivery::Heartbeat);
        drop(state);
        self.wake();
    }

    pub fn push_control(&self, delivery: Delivery) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        match delivery {
            Delivery::Heartbeat if !state.items.is_empty() => return,
            Delivery::Close(_) => state.closed = true,
            _ => {}
        }
        state.items.push_back(delivery);
        drop(state);
        self.wake();
    }
}

/// Keeps only the newest trade and the newest quote per symbol; everything else stays in order.
/// Returns how many items were removed.
fn conflate(items: &mut VecDeque<Delivery>) -> usize {
    let mut seen = vec![0u64; crate::market::MAX_SYMBOLS * 2 / 64];
    let mut keep = vec![true; items.len()];
    for (index, item) in items.iter().enumerate().rev() {
        if let Delivery::Event(entry) = item
            && let Some(symbol) = entry.symbol
        {
            let slot = match entry.kind {
                EventKind::Trade => usize::from(symbol) * 2,
                EventKind::Quote => usize::from(symbol) * 2 + 1,
                _ => continue,
            };
            let (word, bit) = (slot / 64, 1u64 << (slot % 64));
            if seen[word] & bit != 0 {
                keep[index] = false;
            } else {
                seen[word] |= bit;
            }
        }
    }
    let before = items.len();
    let mut index = 0;
    items.retain(|_| {
        let kept = keep[index];
        index += 1;
        kept
    });
    before - items.len()
}

struct Registration {
    queue: Arc<SubscriberQueue>,
    filter: Filter,
    /// The queue's sweep slice, kept here so a sweep tick passes over the other slices'
    /// registrations without reaching into their queues (a cache miss each).
    slice: u8,
}

struct FeedState {
    next_seq: u64,
    window: VecDeque<Arc<Entry>>,
    subscribers: Vec<Registration>,
}

/// Latest values per symbol, for snapshots and per-symbol time checks.
struct LatestState {
    trade: Vec<Option<Arc<Entry>>>,
    quote: Vec<Option<Arc<Entry>>>,
    bar: Vec<Option<Arc<Entry>>>,
    last_time: Vec<[Option<DateTime<Utc>>; 3]>,
    bars: Vec<VecDeque<Bar>>,
}

/// Limits of the hub, from settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub replay_window: usize,
    pub subscriber_queue_capacity: usize,
    pub heartbeat_interval: Duration,
    pub bar_history: usize,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            replay_window: 10_000,
            subscriber_queue_capacity: 1024,
            heartbeat_interval: Duration::from_secs(15),
            bar_history: 1440,
        }
    }
}

/// Why a resume could not continue from the client's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The cursor is from an earlier (or another node's) log.
    EpochChanged,
    /// The cursor is older than the retained window.
    CursorTooOld,
    /// The cursor is ahead of the log (it was never issued by this log).
    CursorAhead,
}

impl ResetReason {
    pub fn message(self) -> &'static str {
        match self {
            ResetReason::EpochChanged => "cursor is from another epoch; fresh snapshot follows",
            ResetReason::CursorTooOld => {
                "cursor is older than the replay window; fresh snapshot follows"
            }
            ResetReason::CursorAhead => "cursor is ahead of the feed; fresh snapshot follows",
        }
    }
}

/// Current state handed to a new subscriber: what to send before live events.
#[derive(Debug)]
pub struct Subscribed {
    /// Events after the client's cursor, in order (empty on a fresh connect or a reset).
    pub replay: Vec<Arc<Entry>>,
    /// Set when the client's cursor could not be honoured.
    pub reset: Option<ResetReason>,
    /// Latest values (market feed) or recent items (news, alerts) matching the filter; filled
    /// on a fresh connect with `want_snapshot` and on every reset.
    pub snapshot: Option<Vec<Arc<Entry>>>,
    /// The cursor of the newest event in the feed when the subscription was made.
    pub cursor: Cursor,
}

/// Accepted event, with its position.
#[derive(Debug, Clone)]
pub struct Published {
    pub entry: Arc<Entry>,
}

/// Why the hub refused an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error("could not encode event: {0}")]
    Encode(String),
    /// Cluster mode: the shared log did not take the event.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterPublishError),
}

impl PublishError {
    /// The metric label of a refusal.
    pub fn reason_label(&self) -> &'static str {
        match self {
            PublishError::Invalid(invalid) => invalid.reason_label(),
            PublishError::Encode(_) => "encode",
            PublishError::Cluster(error) => error.reason_label(),
        }
    }
}

/// The narrow boundary sources publish through: the local [`Hub`] on a single node, and
/// `cluster::LeasedSink` (the shared log in Redis, under the source's lease) in a cluster.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError>;
}

/// The fan-out hub. Cheap to share behind an `Arc`.
pub struct Hub {
    /// Fixed for a single node; in cluster mode it follows the shared log's epoch.
    epoch: AtomicU64,
    universe: SymbolUniverse,
    settings: HubSettings,
    metrics: Arc<Metrics>,
    feeds: [Mutex<FeedState>; 3],
    latest: Mutex<LatestState>,
    /// WebSocket queues swept by `run_keepalive` whether or not they subscribe to a feed, so
    /// each connection pings and checks its idle deadline without a timer of its own.
    keepalive: Mutex<Vec<(u8, Arc<SubscriberQueue>)>>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("epoch", &self.epoch()).finish()
    }
}

impl Hub {
    pub fn new(
        universe: SymbolUniverse,
        settings: HubSettings,
        metrics: Arc<Metrics>,
        epoch: u64,
    ) -> Hub {
        let symbols = universe.len();
        let feed = || {
            Mutex::new(FeedState {
                next_seq: 1,
                window: VecDeque::new(),
                subscribers: Vec::new(),
            })
        };
        Hub {
            epoch: AtomicU64::new(epoch),
            universe,
            settings,
            metrics,
            feeds: [feed(), feed(), feed()],
            latest: Mutex::new(LatestState {
                trade: vec![None; symbols],
                quote: vec![None; symbols],
                bar: vec![None; symbols],
                last_time: vec![[None; 3]; symbols],
                bars: vec![VecDeque::new(); symbols],
            }),
            keepalive: Mutex::new(Vec::new()),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn universe(&self) -> &SymbolUniverse {
        &self.universe
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The cursor of the newest event of a feed (seq 0 when nothing was published yet).
    pub fn cursor(&self, feed: Feed) -> Cursor {
        let state = self.feeds[feed.index()].lock();
        Cursor {
            epoch: self.epoch(),
            seq: state.next_seq - 1,
        }
    }

    /// Continues `feed`'s sequence after `last_seq` (a restart that keeps the epoch, see
    /// `store::FeedStart`), so cursors issued before the restart sort before new ones. Only
    /// takes effect before the first publish on the feed.
    pub fn continue_after(&self, feed: Feed, last_seq: u64) {
        let mut state = self.feeds[feed.index()].lock();
        if state.next_seq == 1 && state.window.is_empty() {
            state.next_seq = last_seq.saturating_add(1);
        }
    }

    /// Validates, sequences, encodes once and fans out one event.
    pub fn publish_event(&self, event: MarketEvent) -> Result<Published, PublishError> {
        validate_event(&event, &self.universe)?;
        let json = serde_json::to_vec(&event).map_err(|e| PublishError::Encode(e.to_string()))?;
        let prepared = self.prepare(&event, true)?;
        Ok(self.append(event, prepared, &json, None))
    }

    /// Appends an event the shared log already validated and sequenced (cluster mode): `json`
    /// is its encoding as published, `seq` its place in `feed`. Per-symbol time order was
    /// checked where it was sequenced, so it is recorded here but not enforced.
    pub fn apply_sequenced(&self, seq: u64, json: &[u8]) -> Result<Published, PublishError> {
        let event: MarketEvent =
            serde_json::from_slice(json).map_err(|e| PublishError::Encode(e.to_string()))?;
        let prepared = self.prepare(&event, false)?;
        Ok(self.append(event, prepared, json, Some(seq)))
    }

    /// Symbol ids and the per-symbol time check. Checked before sequencing so a rejected
    /// event never consumes a sequence number.
    fn prepare(&self, event: &MarketEvent, enforce_time: bool) -> Result<Prepared, PublishError> {
        let kind = event.kind();
        let symbol = event.symbol().and_then(|s| self.universe.id(s));
        let tagged: Box<[SymbolId]> = match event {
            MarketEvent::News(news) => news
                .symbols
                .iter()
                .filter_map(|s| self.universe.id(s))
                .collect(),
            _ => Box::default(),
        };
        if let Some(id) = symbol {
            let slot = match kind {
                EventKind::Trade => Some(0),
                EventKind::Quote => Some(1),
                EventKind::Bar => Some(2),
                _ => None,
            };
            if let Some(slot) = slot {
                let mut latest = self.latest.lock();
                let time = event.time();
                let last = &mut latest.last_time[usize::from(id)][slot];
                if last.is_some_and(|previous| time < previous) {
                    if enforce_time {
                        return Err(InvalidEvent::TimeWentBackwards {
                            symbol: self.universe.name(id).to_owned(),
                        }
                        .into());
                    }
                } else {
                    *last = Some(time);
                }
            }
        }
        Ok(Prepared {
            kind,
            symbol,
            tagged,
        })
    }

    /// Sequences (or takes the given sequence), encodes once, keeps and fans out one event.
    fn append(
        &self,
        event: MarketEvent,
        prepared: Prepared,
        json: &[u8],
        given_seq: Option<u64>,
    ) -> Published {
        let Prepared {
            kind,
            symbol,
            tagged,
        } = prepared;
        let feed = Feed::of(kind);
        let mut state = self.feeds[feed.index()].lock();
        let seq = match given_seq {
            Some(seq) => seq,
            None => state.next_seq,
        };
        state.next_seq = seq + 1;
        let entry = Arc::new(encode_entry(
            feed,
            Cursor {
                epoch: self.epoch(),
                seq,
            },
            kind,
            symbol,
            tagged,
            json,
        ));
        state.window.push_back(Arc::clone(&entry));
        while state.window.len() > self.settings.replay_window {
            state.window.pop_front();
        }
        if let Some(id) = symbol {
            self.record_latest(id, &event, &entry);
        }
        let metrics = &self.metrics;
        state.subscribers.retain(|registration| {
            if registration.queue.is_gone() {
                return false;
            }
            if registration.filter.matches(&entry) {
                registration.queue.push_event(&entry, metrics);
            }
            true
        });
        drop(state);
        let counter = match feed {
            Feed::Market => &metrics.published_market,
            Feed::News => &metrics.published_news,
            Feed::Alerts => &metrics.published_alerts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Published { entry }
    }

    /// The latest trade, quote or bar of a symbol, and its bar history.
    fn record_latest(&self, id: SymbolId, event: &MarketEvent, entry: &Arc<Entry>) {
        let mut latest = self.latest.lock();
        let index = usize::from(id);
        match event {
            MarketEvent::Trade(_) => latest.trade[index] = Some(Arc::clone(entry)),
            MarketEvent::Quote(_) => latest.quote[index] = Some(Arc::clone(entry)),
            MarketEvent::Bar(bar) => {
                latest.bar[index] = Some(Arc::clone(entry));
                let history = &mut latest.bars[index];
                if history.back().is_some_and(|last| last.time == bar.time) {
                    history.pop_back();
                }
                history.push_back(bar.clone());
                while history.len() > self.settings.bar_history {
                    history.pop_front();
                }
            }
            _ => {}
        }
    }

    /// Starts `feed`'s log afresh (cluster mode): the epoch becomes `epoch`, the window is
    /// emptied and the next event gets `next_seq`. With `tell_clients`, every subscriber of
    /// the feed is closed with [`CloseReason::Reset`]; resuming with its old cursor then gets
    /// an explicit reset (another epoch, or a cursor older than the emptied window).
    pub fn reset_feed(&self, feed: Feed, epoch: u64, next_seq: u64, tell_clients: bool) {
        self.epoch.store(epoch, Ordering::Relaxed);
        let mut state = self.feeds[feed.index()].lock();
        state.window.clear();
        state.next_seq = next_seq.max(1);
        if tell_clients {
            for registration in state.subscribers.drain(..) {
                registration
                    .queue
                    .push_control(Delivery::Close(CloseReason::Reset));
            }
            drop(state);
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Latest values taken from the shared log without their place in the window (cluster
    /// mode, older than the retained stream): each the JSON of a trade, quote or bar and the
    /// sequence it was published at.
    pub fn seed_latest(&self, latest: Vec<(u64, Bytes)>) {
        let epoch = self.epoch();
        for (seq, json) in latest {
            let Ok(event) = serde_json::from_slice::<MarketEvent>(&json) else {
                continue;
            };
            let Ok(prepared) = self.prepare(&event, false) else {
                continue;
            };
            let Some(id) = prepared.symbol else {
                continue;
            };
            let entry = Arc::new(encode_entry(
                Feed::Market,
                Cursor { epoch, seq },
                prepared.kind,
                prepared.symbol,
                prepared.tagged,
                &json,
            ));
            self.record_latest(id, &event, &entry);
        }
    }

    /// Sends a `status` event that is not part of any feed's log (no id, so no cursor moves)
    /// to every subscriber of every feed: `sc` is the code, `sm` the message.
    pub fn notify_status(&self, code: &str, message: &str) {
        let status = MarketEvent::Status(crate::market::Status {
            symbol: "*".into(),
            code: code.into(),
            message: message.into(),
            time: Utc::now(),
        });
        let Ok(json) = serde_json::to_vec(&status) else {
            return;
        };
        let entry = Arc::new(encode_notice(&json));
        // A WebSocket session's one queue is registered on each feed it follows: once each.
        let mut told = std::collections::HashSet::new();
        for feed in Feed::ALL {
            let state = self.feeds[feed.index()].lock();
            for registration in &state.subscribers {
                if !registration.queue.is_gone() && told.insert(Arc::as_ptr(&registration.queue)) {
                    registration.queue.push_event(&entry, &self.metrics);
                }
            }
        }
    }

    /// Registers `queue` on `feed`, collecting the replay after `resume` (or a reset and a
    /// snapshot) atomically with the registration.
    pub fn subscribe(
        &self,
        feed: Feed,
        filter: Filter,
        resume: Option<Cursor>,
        want_snapshot: bool,
        queue: &Arc<SubscriberQueue>,
    ) -> Subscribed {
        let mut state = self.feeds[feed.index()].lock();
        let epoch = self.epoch();
        let newest = state.next_seq - 1;
        let oldest_retained = state.window.front().map_or(state.next_seq, |e| e.seq);
        let mut replay = Vec::new();
        let mut reset = None;
        if let Some(cursor) = resume {
            if cursor.epoch != epoch {
                reset = Some(ResetReason::EpochChanged);
            } else if cursor.seq > newest {
                reset = Some(ResetReason::CursorAhead);
            } else if cursor.seq + 1 < oldest_retained {
                reset = Some(ResetReason::CursorTooOld);
            } else {
                let skip = (cursor.seq + 1 - oldest_retained) as usize;
                replay.extend(
                    state
                        .window
                        .iter()
                        .skip(skip)
                        .filter(|entry| filter.matches(entry))
                        .cloned(),
                );
            }
        }
        let snapshot = if reset.is_some() || (resume.is_none() && want_snapshot) {
            Some(self.snapshot_locked(feed, &filter, &state))
        } else {
            None
        };
        state.subscribers.push(Registration {
            queue: Arc::clone(queue),
            filter,
            slice: queue.slice,
        });
        drop(state);
        if reset.is_some() {
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .replayed
            .fetch_add(replay.len() as u64, Ordering::Relaxed);
        Subscribed {
            replay,
            reset,
            snapshot,
            cursor: Cursor { epoch, seq: newest },
        }
    }

    /// Removes a queue's registrations from `feed` now (e.g. a WebSocket unsubscribe).
    pub fn unsubscribe(&self, feed: Feed, queue: &Arc<SubscriberQueue>) {
        self.feeds[feed.index()]
            .lock()
            .subscribers
            .retain(|r| !Arc::ptr_eq(&r.queue, queue));
    }

    fn snapshot_locked(&self, feed: Feed, filter: &Filter, state: &FeedState) -> Vec<Arc<Entry>> {
        match feed {
            Feed::Market => {
                let latest = self.latest.lock();
                let mut out = Vec::new();
                for (kind, values) in [
                    (EventKind::Trade, &latest.trade),
                    (EventKind::Quote, &latest.quote),
                    (EventKind::Bar, &latest.bar),
                ] {
                    if filter.kinds & kind.bit() == 0 {
                        continue;
                    }
                    out.extend(
                        values
                            .iter()
                            .flatten()
                            .filter(|e| filter.matches(e))
                            .cloned(),
                    );
                }
                out
            }
            // For news and alerts the "current state" is the most recent items.
            Feed::News | Feed::Alerts => {
                let mut recent: Vec<Arc<Entry>> = state
                    .window
                    .iter()
                    .rev()
                    .filter(|e| filter.matches(e))
                    .take(20)
                    .cloned()
                    .collect();
                recent.reverse();
                recent
            }
        }
    }

    /// Latest trade, quote and bar entries for the given symbols (all when `None`).
    pub fn latest(&self, symbols: Option<&[SymbolId]>) -> Vec<Arc<Entry>> {
        let filter = Filter {
            symbols: match symbols {
                None => SymbolFilter::All,
                Some(ids) => SymbolFilter::from_ids(ids.iter().copied()),
            },
            kinds: u8::MAX,
        };
        let state = self.feeds[Feed::Market.index()].lock();
        self.snapshot_locked(Feed::Market, &filter, &state)
    }

    /// In-memory one-minute bars of a symbol with `start <= t < end`, oldest first.
    pub fn bars(
        &self,
        symbol: SymbolId,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Vec<Bar> {
        let latest = self.latest.lock();
        latest.bars[usize::from(symbol)]
            .iter()
            .filter(|b| start.is_none_or(|s| b.time >= s) && end.is_none_or(|e| b.time < e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Number of live registrations on a feed (for tests and readiness).
    pub fn subscriber_count(&self, feed: Feed) -> usize {
        self.feeds[feed.index()]
            .lock()
            .subscribers
            .iter()
            .filter(|r| !r.queue.is_gone())
            .count()
    }

    /// A full pass of the shared heartbeat sweep: idle queues get a heartbeat, dead
    /// registrations are forgotten. Connections own no timers of their own.
    pub fn heartbeat_sweep(&self) {
        self.heartbeat_sweep_slice(None);
    }

    /// One tick of the heartbeat sweep: the queues of `slice` (all of them for `None`) get a
    /// heartbeat if idle. Dead registrations are forgotten on the full pass and on slice 0's
    /// tick, once per round; the other ticks only read their own slice's registrations.
    pub fn heartbeat_sweep_slice(&self, slice: Option<u8>) {
        for feed in Feed::ALL {
            let mut state = self.feeds[feed.index()].lock();
            sweep_slice(
                &mut state.subscribers,
                slice,
                |r| (r.slice, &*r.queue),
                |queue| queue.push_control(Delivery::Heartbeat),
            );
        }
    }

    /// Adds a connection's queue to the keep-alive sweep until the queue is marked gone.
    pub fn keep_alive(&self, queue: &Arc<SubscriberQueue>) {
        self.keepalive.lock().push((queue.slice, Arc::clone(queue)));
    }

    /// One pass of the keep-alive sweep: a heartbeat to every live keep-alive queue, busy or
    /// not (the connection checks its ping clock only when it drains one), gone ones
    /// forgotten.
    pub fn keepalive_sweep(&self) {
        self.keepalive_sweep_slice(None);
    }

    /// One tick of the keep-alive sweep: the queues of `slice` (all for `None`); gone ones
    /// are forgotten on the full pass and on slice 0's tick, as in the heartbeat sweep.
    pub fn keepalive_sweep_slice(&self, slice: Option<u8>) {
        sweep_slice(
            &mut self.keepalive.lock(),
            slice,
            |(queue_slice, queue)| (*queue_slice, &**queue),
            SubscriberQueue::push_keepalive,
        );
    }

    /// Runs the keep-alive sweep (every queue once per `interval`, the WebSocket ping
    /// interval, in [`SWEEP_SLICES`] ticks) until `shutdown` fires.
    pub async fn run_keepalive(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        run_sliced(interval, shutdown, |slice| {
            self.keepalive_sweep_slice(Some(slice))
        })
        .await;
    }

    /// Tells every subscriber to finish (shutdown); their connections end themselves.
    pub fn close_all(&self, reason: CloseReason) {
        for feed in Feed::ALL {
            let state = self.feeds[feed.index()].lock();
            for registration in &state.subscribers {
                registration.queue.push_control(Delivery::Close(reason));
            }
        }
    }

    /// Runs the heartbeat sweep (every queue once per heartbeat interval, in
    /// [`SWEEP_SLICES`] ticks) until `shutdown` fires.
    pub async fn run_heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.settings.heartbeat_interval;
        run_sliced(interval, shutdown, |slice| {
            self.heartbeat_sweep_slice(Some(slice))
        })
        .await;
    }
}

/// One tick of a sweep over `entries`, each of which `key` maps to its queue's slice and its
/// queue: the live queues of `slice` (all of them for `None`) get `push`. Gone entries are
/// dropped on the full pass and on slice 0's tick, once per round; the other ticks read only
/// their own slice's queues, since the slice is kept beside the queue pointer.
fn sweep_slice<T>(
    entries: &mut Vec<T>,
    slice: Option<u8>,
    key: impl Fn(&T) -> (u8, &SubscriberQueue),
    push: impl Fn(&SubscriberQueue),
) {
    match slice {
        None | Some(0) => entries.retain(|entry| {
            let (entry_slice, queue) = key(entry);
            if queue.is_gone() {
                return false;
            }
            if slice.is_none_or(|slice| entry_slice == slice) {
                push(queue);
            }
            true
        }),
        Some(slice) => {
            for entry in entries.iter() {
                let (entry_slice, queue) = key(entry);
                if entry_slice == slice && !queue.is_gone() {
                    push(queue);
                }
            }
        }
    }
}

/// Calls `tick` with slice 0, 1, … `SWEEP_SLICES - 1`, 0, … every `interval / SWEEP_SLICES`,
/// starting one tick from now, until `shutdown` fires. A late tick is not made up for in a
/// burst (the next one is pushed back instead).
async fn run_sliced(interval: Duration, shutdown: CancellationToken, mut tick: impl FnMut(u8)) {
    let period = (interval / u32::from(SWEEP_SLICES)).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut slice = 0u8;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                tick(slice);
                slice = (slice + 1) % SWEEP_SLICES;
            }
        }
    }
}

impl EventSink for Hub {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        self.publish_event(event).map(|_| ())
    }
}

/// What `prepare` worked out about an event before it is sequenced.
struct Prepared {
    kind: EventKind,
    symbol: Option<SymbolId>,
    tagged: Box<[SymbolId]>,
}

/// An event outside every feed's log (a `status` notice): its SSE frame has no `id:` line and
/// its sequence number is 0, which no feed ever issues.
fn encode_notice(json: &[u8]) -> Entry {
    let mut frame = BytesMut::with_capacity(2 * json.len() + 32);
    frame.put_slice(b"event: status\ndata: ");
    let json_start = frame.len();
    frame.put_slice(json);
    let json_end = frame.len();
    frame.put_slice(b"\n\n");
    let sse_end = frame.len();
    frame.put_u8(b'[');
    frame.put_slice(json);
    frame.put_u8(b']');
    let all = frame.freeze();
    Entry {
        feed: Feed::Market,
        seq: 0,
        kind: EventKind::Status,
        symbol: None,
        tagged: Box::default(),
        sse: all.slice(..sse_end),
        json: all.slice(json_start..json_end),
        ws: all.slice(sse_end..),
    }
}

fn encode_entry(
    feed: Feed,
    cursor: Cursor,
    kind: EventKind,
    symbol: Option<SymbolId>,
    tagged: Box<[SymbolId]>,
    json: &[u8],
) -> Entry {
    let name = kind.event_name();
    let mut frame = BytesMut::with_capacity(2 * json.len() + name.len() + 50);
    frame.put_slice(b"id: ");
    let mut number = itoa::Buffer::new();
    frame.put_slice(number.format(cursor.epoch).as_bytes());
    frame.put_u8(b'-');
    frame.put_slice(number.format(cursor.seq).as_bytes());
    frame.put_slice(b"\nevent: ");
    frame.put_slice(name.as_bytes());
    frame.put_slice(b"\ndata: ");
    let json_start = frame.len();
    frame.put_slice(json);
    let json_end = frame.len();
    frame.put_slice(b"\n\n");
    let sse_end = frame.len();
    frame.put_u8(b'[');
    frame.put_slice(json);
    frame.put_u8(b']');
    let all = frame.freeze();
    let sse = all.slice(..sse_end);
    let json = all.slice(json_start..json_end);
    let ws = all.slice(sse_end..);
    Entry {
        feed,
        seq: cursor.seq,
        kind,
        symbol,
        tagged,
        sse,
        json,
        ws,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::{Quote, Trade};

    fn hub(window: usize, capacity: usize) -> Hub {
        Hub::new(
            SymbolUniverse::new(["AAPL", "MSFT"]),
            HubSettings {
                replay_window: window,
                subscriber_queue_capacity: capacity,
                ..HubSettings::default()
            },
            Arc::new(Metrics::default()),
            7,
        )
    }

    fn trade(symbol: &str, id: u64, price: f64) -> MarketEvent {
        MarketEvent::Trade(Trade {
            symbol: symbol.into(),
            id,
            venue: "SIM".into(),
            price,
            size: 100.0,
            time: DateTime::from_timestamp(1_700_000_000 + id as i64, 0).unwrap_or_default(),
            conditions: vec![],
        })
    }

    fn quote(symbol: &str, second: i64) -> MarketEvent {
        MarketEvent::Quote(Quote {
            symbol: symbol.into(),
            bid_price: 10.0,
            bid_size: 1.0,
            bid_venue: String::new(),
            ask_price: 10.01,
            ask_size: 1.0,
            ask_venue: String::new(),
            time: DateTime::from_timestamp(1_700_000_000 + second, 0).unwrap_or_default(),
        })
    }

    fn drain(queue: &SubscriberQueue) -> Vec<Delivery> {
        let mut out = VecDeque::new();
        queue.drain_into(&mut out);
        out.into_iter().collect()
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_connection_and_a_push_before_waiting_is_kept() {
        let hub = Arc::new(hub(10, 10));
        let queue = SubscriberQueue::new(10, Transport::Sse);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        // Pushed before anyone waits: the next wait returns at once.
        hub.publish_event(trade("AAPL", 1, 10.0)).expect("valid");
        tokio::time::timeout(Duration::from_secs(5), queue.notified())
            .await
            .expect("a kept wake-up");
        assert_eq!(drain(&queue).len(), 1);
        // Waiting first: a later push wakes the waiter.
        let waiter = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.notified().await }
        });
        tokio::task::yield_now().await;
        hub.publish_event(trade("AAPL", 2, 10.0)).expect("valid");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the push")
            .expect("waiter ran");
        assert_eq!(drain(&queue).len(), 1);
    }

    #[test]
    fn symbol_filter_is_sized_to_its_highest_id_and_answers_for_any_id() {
        let filter = SymbolFilter::from_ids([1, 70]);
        let SymbolFilter::Some(bits) = &filter else {
            panic!("a list of ids is not All");
        };
        assert_eq!(bits.len(), 2);
        assert!(filter.contains(1) && filter.contains(70));
        assert!(!filter.contains(0) && !filter.contains(71));
        assert!(
            !filter.contains(4095),
            "ids beyond the bitmap are not contained"
        );
        assert!(!SymbolFilter::from_ids([]).contains(0));
    }

    #[test]
    fn sse_frame_is_built_once_with_cursor_and_json_slice() {
        let hub = hub(10, 10);
        let published = hub
            .publish_event(trade("AAPL", 1, 10.0))
            .expect("valid trade");
        let text = std::str::from_utf8(&published.entry.sse).unwrap_or_default();
        assert!(text.starts_with("id: 7-1\nevent: trade\ndata: {\"T\":\"t\""));
        assert!(text.ends_with("}\n\n"));
        assert_eq!(published.entry.json.first(), Some(&b'{'));
        // The JSON is a view into the same allocation, not a copy.
        let sse_range = published.entry.sse.as_ptr_range();
        assert!(sse_range.contains(&published.entry.json.as_ptr()));
        // The WebSocket frame is the JSON in brackets, built once next to the SSE frame.
        let mut expected = b"[".to_vec();
        expected.extend_from_slice(&published.entry.json);
        expected.push(b']');
        assert_eq!(published.entry.ws.as_ref(), expected.as_slice());
        assert_eq!(published.entry.ws.as_ptr(), sse_range.end);
    }

    #[test]
    fn the_keepalive_sweep_wakes_unsubscribed_queues_and_forgets_gone_ones() {
        let hub = hub(10, 10);
        let live = SubscriberQueue::new(10, Transport::WebSocket);
        let gone = SubscriberQueue::new(10, Transport::WebSocket);
        hub.keep_alive(&live);
        hub.keep_alive(&gone);
        gone.mark_gone();
        hub.keepalive_sweep();
        let mut items = VecDeque::new();
        live.drain_into(&mut items);
        assert!(matches!(items.pop_front(), Some(Delivery::Heartbeat)));
        assert!(items.is_empty());
        assert!(gone.is_empty(), "a gone queue gets nothing");
        assert_eq!(hub.keepalive.lock().len(), 1, "the gone queue is forgotten");
    }

    fn heartbeats(queue: &SubscriberQueue) -> usize {
        drain(queue)
            .iter()
            .filter(|d| matches!(d, Delivery::Heartbeat))
            .count()
    }

    /// `rounds` queues per slice, each on the alerts feed and in the keep-alive sweep.
    fn swept_queues(hub: &Hub, rounds: usize) -> Vec<Arc<SubscriberQueue>> {
        let queues: Vec<_> = (0..rounds * usize::from(SWEEP_SLICES))
            .map(|_| SubscriberQueue::new(10, Transport::WebSocket))
            .collect();
        for queue in &queues {
            hub.subscribe(Feed::Alerts, Filter::everything(), None, false, queue);
            hub.keep_alive(queue);
        }
        queues
    }

    #[test]
    fn a_sweep_tick_reaches_only_its_own_slice_and_a_full_round_reaches_everyone_once() {
        let hub = hub(10, 10);
        let queues = swept_queues(&hub, 3);
        assert!(queues.iter().all(|queue| queue.slice() < SWEEP_SLICES));
        let target = queues[0].slice();
        hub.heartbeat_sweep_slice(Some(target));
        hub.keepalive_sweep_slice(Some(target));
        for queue in &queues {
            let expected = if queue.slice() == target { 2 } else { 0 };
            assert_eq!(heartbeats(queue), expected, "slice {}", queue.slice());
        }
        for slice in 0..SWEEP_SLICES {
            hub.heartbeat_sweep_slice(Some(slice));
        }
        assert!(queues.iter().all(|q| heartbeats(q) == 1));
    }

    #[test]
    fn gone_registrations_get_nothing_and_are_forgotten_on_slice_zeros_tick() {
        let hub = hub(10, 10);
        let queues = swept_queues(&hub, 2);
        for queue in &queues {
            queue.mark_gone();
        }
        let registered = || {
            (
                hub.feeds[Feed::Alerts.index()].lock().subscribers.len(),
                hub.keepalive.lock().len(),
            )
        };
        for slice in 1..SWEEP_SLICES {
            hub.heartbeat_sweep_slice(Some(slice));
            hub.keepalive_sweep_slice(Some(slice));
        }
        assert!(
            queues.iter().all(|q| q.is_empty()),
            "a gone queue gets nothing"
        );
        assert_eq!(registered(), (queues.len(), queues.len()));
        hub.heartbeat_sweep_slice(Some(0));
        hub.keepalive_sweep_slice(Some(0));
        assert_eq!(registered(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_sweep_spreads_one_interval_over_its_slices() {
        let settings = HubSettings {
            heartbeat_interval: Duration::from_millis(1600),
            ..HubSettings::default()
        };
        let hub = Arc::new(Hub::new(
            SymbolUniverse::new(["AAPL"]),
            settings,
            Arc::new(Metrics::default()),
            7,
        ));
        let queues: Vec<_> = (0..4 * usize::from(SWEEP_SLICES))
            .map(|_| SubscriberQueue::new(10, Transport::Sse))
            .collect();
        for queue in &queues {
            hub.subscribe(Feed::News, Filter::everything(), None, false, queue);
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&hub).run_heartbeats(shutdown.clone()));
        // One tick (100 ms): one slice.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let first: Vec<usize> = queues.iter().map(|q| heartbeats(q)).collect();
        let reached = first.iter().filter(|&&n| n == 1).count();
        assert!(reached > 0 && reached < queues.len(), "{reached} reached");
        // The rest of the interval: every other queue, and nobody twice.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for (queue, before) in queues.iter().zip(first) {
            assert_eq!(before + heartbeats(queue), 1);
        }
        shutdown.cancel();
        task.await.expect("sweep ends on shutdown");
    }

    #[test]
    fn the_keepalive_tick_is_queued_behind_pending_data_but_a_feed_heartbeat_is_not() {
        let hub = hub(10, 10);
        let queue = SubscriberQueue::new(10, Transport::WebSocket);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        hub.keep_alive(&queue);
        hub.publish_event(trade("AAPL", 1, 100.0))
            .expect("valid trade");
        // The SSE heartbeat sweep skips a busy queue; the WebSocket keep-alive does not, since
        // the connection reads its ping clock only when it drains a tick.
        hub.heartbeat_sweep();
        hub.keepalive_sweep();
        let mut items = VecDeque::new();
        queue.drain_into(&mut items);
        assert!(matches!(items.pop_front(), Some(Delivery::Event(_))));
        assert!(matches!(items.pop_front(), Some(Delivery::Heartbeat)));
        assert!(items.is_empty(), "one tick, no feed heartbeat");
    }

    #[test]
    fn full_queue_conflates_price_data_then_disconnects() {
        let hub = hub(100, 4);
        let queue = SubscriberQueue::new(4, Transport::Sse);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        for id in 1..=6 {
            hub.publish_event(trade("AAPL", id, 10.0 + id as f64))
                .expect("valid");
        }
        // Conflation kept the newest AAPL trade only, plus what arrived after.
        let items = drain(&queue);
        assert!(items.len() <= 4, "queue stayed bounded: {}", items.len());
        assert!(hub.metrics().conflated.load(Ordering::Relaxed) >= 3);
        let last = items.last().expect("an item");
        assert!(matches!(last, Delivery::Event(e) if e.seq == 6));

        // Distinct symbols and kinds cannot be conflated away: the client is closed.
        let queue = SubscriberQueue::new(2, Transport::Sse);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        hub.publish_event(trade("AAPL", 10, 10.0)).expect("valid");
        hub.publish_event(quote("AAPL", 11)).expect("valid");
        hub.publish_event(trade("MSFT", 12, 10.0)).expect("valid");
        let items = drain(&queue);
        assert!(matches!(
            items.as_slice(),
            [Delivery::Close(CloseReason::SlowClient)]
        ));
        assert_eq!(
            hub.metrics()
                .slow_client_disconnects
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn sequenced_events_keep_their_given_numbers_and_the_publishers_bytes() {
        let hub = hub(10, 10);
        let queue = SubscriberQueue::new(10, Transport::Sse);
        hub.reset_feed(Feed::Market, 9, 41, false);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        let json = serde_json::to_vec(&trade("AAPL", 5, 10.0)).unwrap_or_default();
        let applied = hub.apply_sequenced(41, &json).expect("applied");
        assert_eq!(applied.entry.json.as_ref(), json.as_slice());
        assert!(applied.entry.sse.starts_with(b"id: 9-41\n"));
        // Time order was checked where the event was sequenced: an older one still applies.
        let older = serde_json::to_vec(&trade("AAPL", 4, 10.0)).unwrap_or_default();
        assert_eq!(
            hub.apply_sequenced(42, &older).expect("applied").entry.seq,
            42
        );
        assert_eq!(hub.cursor(Feed::Market), Cursor { epoch: 9, seq: 42 });
        assert_eq!(drain(&queue).len(), 2);
        assert!(hub.apply_sequenced(43, b"not json").is_err());
    }

    #[test]
    fn a_reset_closes_subscribers_and_their_old_cursor_then_gets_an_explicit_reset() {
        let hub = hub(10, 10);
        for id in 1..=3 {
            hub.publish_event(trade("AAPL", id, 10.0)).expect("valid");
        }
        let queue = SubscriberQueue::new(10, Transport::Sse);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &queue);
        // The same epoch, but the log continues at 20: 4..=19 were never seen here.
        hub.reset_feed(Feed::Market, 7, 20, true);
        assert!(matches!(
            drain(&queue).as_slice(),
            [Delivery::Close(CloseReason::Reset)]
        ));
        assert_eq!(hub.subscriber_count(Feed::Market), 0);
        let again = SubscriberQueue::new(10, Transport::Sse);
        let resumed = hub.subscribe(
            Feed::Market,
            Filter::everything(),
            Some(Cursor { epoch: 7, seq: 3 }),
            true,
            &again,
        );
        assert_eq!(resumed.reset, Some(ResetReason::CursorTooOld));
        // Latest values survive a reset: the snapshot still has the last trade.
        assert_eq!(resumed.snapshot.map(|s| s.len()), Some(1));
        // A client that had everything up to 19 (from another node) resumes without a reset.
        let caught_up = hub.subscribe(
            Feed::Market,
            Filter::everything(),
            Some(Cursor { epoch: 7, seq: 19 }),
            false,
            &again,
        );
        assert_eq!(caught_up.reset, None);
    }

    #[test]
    fn a_status_notice_reaches_every_feed_without_an_id_or_a_sequence_number() {
        let hub = hub(10, 10);
        let queues: Vec<_> = Feed::ALL
            .iter()
            .map(|feed| {
                let queue = SubscriberQueue::new(10, Transport::Sse);
                hub.subscribe(*feed, Filter::everything(), None, false, &queue);
                queue
            })
            .collect();
        let both = SubscriberQueue::new(10, Transport::WebSocket);
        hub.subscribe(Feed::Market, Filter::everything(), None, false, &both);
        hub.subscribe(Feed::News, Filter::everything(), None, false, &both);
        hub.notify_status("cluster_down", "redis unreachable");
        assert_eq!(drain(&both).len(), 1, "one notice per queue, not per feed");
        for queue in &queues {
            let items = drain(queue);
            let [Delivery::Event(entry)] = items.as_slice() else {
                panic!("one notice: {items:?}");
            };
            assert_eq!(entry.seq, 0);
            assert!(entry.sse.starts_with(b"event: status\ndata: {"));
            assert!(std::str::from_utf8(&entry.json).is_ok_and(|j| j.contains("cluster_down")));
        }
        assert_eq!(hub.cursor(Feed::Market).seq, 0, "no cursor moved");
    }

    #[test]
    fn time_going_backwards_is_rejected_without_consuming_a_sequence_number() {
        let hub = hub(10, 10);
        hub.publish_event(trade("AAPL", 5, 10.0)).expect("valid");
        let error = hub.publish_event(trade("AAPL", 4, 10.0)).unwrap_err();
        assert!(matches!(
            error,
            PublishError::Invalid(InvalidEvent::TimeWentBackwards { .. })
        ));
        let next = hub.publish_event(trade("AAPL", 6, 10.0)).expect("valid");
        assert_eq!(next.entry.seq, 2);
    }

    #[test]
    fn resume_reports_reset_for_foreign_epoch_old_cursor_and_future_cursor() {
        let hub = hub(3, 10);
        for id in 1..=6 {
            hub.publish_event(trade("AAPL", id, 10.0)).expect("valid");
        }
        let queue = SubscriberQueue::new(10, Transport::Sse);
        let check = |cursor: Cursor| {
            hub.subscribe(
                Feed::Market,
                Filter::everything(),
                Some(cursor),
                true,
                &queue,
            )
        };
        assert_eq!(
            check(Cursor { epoch: 1, seq: 5 }).reset,
            Some(ResetReason::EpochChanged)
        );
        assert_eq!(
            check(Cursor { epoch: 7, seq: 1 }).reset,
            Some(ResetReason::CursorTooOld)
        );
        assert_eq!(
            check(Cursor { epoch: 7, seq: 9 }).reset,
            Some(ResetReason::CursorAhead)
        );
        let ok = check(Cursor { epoch: 7, seq: 3 });
        assert_eq!(ok.reset, None);
        assert!(ok.snapshot.is_none());
        let seqs: Vec<u64> = ok.replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![4, 5, 6]);
    }
}
