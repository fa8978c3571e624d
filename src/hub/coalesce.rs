//! The coalescing window (`hub.coalesce_window`): a connection that is receiving events
//! quickly holds its next write for a short, bounded time, so that one write carries every
//! event that arrived meanwhile, while a quiet connection writes at once.
//!
//! Why: a delivery's cost is mostly per write (the connection's wake-up, the dispatcher's
//! poll, the system call), not per byte. Without a window, a connection drains its queue as
//! soon as it is woken, which under a steady stream is right after each publish, so even an
//! overloaded server pays one write per event. This is the userspace counterpart of TCP
//! autocorking.
//!
//! The rule, per connection (see `docs/websocket.md` and `docs/protocol.md`):
//! - A connection is *quiet* while it receives at most [`HOT_EVENTS`] events per window: it
//!   writes each at once and counts its writes in the current window (which starts at the
//!   first write after the previous one ended). An event that would be the fourth write
//!   within one window makes it *hot*: it holds that event for one window, and then writes
//!   everything queued in one go. Counting a whole window, not the gap to the previous
//!   write, keeps a steady stream just below the threshold (100 events a second with the
//!   timing jitter any publisher has) from being held now and then.
//! - After each write a hot connection holds for one more window; pushes meanwhile wake
//!   nothing (the queue records them silently), the window's timer does.
//! - A hot connection turns quiet again when a hold ends with fewer than [`HOT_EVENTS`]
//!   items to write (the stream slowed down); its next event is written at once.
//! - A close (slow client, shutdown, reset) ends a hold at once.
//!
//! So the first event after a quiet spell is never delayed, and no event waits longer than
//! one window beyond the moment it would otherwise have been written. The queue bound and its
//! slow-client policy are untouched: held events sit in the same bounded queue. Ordering and
//! encode-once are untouched too: the connection still drains its queue in order and writes
//! the shared frames (concatenated once per write).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::queue::SubscriberQueue;

/// Events per window from which a connection holds its writes: below this rate a hold
/// would save little and only add latency.
pub const HOT_EVENTS: u32 = 3;

/// One connection's coalescing state, kept beside its queue by the transport that writes.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    /// When the window its recent writes are counted in started (`None` before its first
    /// write); a hot connection's is its last write.
    window_start: Option<Instant>,
    /// Writes since `window_start` (saturating).
    writes_in_window: u8,
    /// When the write now being made was decided (set when `poll_ready` says go).
    ready_at: Option<Instant>,
    /// The hold's timer, allocated the first time the connection turns hot (a connection
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
            window_start: None,
            writes_in_window: 0,
            ready_at: None,
            timer: None,
            holding: false,
            hot: false,
        }
    }

    /// Whether the connection currently holds its writes (it receives events quickly).
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
        loop {
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
                if queue.end_hold() {
                    // At the window's end its deadline stands for the clock: no clock read.
                    self.ready_at = match self.timer.as_ref() {
                        Some(timer) if due => Some(timer.deadline()),
                        _ => Some(Instant::now()),
                    };
                    return Poll::Ready(());
                }
                // Nothing came during the hold: quiet again, the last write (which started
                // `window_start`) the first of its window.
                self.hot = false;
                self.writes_in_window = 1;
                continue;
            }
            if queue.poll_notified(cx).is_pending() {
                return Poll::Pending;
            }
            if self.window.is_zero() {
                return Poll::Ready(());
            }
            let now = Instant::now();
            if let Some(start) = self.window_start
                && u32::from(self.writes_in_window) >= HOT_EVENTS
                && now < start + self.window
            {
                // More than `HOT_EVENTS` events within one window: hold for one window, with
                // the data left pending so pushes wake nothing.
                self.hot = true;
                self.start_hold(now + self.window);
                queue.hold_pending(cx);
                continue;
            }
            self.ready_at = Some(now);
            return Poll::Ready(());
        }
    }

    /// Called after the write that followed `Ready` (not when the drain left nothing to
    /// write). A hot connection holds its next write for one window, or turns quiet if this
    /// write carried fewer than [`HOT_EVENTS`] items.
    pub fn wrote(&mut self, queue: &SubscriberQueue) {
        if self.window.is_zero() {
            return;
        }
        let now = self.ready_at.take().unwrap_or_else(Instant::now);
        if self.hot {
            if queue.last_drained() >= HOT_EVENTS {
                self.window_start = Some(now);
                self.start_hold(now + self.window);
                queue.hold();
                return;
            }
            // The stream slowed down: quiet again, this write the first of a new window.
            self.hot = false;
            self.window_start = Some(now);
            self.writes_in_window = 1;
            return;
        }
        match self.window_start {
            Some(start) if now < start + self.window => {
                self.writes_in_window = self.writes_in_window.saturating_add(1);
            }
            _ => {
                self.window_start = Some(now);
                self.writes_in_window = 1;
            }
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

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod tests;
