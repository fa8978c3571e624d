//! Subscriber queues: the bounded queue each connection drains, its wake-up, and the
//! slow-client policy applied when it is full.
//!
//! Invariants this module keeps:
//! - A push never waits on the connection: it takes the queue's short lock and wakes the
//!   one draining task at most once per batch.
//! - A throttled connection may name *deferred* symbols (those whose `max_rate` window is
//!   running): a trade or quote of one is queued without a wake-up, since the connection
//!   could not send it before its timer fires anyway. Everything else wakes as usual, and so
//!   does any push once the queue is half full, so deferring never brings a slow-client close.
//! - A trade or quote of a deferred symbol *replaces in place* the one of its symbol and kind
//!   already queued since the last drain (conflation at push time), so a throttled queue holds
//!   at most one pending trade and one pending quote per windowed symbol, however busy it is.
//!   This is exactly what the connection's throttle would do with both when it drains (the
//!   newest of a symbol and kind wins within a drain), so the client sees no difference. A bar
//!   or status of the symbol ends the replacing until the next trade or quote is queued: the
//!   trade it may wait behind stays before it. Bars, statuses, news and controls are never
//!   replaced, and keep their order.
//! - The policy for a full queue is explicit: conflate price data (only the newest trade and
//!   quote per symbol are kept; bars, statuses and news never are), and if that frees no room,
//!   close the queue with [`CloseReason::SlowClient`] (code 407) and count the drop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use futures::task::AtomicWaker;
use parking_lot::Mutex;

use super::entry::Entry;
use crate::market::{EventKind, SymbolId};
use crate::metrics::Metrics;

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
    /// What a throttled connection's queue keeps besides its items; `None` (one pointer, no
    /// allocation) unless the connection is throttled, so other queues pay nothing for it.
    throttled: Option<Box<Deferral>>,
}

/// The deferred symbols of a throttled queue and where their pending trades and quotes are.
#[derive(Debug, Default)]
struct Deferral {
    /// Symbols whose trades and quotes need no wake-up: a bit set indexed by symbol id.
    deferred: Vec<u64>,
    /// Where the last trade and the last quote of each symbol were queued, as position + 1 in
    /// the items (0: none), indexed by `symbol * 2 + (kind is quote)` and grown to the highest
    /// symbol seen. A position may be stale (from before a drain); it is used only when the
    /// item there is still a trade or quote of that symbol, kind and feed with a lower
    /// sequence, which is then the last one queued of them (every append of a trade or quote
    /// records itself).
    latest: Vec<u32>,
    /// Trades and quotes replaced in place since the last drain.
    replaced: u64,
}

/// A bounded queue owned by one client connection; the hub pushes, the connection drains.
#[derive(Debug)]
pub struct SubscriberQueue {
    state: Mutex<QueueState>,
    /// [`IDLE`], [`PENDING`], [`LATE`] or [`HOLDING`]. Set to `PENDING` by every push (to
    /// `LATE` by a second one), back to `IDLE` when `notified` returns: a wake-up that arrives
    /// while the connection is busy is kept, like a `Notify` permit. Only a push that finds
    /// `IDLE` wakes the connection, so a connection holding its next write (see
    /// [`super::coalesce`]) is not woken by data.
    signal: AtomicU8,
    /// Items the last drain took, for the coalescing window's hot/quiet decision.
    last_drained: AtomicU32,
    /// The one connection task draining this queue. Cheaper than `Notify` per delivery: no
    /// waiter list and no lock, only an atomic swap of the registered waker.
    waker: AtomicWaker,
    capacity: usize,
    /// Trades and quotes replaced in place, handed over at each drain, until
    /// [`SubscriberQueue::take_replaced`].
    replaced: AtomicU64,
    /// Set when the connection is gone, so the hub drops the registration lazily.
    gone: AtomicBool,
    /// Which tick of the shared sweeps visits this queue (see [`SWEEP_SLICES`]).
    slice: u8,
}

/// Nothing pushed since the last drain; the next push wakes the connection.
const IDLE: u8 = 0;
/// Something was pushed since the last drain (and the connection was woken, or is holding).
const PENDING: u8 = 1;
/// The connection holds its next write until its coalescing timer fires: pushes record
/// themselves (`PENDING`) without waking it.
const HOLDING: u8 = 2;
/// Like `PENDING`, and a second push came before the connection got to the first: its
/// wake-up is late (the coalescing window counts these, see [`super::coalesce`]).
const LATE: u8 = 3;

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
    /// A queue holding at most `capacity` items (at least 2). Connections get theirs from
    /// [`Hub::new_queue`](super::Hub::new_queue), which applies
    /// `hub.subscriber_queue_capacity`; only the hub's internal followers (the bar recorder)
    /// and tests size their own.
    pub fn with_capacity(capacity: usize) -> Arc<SubscriberQueue> {
        Arc::new(SubscriberQueue {
            state: Mutex::new(QueueState::default()),
            signal: AtomicU8::new(IDLE),
            last_drained: AtomicU32::new(0),
            waker: AtomicWaker::new(),
            capacity: capacity.max(2),
            replaced: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            slice: (NEXT_SLICE.fetch_add(1, Ordering::Relaxed) % usize::from(SWEEP_SLICES)) as u8,
        })
    }

    /// The sweep slice this queue belongs to.
    pub fn slice(&self) -> u8 {
        self.slice
    }

    /// Waits until something was pushed since the last drain. Meant for the one task that
    /// drains the queue (a second concurrent waiter would not be woken).
    pub async fn notified(&self) {
        std::future::poll_fn(|cx| self.poll_notified(cx)).await
    }

    /// The poll form of [`SubscriberQueue::notified`], for connections that are themselves a
    /// hand-written stream.
    pub fn poll_notified(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.poll_woken(cx).map(|_| ())
    }

    /// [`SubscriberQueue::poll_notified`], telling whether the wake-up was late: `Ready(true)`
    /// when two or more waking pushes came since the last time.
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        if let Some(late) = self.take_signal() {
            return std::task::Poll::Ready(late);
        }
        self.waker.register(cx.waker());
        // A push between the check above and the registration must not be lost.
        if let Some(late) = self.take_signal() {
            return std::task::Poll::Ready(late);
        }
        std::task::Poll::Pending
    }

    /// Clears the signal; `Some` when something was pushed since the last time, `Some(true)`
    /// when more than one waking push was.
    fn take_signal(&self) -> Option<bool> {
        match self.signal.swap(IDLE, Ordering::AcqRel) {
            PENDING => Some(false),
            LATE => Some(true),
            _ => None,
        }
    }

    /// Wakes the draining task, once per batch: while a wake-up is pending (or the
    /// connection holds its write for a coalescing window), further pushes need none (the
    /// task drains everything queued when it runs).
    fn wake(&self) {
        match self.signal.swap(PENDING, Ordering::AcqRel) {
            IDLE => self.waker.wake(),
            // A wake-up was already pending: the connection is late. Only if it has not
            // drained meanwhile (then this push is part of the next wake-up's batch).
            PENDING | LATE => {
                let _ = self.signal.compare_exchange(
                    PENDING,
                    LATE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
    }

    /// Wakes the draining task whatever it is doing: a close must not wait out a
    /// coalescing window.
    fn wake_now(&self) {
        self.signal.store(PENDING, Ordering::Release);
        self.waker.wake();
    }

    /// Registers the draining task's waker (for a close during a hold).
    pub(super) fn register(&self, cx: &mut std::task::Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// The connection starts holding its next write: pushes from now on do not wake it.
    /// Something already pushed stays pending (the hold's end drains it).
    pub(super) fn hold(&self) {
        let _ = self
            .signal
            .compare_exchange(IDLE, HOLDING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The end of a hold: `true` when something was pushed during it (or before it).
    pub(super) fn end_hold(&self) -> bool {
        self.take_signal().is_some()
    }

    /// Whether the hub closed this queue (a close is never held back).
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// How many items the last [`SubscriberQueue::drain_into`] took.
    pub fn last_drained(&self) -> u32 {
        self.last_drained.load(Ordering::Relaxed)
    }

    /// Sets the symbols whose trades and quotes are queued without waking the connection (see
    /// [`Throttle::windowed_symbols`](super::Throttle::windowed_symbols) for the layout; an
    /// empty set wakes for everything). The connection must look at the queue no later than
    /// the window end of each of them. If something was pushed since the connection's last
    /// drain, it is woken, so nothing that arrived under the previous set is left asleep.
    pub fn set_deferred_symbols(&self, symbols: &[u64]) {
        let mut state = self.state.lock();
        if symbols.is_empty() {
            // Unthrottled: nothing is deferred or replaced any more.
            if let Some(deferral) = state.throttled.take()
                && deferral.replaced != 0
            {
                self.replaced
                    .fetch_add(deferral.replaced, Ordering::Relaxed);
            }
        } else {
            let deferral = state.throttled.get_or_insert_with(Box::default);
            deferral.deferred.clear();
            deferral.deferred.extend_from_slice(symbols);
        }
        let queued = !state.items.is_empty();
        drop(state);
        if queued {
            self.wake();
        }
    }

    /// Moves every queued item into `out` (which the caller reuses, so steady-state draining
    /// does not allocate).
    pub fn drain_into(&self, out: &mut VecDeque<Delivery>) {
        let mut state = self.state.lock();
        std::mem::swap(&mut state.items, out);
        let replaced = state
            .throttled
            .as_mut()
            .map_or(0, |deferral| std::mem::take(&mut deferral.replaced));
        drop(state);
        if replaced != 0 {
            self.replaced.fetch_add(replaced, Ordering::Relaxed);
        }
        self.last_drained.store(
            u32::try_from(out.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many trades and quotes of deferred symbols were replaced in place by a newer one
    /// (and so never reached the connection), up to the last drain, since the last call.
    pub fn take_replaced(&self) -> u64 {
        self.replaced.swap(0, Ordering::Relaxed)
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
    pub(super) fn push_event(&self, entry: &Arc<Entry>, metrics: &Metrics) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.closed {
            return;
        }
        let tracked = match state.throttled.as_deref_mut() {
            None => Tracked::Wakes,
            Some(deferral) => deferral.replace_or_track(&mut state.items, entry),
        };
        let deferred = match tracked {
            Tracked::Replaced => return,
            Tracked::Deferred => true,
            Tracked::Wakes => false,
        };
        if state.items.len() >= self.capacity {
            let removed = conflate(&mut state.items);
            // Positions moved: forget them (the next trade or quote of each symbol records
            // itself again).
            if let Some(deferral) = state.throttled.as_deref_mut() {
                deferral.latest.fill(0);
            }
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
                drop(guard);
                metrics.dropped.fetch_add(dropped, Ordering::Relaxed);
                metrics
                    .slow_client_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.mark_gone();
                self.wake_now();
                return;
            }
        }
        let deferred = deferred && state.items.len() < self.capacity / 2;
        state.items.push_back(Delivery::Event(Arc::clone(entry)));
        if let Some(deferral) = state.throttled.as_deref_mut() {
            deferral.record_position(state.items.len(), entry);
        }
        drop(guard);
        if !deferred {
            self.wake();
        }
    }

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

    /// Pushes a control item (heartbeat only when idle; close always).
    pub fn push_control(&self, delivery: Delivery) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        let close = match delivery {
            Delivery::Heartbeat if !state.items.is_empty() => return,
            Delivery::Close(_) => {
                state.closed = true;
                true
            }
            _ => false,
        };
        state.items.push_back(delivery);
        drop(state);
        if close {
            self.wake_now();
        } else {
            self.wake();
        }
    }
}

/// What [`Deferral::replace_or_track`] did with a push to a throttled queue.
enum Tracked {
    /// It replaced a queued trade or quote of its symbol and kind: nothing to append.
    Replaced,
    /// A trade or quote of a deferred symbol, to append without a wake-up.
    Deferred,
    /// Anything else: append and wake.
    Wakes,
}

impl Deferral {
    fn is_deferred(&self, symbol: SymbolId) -> bool {
        self.deferred
            .get(usize::from(symbol) / 64)
            .is_some_and(|word| word & (1u64 << (symbol % 64)) != 0)
    }

    /// For a throttled queue: replaces in place the queued trade or quote of a deferred
    /// symbol that `entry` supersedes, or says whether `entry` is deferred. A bar or status
    /// forgets its symbol's positions, so a later trade is not moved in front of it.
    fn replace_or_track(&mut self, items: &mut VecDeque<Delivery>, entry: &Arc<Entry>) -> Tracked {
        let Some(symbol) = entry.symbol else {
            return Tracked::Wakes;
        };
        match entry.kind {
            EventKind::Trade | EventKind::Quote if self.is_deferred(symbol) => {
                let key = latest_key(symbol, entry.kind);
                let position = self.latest.get(key).copied().unwrap_or(0) as usize;
                if let Some(Delivery::Event(queued)) =
                    position.checked_sub(1).and_then(|at| items.get_mut(at))
                    && queued.symbol == entry.symbol
                    && queued.kind == entry.kind
                    && queued.feed == entry.feed
                    && queued.seq < entry.seq
                {
                    *queued = Arc::clone(entry);
                    self.replaced += 1;
                    return Tracked::Replaced;
                }
                Tracked::Deferred
            }
            EventKind::Trade | EventKind::Quote => Tracked::Wakes,
            _ => {
                let trade = latest_key(symbol, EventKind::Trade);
                if let Some(pair) = self.latest.get_mut(trade..trade + 2) {
                    pair.fill(0);
                }
                Tracked::Wakes
            }
        }
    }

    /// Records where a trade or quote was just appended (`queued`: the items' new length).
    fn record_position(&mut self, queued: usize, entry: &Arc<Entry>) {
        let Some(symbol) = entry.symbol else {
            return;
        };
        if !matches!(entry.kind, EventKind::Trade | EventKind::Quote) {
            return;
        }
        let key = latest_key(symbol, entry.kind);
        if self.latest.len() <= key {
            self.latest.resize((usize::from(symbol) + 1) * 2, 0);
        }
        self.latest[key] = u32::try_from(queued).unwrap_or(0);
    }
}

/// The index of a symbol's trade or quote (`kind` other than a trade) in
/// [`Deferral::latest`].
fn latest_key(symbol: SymbolId, kind: EventKind) -> usize {
    usize::from(symbol) * 2 + usize::from(kind != EventKind::Trade)
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
