//! The coalescing window (`hub.coalesce_window`): a connection that has fallen behind its
//! stream, or whose stream is fast, holds its next write for a short, bounded time, so that
//! one write carries every event that arrived meanwhile, while any other connection writes
//! at once.
//!
//! Why: a delivery's cost is mostly per write (the connection's wake-up, the dispatcher's
//! poll, the system call), not per byte. Without a window, a connection drains its queue as
//! soon as it is woken, which under a steady stream is right after each publish, so even an
//! overloaded server pays one write per event. This is the userspace counterpart of TCP
//! autocorking, which corks a socket only while its previous write is still in flight: here
//! the sign that the previous writes are not done is events piling up before the
//! connection gets to them.
//!
//! The rule, per connection (see `docs/websocket.md` and `docs/protocol.md`):
//! - A connection *keeps up* while each wake-up finds the one push that woke it: it writes
//!   at once. A wake-up is *late* when a second push came before the connection got to the
//!   first (the process is loaded, or the client reads slowly); what it finds still goes out
//!   at once, in one write, since it is already waiting. [`BEHIND_WRITES`] late wake-ups in
//!   a row make the connection *behind*: it holds its next write for one window, and then
//!   writes everything queued in one go. One late wake-up is not enough: a publisher's late
//!   tick followed at once by the next (any real publisher's jitter, market data's bursts)
//!   leaves two events for one wake-up now and then, and the connection is not behind for
//!   it; its next wake-up is on time again. Pushes that wake nothing (a throttled
//!   connection's deferred trades and quotes) do not make a wake-up late.
//! - A connection whose stream runs faster than [`HOT_EVENTS`] events per window (150 a
//!   second at 20 ms), averaged over the last [`HORIZON_WINDOWS`] windows of time, is
//!   treated as behind too, though each wake-up is on time: a process serving its work in
//!   turn gets to a publish request only after every connection woken by the previous one,
//!   so on one core its connections may never see two events pile up however loaded it is
//!   (the publisher's requests wait instead). The average is over time, not over writes: a
//!   leaky count of the events written, which loses what it holds in proportion to the time
//!   that passed. A publisher catching up after a stall sends its late events back to back,
//!   each woken on time; averaged per write, those short gaps outweighed the long one before
//!   them and held a stream of 100 events a second a few times per connection and 10 s
//!   (`tickgate_coalesce_holds_total{rule="rate"}`, fanout1k). Over time they only restore
//!   the stream's own rate: a stream of 100 events a second is held only after a stall of
//!   about 180 ms, whose events are late anyway.
//! - After each write a behind connection holds for one more window; pushes meanwhile wake
//!   nothing (the queue records them silently), the window's timer does.
//! - A behind connection keeps up again when a hold ends with fewer than [`HOT_EVENTS`]
//!   items to write (the stream slowed down below three events a window); its next event
//!   is written at once.
//! - A close (slow client, shutdown, reset) ends a hold at once.
//!
//! So below three events a window nothing is held where the core keeps up, however bursty
//! the stream; where the core does not keep up, connections find several events and start
//! coalescing, which frees the core. The first event after a quiet spell is never delayed,
//! and no event waits longer than one window beyond the moment it would otherwise have been
//! written. The queue bound and its slow-client policy are untouched: held events sit in the
//! same bounded queue. Ordering and encode-once are untouched too: the connection still
//! drains its queue in order and writes the shared frames (concatenated once per write).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::queue::SubscriberQueue;

/// Items per hold from which a behind connection keeps holding: below this rate a hold
/// would save little and only add latency.
pub const HOT_EVENTS: u32 = 3;

/// Late wake-ups in a row from which a connection is behind and starts holding its writes.
pub const BEHIND_WRITES: u8 = 2;

/// Connections that started holding, process-wide, by the rule that made them: late
/// wake-ups in a row, and a fast rate over time (`tickgate_coalesce_holds_total`). A counter
/// per process rather than per hub: a connection's coalescer carries no pointer for it.
pub static HOLDS_LATE: AtomicU64 = AtomicU64::new(0);
/// See [`HOLDS_LATE`].
pub static HOLDS_RATE: AtomicU64 = AtomicU64::new(0);

/// How many windows of time the rate rule averages over.
pub const HORIZON_WINDOWS: u32 = 6;

/// Fixed-point scale of [`Coalescer::load`] (events × `LOAD_ONE`).
const LOAD_ONE: u64 = 256;

/// One connection's coalescing state, kept beside its queue by the transport that writes.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    /// Late wake-ups in a row (saturating).
    late_writes: u8,
    /// Whether the wake-up that made the write now being made was late.
    woke_late: bool,
    /// Events written within about the last [`HORIZON_WINDOWS`] windows, a leaky count
    /// (times `LOAD_ONE`): each write adds its events after the count has lost the share of
    /// itself that the time since the previous write is of the horizon.
    load: u32,
    /// When it last wrote while keeping up (`None` before its first write).
    last_write: Option<Instant>,
    /// When a hold ended at its window's end: the timer's deadline, which stands for the
    /// clock when the next hold starts right after the write.
    hold_ended_at: Option<Instant>,
    /// The hold's timer, allocated the first time the connection falls behind (a connection
    /// that never does carries none), then reset for every hold.
    timer: Option<Pin<Box<Sleep>>>,
    holding: bool,
    hot: bool,
}

impl Coalescer {
    /// A coalescer with the given window; a zero window never holds (every wake-up writes).
    pub fn new(window: Duration) -> Coalescer {
        Coalescer {
            window,
            late_writes: 0,
            woke_late: false,
            load: 0,
            last_write: None,
            hold_ended_at: None,
            timer: None,
            holding: false,
            hot: false,
        }
    }

    /// Whether the connection currently holds its writes (it has fallen behind its stream).
    pub fn is_hot(&self) -> bool {
        self.hot
    }

    /// Whether a hold is running: the connection writes nothing before its window ends (a
    /// throttled connection's due releases wait for it too, see `transport::sse_throttled`).
    pub fn is_holding(&self) -> bool {
        self.holding
    }

    /// `Ready` when the connection should drain its queue and write now; `Pending` with the
    /// queue's waker (and, while holding, the window's timer) registered otherwise. Takes
    /// the place of [`SubscriberQueue::poll_notified`] for a connection that coalesces.
    pub fn poll_ready(&mut self, queue: &SubscriberQueue, cx: &mut Context<'_>) -> Poll<()> {
        if self.holding {
            let due = match self.timer.as_mut() {
                Some(timer) => timer.as_mut().poll(cx).is_ready(),
                None => true,
            };
            // A close wakes the connection during a hold (the only push that does): it
            // goes out now, not at the end of the window.
            if !due && !queue.is_closed() {
                queue.register(cx);
                return Poll::Pending;
            }
            self.holding = false;
            self.hold_ended_at = match self.timer.as_ref() {
                Some(timer) if due => Some(timer.deadline()),
                _ => None,
            };
            if queue.end_hold() {
                return Poll::Ready(());
            }
            // Nothing came during the hold: the connection keeps up again.
            self.hot = false;
            self.hold_ended_at = None;
        }
        let late = std::task::ready!(queue.poll_woken(cx));
        self.woke_late = late;
        Poll::Ready(())
    }

    /// Called after the write that followed `Ready` (not when the drain left nothing to
    /// write), with the queue it drained. A behind connection holds its next write for one
    /// window, or keeps up again if this write carried fewer than [`HOT_EVENTS`] items; one
    /// that keeps up counts its late wake-ups and holds from the [`BEHIND_WRITES`]th in a row,
    /// or once its events over the last [`HORIZON_WINDOWS`] windows pass [`HOT_EVENTS`] a
    /// window. A write no wake-up made (a throttled connection's due release) counts as on
    /// time.
    pub fn wrote(&mut self, queue: &SubscriberQueue) {
        if self.window.is_zero() {
            return;
        }
        let late = std::mem::take(&mut self.woke_late);
        let ended_at = self.hold_ended_at.take();
        if self.hot {
            if queue.last_drained() >= HOT_EVENTS {
                // At a window's end its deadline stands for the clock: no clock read.
                let now = ended_at.unwrap_or_else(Instant::now);
                self.start_hold(now + self.window);
                queue.hold();
                return;
            }
            // The stream slowed down: the connection keeps up again, its rate measured
            // afresh from this write.
            self.hot = false;
            self.late_writes = 0;
            self.load = 0;
            self.last_write = ended_at.or_else(|| Some(Instant::now()));
            return;
        }
        let now = Instant::now();
        let items = u64::from(queue.last_drained().max(1));
        let horizon = u64::from(micros(self.window)) * u64::from(HORIZON_WINDOWS);
        let kept = match self.last_write {
            Some(last) => {
                let elapsed = u64::from(micros(now - last)).min(horizon);
                u64::from(self.load) * (horizon - elapsed) / horizon.max(1)
            }
            None => 0,
        };
        self.load = u32::try_from(kept + items * LOAD_ONE).unwrap_or(u32::MAX);
        self.last_write = Some(now);
        let fast = u64::from(self.load) > u64::from(HOT_EVENTS * HORIZON_WINDOWS) * LOAD_ONE;
        self.late_writes = if late {
            self.late_writes.saturating_add(1)
        } else {
            0
        };
        let behind = self.late_writes >= BEHIND_WRITES;
        if behind || fast {
            let rule = if behind { &HOLDS_LATE } else { &HOLDS_RATE };
            rule.fetch_add(1, Ordering::Relaxed);
            self.hot = true;
            self.late_writes = 0;
            self.start_hold(now + self.window);
            queue.hold();
        }
    }

    fn start_hold(&mut self, deadline: Instant) {
        self.holding = true;
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

/// A duration in whole microseconds, saturating at `u32::MAX` (71 minutes).
fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
