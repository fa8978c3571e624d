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
//! - The policy for a full queue is explicit: conflate price data (only the newest trade and
//!   quote per symbol are kept; bars, statuses and news never are), and if that frees no room,
//!   close the queue with [`CloseReason::SlowClient`] (code 407) and count the drop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use futures::task::AtomicWaker;
use parking_lot::Mutex;

use super::entry::Entry;
use crate::market::EventKind;
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
    /// Symbols whose trades and quotes need no wake-up: a bit set indexed by symbol id, empty
    /// (no allocation) unless the connection is throttled.
    deferred: Box<[u64]>,
}

/// A bounded queue owned by one client connection; the hub pushes, the connection drains.
#[derive(Debug)]
pub struct SubscriberQueue {
    state: Mutex<QueueState>,
    /// [`IDLE`], [`PENDING`] or [`HOLDING`]. Set to `PENDING` by every push, back to `IDLE`
    /// when `notified` returns: a wake-up that arrives while the connection is busy is kept,
    /// like a `Notify` permit. Only a push that finds `IDLE` wakes the connection, so a
    /// connection holding its next write (see [`super::coalesce`]) is not woken by data.
    signal: AtomicU8,
    /// Items the last drain took, for the coalescing window's hot/quiet decision.
    last_drained: AtomicU32,
    /// The one connection task draining this queue. Cheaper than `Notify` per delivery: no
    /// waiter list and no lock, only an atomic swap of the registered waker.
    waker: AtomicWaker,
    capacity: usize,
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
        if self.take_signal() {
            return std::task::Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A push between the check above and the registration must not be lost.
        if self.take_signal() {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Clears the signal; `true` when something was pushed since the last time.
    fn take_signal(&self) -> bool {
        self.signal.swap(IDLE, Ordering::AcqRel) == PENDING
    }

    /// Wakes the draining task, once per batch: while a wake-up is pending (or the
    /// connection holds its write for a coalescing window), further pushes need none (the
    /// task drains everything queued when it runs).
    fn wake(&self) {
        if self.signal.swap(PENDING, Ordering::AcqRel) == IDLE {
            self.waker.wake();
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

    /// The connection holds again with data it knows is queued (it was woken but chose to
    /// wait): the data stays pending and pushes do not wake it.
    pub(super) fn hold_pending(&self, cx: &mut std::task::Context<'_>) {
        self.waker.register(cx.waker());
        self.signal.store(PENDING, Ordering::Release);
    }

    /// The end of a hold: `true` when something was pushed during it (or before it).
    pub(super) fn end_hold(&self) -> bool {
        self.take_signal()
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
        if state.deferred.len() == symbols.len() {
            state.deferred.copy_from_slice(symbols);
        } else {
            state.deferred = symbols.into();
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
        drop(state);
        self.last_drained.store(
            u32::try_from(out.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
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
                self.wake_now();
                return;
            }
        }
        let deferred = matches!(entry.kind, EventKind::Trade | EventKind::Quote)
            && entry.symbol.is_some_and(|symbol| {
                let word = state.deferred.get(usize::from(symbol) / 64).copied();
                word.is_some_and(|word| word & (1u64 << (symbol % 64)) != 0)
            })
            && state.items.len() < self.capacity / 2;
        state.items.push_back(Delivery::Event(Arc::clone(entry)));
        drop(state);
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
