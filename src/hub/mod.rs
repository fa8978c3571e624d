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
//! - The hub validates every event, once, whoever publishes it; sources only forward.
//! - The hub knows no transport: it encodes the SSE frame and the WebSocket array once (see
//!   [`entry`]) and hands out shared bytes; how a connection writes them is the transport's.
//!
//! Files: `feed` (the feeds), [`entry`] (encoding, every SSE frame, the shutdown status), [`msgpack`] (the
//! MessagePack frame of the Alpaca stream, encoded only while it has clients), [`queue`] (subscriber
//! queues and the slow-client policy), [`coalesce`] (the coalescing window: a busy connection's
//! writes carry several events), [`filter`] (what a subscription wants), [`sweep`] (the
//! shared heartbeat and keep-alive sweeps), [`throttle`] (conflation for `max_rate`
//! subscribers), [`shared_throttle`] (one conflation per rate in use), `outcome` (what publishing and
//! subscribing return), [`sequenced`] (what a cluster node does to the
//! hub: events sequenced elsewhere, resets, notices), [`trading_status`] (trading statuses for
//! WebSocket sessions that trade, market data or not); this file holds the feeds, their logs
//! and the latest values.

pub mod coalesce;
mod cursor;
pub mod entry;
mod feed;
pub mod filter;
pub mod msgpack;
mod outcome;
pub mod queue;
mod sequenced;
mod settings;
pub mod shared_throttle;
pub mod sweep;
pub mod throttle;
mod trading_status;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::market::{
    Bar, EventKind, InvalidEvent, MarketEvent, SymbolId, SymbolUniverse, validate_event,
};
use crate::metrics::Metrics;

pub use coalesce::Coalescer;
pub use cursor::Cursor;
pub use entry::Entry;
use entry::encode_entry;
pub use feed::Feed;
pub use filter::{Filter, SymbolFilter};
pub use outcome::{PublishError, Published, ResetReason, Subscribed};
pub use queue::{CloseReason, Delivery, SWEEP_SLICES, SubscriberQueue};
pub use settings::HubConfig;
pub use shared_throttle::{MAX_SHARED_THROTTLES, SharedThrottle, StageKey};
pub use throttle::{InvalidMaxRate, MaxRate, Pacer, Throttle};

/// What one entry costs a replay window: the SSE frame and the WebSocket frame (one
/// allocation holds both; `json` is a slice of the SSE frame), and the MessagePack frame
/// when Alpaca clients are connected.
fn entry_bytes(entry: &Entry) -> usize {
    entry.sse.len() + entry.ws.len() + entry.msgpack.as_ref().map_or(0, |m| m.len())
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
    /// Bytes the window's entries hold (their shared SSE and WebSocket buffers).
    window_bytes: usize,
    subscribers: Vec<Registration>,
    /// The market feed's shared throttles (see [`shared_throttle`]): one per `max_rate` key
    /// in use, each fed every market event and holding its own subscribers.
    stages: Vec<Arc<SharedThrottle>>,
    /// Set by [`Hub::shut_down`]: the feed's head is final and every publish is refused.
    sealed: bool,
}

/// Latest values per symbol, for snapshots and per-symbol time checks.
struct LatestState {
    trade: Vec<Option<Arc<Entry>>>,
    quote: Vec<Option<Arc<Entry>>>,
    bar: Vec<Option<Arc<Entry>>>,
    last_time: Vec<[Option<DateTime<Utc>>; 3]>,
    bars: Vec<VecDeque<Bar>>,
    /// The newest status per symbol (`None` for `*`) and family (see [`status_family`]): the
    /// session, an upstream's health, a halt, trading. Snapshots carry them so a client
    /// that connects later still knows the market is closed or an upstream is down.
    statuses: Vec<(StatusKey, Arc<Entry>)>,
}

/// Which status a newer one replaces: the same symbol (`None` for `*`) and family.
type StatusKey = (Option<SymbolId>, &'static str);

/// Groups status codes whose newest value replaces the previous one: `market_open` replaces
/// `market_closed`, `upstream_ok` replaces `upstream_down`, and so on.
fn status_family(code: &str) -> &'static str {
    match code {
        c if c.starts_with("market_") => "session",
        c if c.starts_with("upstream_") => "upstream",
        c if c.starts_with("trading_") => "trading",
        "halted" | "resumed" => "halt",
        "stale" => "stale",
        _ => "other",
    }
}

/// Limits of the hub, from the `[hub]` section of the settings.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub replay_window: usize,
    /// Bytes each feed's replay window may hold; the oldest entries go first (the newest
    /// one always stays).
    pub replay_window_bytes: usize,
    /// Items each subscriber queue holds before conflation, then disconnect (407); applied
    /// by [`Hub::new_queue`].
    pub subscriber_queue_capacity: usize,
    pub heartbeat_interval: Duration,
    pub bar_history: usize,
    /// The coalescing window each connection's [`Coalescer`] gets (zero: none).
    pub coalesce_window: Duration,
}

impl From<&HubConfig> for HubSettings {
    fn from(config: &HubConfig) -> Self {
        HubSettings {
            replay_window: config.replay_window,
            replay_window_bytes: config.replay_window_bytes,
            subscriber_queue_capacity: config.subscriber_queue_capacity,
            heartbeat_interval: config.heartbeat_interval,
            bar_history: config.bar_history,
            coalesce_window: config.coalesce_window,
        }
    }
}

/// The defaults of the settings' `[hub]` section (one place for the numbers).
impl Default for HubSettings {
    fn default() -> Self {
        HubSettings::from(&HubConfig::default())
    }
}

/// What stands behind `ingest::source::Publisher`, the one seam every source publishes
/// through: the local [`Hub`] on a single node, and `cluster::LeasedSink` (the shared log in
/// Redis, under the source's lease) on a cluster node.
pub trait EventSink: Send + Sync {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError>;

    /// Whether shutdown sealed the local hub: publishing is refused with
    /// [`PublishError::ShuttingDown`] from then on, in cluster mode too.
    fn is_sealed(&self) -> bool {
        false
    }
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
    /// Connected clients that want MessagePack frames (see [`entry::Entry::msgpack`]).
    msgpack_clients: Arc<std::sync::atomic::AtomicUsize>,
    /// Cluster mode: the shared log sequences every feed (see [`Hub::follow_shared_log`]).
    clustered: std::sync::atomic::AtomicBool,
    /// Queues of WebSocket sessions with a trading subscription, and the trading statuses
    /// in force (see [`trading_status`]).
    trading_listeners: Mutex<trading_status::TradingListeners>,
}

/// Held by a connection that wants MessagePack frames; while any exists, publishing encodes
/// them.
#[derive(Debug)]
pub struct MsgpackClientGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for MsgpackClientGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
                window_bytes: 0,
                subscribers: Vec::new(),
                stages: Vec::new(),
                sealed: false,
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
                statuses: Vec::new(),
            }),
            keepalive: Mutex::new(Vec::new()),
            msgpack_clients: Arc::default(),
            clustered: std::sync::atomic::AtomicBool::new(false),
            trading_listeners: Mutex::new(Default::default()),
        }
    }

    /// Registers a MessagePack client: from now on each event's MessagePack frame is encoded
    /// at publish. An event published just before may lack it; the client encodes that one
    /// itself.
    pub fn msgpack_client(&self) -> MsgpackClientGuard {
        self.msgpack_clients.fetch_add(1, Ordering::Relaxed);
        MsgpackClientGuard(Arc::clone(&self.msgpack_clients))
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

    /// A queue for one more subscriber, holding `hub.subscriber_queue_capacity` items.
    pub fn new_queue(&self) -> Arc<SubscriberQueue> {
        SubscriberQueue::with_capacity(self.settings.subscriber_queue_capacity)
    }

    /// The coalescing state for one more connection (`hub.coalesce_window`).
    pub fn new_coalescer(&self) -> Coalescer {
        Coalescer::new(self.settings.coalesce_window)
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

    /// Evicts the oldest entries until the window is within its count and its byte budget
    /// (keeping the newest entry whatever its size), and reports both on `/metrics`.
    fn trim_window(&self, feed: Feed, state: &mut FeedState) {
        let index = feed.index();
        while state.window.len() > 1
            && (state.window.len() > self.settings.replay_window
                || state.window_bytes > self.settings.replay_window_bytes)
        {
            let over_count = state.window.len() > self.settings.replay_window;
            let Some(oldest) = state.window.pop_front() else {
                break;
            };
            state.window_bytes -= entry_bytes(&oldest);
            let counter = if over_count {
                &self.metrics.replay_evicted_count[index]
            } else {
                &self.metrics.replay_evicted_budget[index]
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.replay_window_bytes[index].store(state.window_bytes as u64, Ordering::Relaxed);
    }

    /// Validates, sequences, encodes once and fans out one event.
    pub fn publish_event(&self, event: MarketEvent) -> Result<Published, PublishError> {
        validate_event(&event, &self.universe)?;
        let json = serde_json::to_vec(&event).map_err(|e| PublishError::Encode(e.to_string()))?;
        let prepared = self.prepare(&event, true)?;
        self.append(event, prepared, &json, None)
    }

    /// Symbol ids and the per-symbol time check (enforced, or only recorded for events the
    /// shared log already checked). Checked before sequencing so a rejected event never
    /// consumes a sequence number.
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
                if let Some(previous) = *last
                    && time < previous
                {
                    if enforce_time {
                        return Err(InvalidEvent::TimeWentBackwards {
                            symbol: self.universe.name(id).to_owned(),
                            kind: kind.event_name(),
                            given: time.to_rfc3339(),
                            latest: previous.to_rfc3339(),
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
    ) -> Result<Published, PublishError> {
        let Prepared {
            kind,
            symbol,
            tagged,
        } = prepared;
        let feed = Feed::of(kind);
        let msgpack = (self.msgpack_clients.load(Ordering::Relaxed) > 0)
            .then(|| msgpack::single_event_frame(&event))
            .flatten();
        let mut state = self.feeds[feed.index()].lock();
        if state.sealed {
            return Err(PublishError::ShuttingDown);
        }
        let seq = given_seq.unwrap_or(state.next_seq);
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
            msgpack,
        ));
        state.window_bytes += entry_bytes(&entry);
        state.window.push_back(Arc::clone(&entry));
        self.trim_window(feed, &mut state);
        if let Some(id) = symbol {
            self.record_latest(id, &event, &entry);
        }
        if let MarketEvent::Status(status) = &event {
            let key = (symbol, status_family(&status.code));
            let mut latest = self.latest.lock();
            latest.statuses.retain(|(k, _)| *k != key);
            latest.statuses.push((key, Arc::clone(&entry)));
        }
        let metrics = &self.metrics;
        // A trading status also reaches sessions that trade without following market data;
        // those that got it here are not told twice.
        let trading_status = trading_status::is_trading_event(&event, symbol);
        let mut told = std::collections::HashSet::new();
        state.subscribers.retain(|registration| {
            if registration.queue.is_gone() {
                return false;
            }
            if registration.filter.matches(&entry) {
                registration.queue.push_event(&entry, metrics);
                if trading_status {
                    told.insert(Arc::as_ptr(&registration.queue));
                }
            }
            true
        });
        if feed == Feed::Market && !state.stages.is_empty() {
            // Each stage takes the event once and pushes what its rate lets out; a stage
            // whose last subscriber left is dropped.
            state.stages.retain(|stage| {
                let live = stage.publish(&entry, metrics);
                if !live {
                    stage.retire();
                }
                live
            });
        }
        drop(state);
        if trading_status && let MarketEvent::Status(status) = &event {
            let notice = Arc::new(entry::encode_notice(json, true));
            self.tell_trading_listeners(&status.code, &notice, &mut told);
        }
        let counter = match feed {
            Feed::Market => &metrics.published_market,
            Feed::News => &metrics.published_news,
            Feed::Alerts => &metrics.published_alerts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Published { entry })
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
        self.subscribe_inner(feed, filter, resume, want_snapshot, queue, None)
            .0
    }

    fn subscribe_inner(
        &self,
        feed: Feed,
        filter: Filter,
        resume: Option<Cursor>,
        want_snapshot: bool,
        queue: &Arc<SubscriberQueue>,
        rate: Option<MaxRate>,
    ) -> (Subscribed, Option<Arc<SharedThrottle>>) {
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
        let registration = Registration {
            queue: Arc::clone(queue),
            filter,
            slice: queue.slice(),
        };
        let stage = rate
            .filter(|_| feed == Feed::Market)
            .and_then(|rate| StageKey::for_kinds(rate, registration.filter.kinds))
            .and_then(|key| self.stage_locked(&mut state, key, newest));
        match &stage {
            Some(stage) => stage.add(registration),
            None => state.subscribers.push(registration),
        }
        if state.sealed {
            // A client that connects during shutdown gets its replay and then, like everyone
            // else, the final status with the head, instead of a stream that never ends.
            queue.push_control(Delivery::Close(CloseReason::Shutdown));
        }
        drop(state);
        if reset.is_some() {
            self.metrics.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .replayed
            .fetch_add(replay.len() as u64, Ordering::Relaxed);
        let subscribed = Subscribed {
            replay,
            reset,
            snapshot,
            cursor: Cursor { epoch, seq: newest },
        };
        (subscribed, stage)
    }

    /// Removes a queue's registrations from `feed` now (e.g. a WebSocket unsubscribe).
    pub fn unsubscribe(&self, feed: Feed, queue: &Arc<SubscriberQueue>) {
        let mut state = self.feeds[feed.index()].lock();
        state.subscribers.retain(|r| !Arc::ptr_eq(&r.queue, queue));
        for stage in &state.stages {
            stage.remove(queue, &self.metrics);
        }
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
                // Statuses in the order they were published, `*` ones for every filter.
                let mut statuses: Vec<&Arc<Entry>> = latest
                    .statuses
                    .iter()
                    .map(|(_, entry)| entry)
                    .filter(|e| filter.matches(e))
                    .collect();
                statuses.sort_by_key(|e| e.seq);
                out.extend(statuses.into_iter().cloned());
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
        let state = self.feeds[feed.index()].lock();
        let raw = state
            .subscribers
            .iter()
            .filter(|r| !r.queue.is_gone())
            .count();
        raw + state
            .stages
            .iter()
            .map(|stage| stage.subscriber_count())
            .sum::<usize>()
    }

    /// Shutdown: seals every feed and tells every subscriber to finish, under the feed's
    /// lock, so no event can be accepted after a stream was given its final `shutdown`
    /// status. The feed's head is final from here on: the status carries it as its id
    /// (see [`entry::sse_close`]), so every client, filtered or not, resumes from it after
    /// a clean restart (which continues the sequence after the same head).
    ///
    /// It then wakes every keep-alive queue (every WebSocket's, subscribed or not) with a
    /// tick: a WebSocket connection hears of the shutdown from its queue rather than from a
    /// waiter of its own on the shutdown token, which the server cancels before calling this
    /// (so a connection woken here finds it cancelled and closes with 1012, after the
    /// `shutdown` status when it has market data).
    pub fn shut_down(&self) {
        for feed in Feed::ALL {
            let mut state = self.feeds[feed.index()].lock();
            state.sealed = true;
            for registration in &state.subscribers {
                registration
                    .queue
                    .push_control(Delivery::Close(CloseReason::Shutdown));
            }
            // What the shared throttles hold goes out before the close, so the close's id
            // (the feed's head) claims nothing a throttled subscriber was not sent.
            for stage in state.stages.drain(..) {
                stage.flush(&self.metrics);
                stage.push_control(&Delivery::Close(CloseReason::Shutdown));
                stage.retire();
            }
        }
        self.keepalive_sweep();
    }

    /// Whether [`Hub::shut_down`] ran: publishing is refused from then on.
    pub fn is_shut_down(&self) -> bool {
        self.feeds[Feed::Market.index()].lock().sealed
    }
}

impl EventSink for Hub {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        self.publish_event(event).map(|_| ())
    }

    fn is_sealed(&self) -> bool {
        self.is_shut_down()
    }
}

/// What `prepare` worked out about an event before it is sequenced.
struct Prepared {
    kind: EventKind,
    symbol: Option<SymbolId>,
    tagged: Box<[SymbolId]>,
}

#[cfg(test)]
mod tests;
