//! Shared throttles: the market feed conflated once per distinct `max_rate` in use, so a
//! throttled subscriber is pushed only what its rate lets out, as an unthrottled one is pushed
//! the raw feed, and pays nothing for what was conflated away.
//!
//! Rules kept here (docs/protocol.md, "Throttled streams"):
//! - One [`SharedThrottle`] per [`StageKey`] (the rate, and whether the subscription wants
//!   trades, quotes or both: a quote-only subscriber's symbol is not made busy by trades it
//!   never sees). Stages are made on first use, live while a subscriber is registered, and
//!   are at most [`MAX_SHARED_THROTTLES`] at a time: past that a new subscription gets a
//!   throttle of its own (the per-connection path), so a client cycling through rates
//!   cannot make the hub do unbounded work per event.
//! - A stage runs one [`Throttle`] over every market event of its kinds (the hub feeds it
//!   under the feed lock, in sequence order) and pushes what it releases to each of its
//!   subscribers whose filter matches. Symbols' windows are the stage's: a symbol is quiet
//!   for a subscriber when it is quiet for the stage, since both see the same updates of it.
//!   A subscriber that joins while a symbol's window runs gets that symbol's next update at
//!   the window's end, not at once.
//! - What the publisher's call releases (a quiet symbol's first update, bars, statuses) is
//!   pushed at once; what waits for a window end is released by the stage's own timer task.
//! - [`SharedThrottle::cursor`] is the stage's resume point (everything at or below it was
//!   pushed to its subscribers, or replaced by a newer one of its symbol and kind that was).
//!   It is stored after the pushes it covers, so a connection that reads it *before*
//!   draining its queue finds everything it claims in what it drained.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::entry::Entry;
use super::{Cursor, Feed, FeedState, Filter, Registration, Subscribed, SubscriberQueue, Throttle};
use crate::hub::MaxRate;
use crate::market::EventKind;
use crate::metrics::Metrics;

/// The most stages a hub runs at once; a subscription with a new key past this gets a
/// per-connection throttle.
pub const MAX_SHARED_THROTTLES: usize = 16;

/// What a stage conflates for: the rate, and the trade and quote bits of the subscription's
/// kinds (bars and statuses pass every stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageKey {
    pub rate: MaxRate,
    pub kinds: u8,
}

impl StageKey {
    /// The key of a subscription wanting `kinds`; `None` when it wants neither trades nor
    /// quotes (nothing of it is ever conflated).
    pub fn for_kinds(rate: MaxRate, kinds: u8) -> Option<StageKey> {
        let kinds = kinds & (EventKind::Trade.bit() | EventKind::Quote.bit());
        (kinds != 0).then_some(StageKey { rate, kinds })
    }
}

/// One shared conflation stage (see the module docs).
pub struct SharedThrottle {
    key: StageKey,
    state: Mutex<StageState>,
    /// [`Throttle::cursor`] after the last release and its pushes.
    cursor: AtomicU64,
    /// Wakes the timer task when a release is due earlier than it sleeps for, or the stage
    /// was retired.
    wake: Notify,
    /// Set (under the feed lock) when the hub dropped the stage; the timer task ends.
    retired: AtomicBool,
}

impl std::fmt::Debug for SharedThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedThrottle")
            .field("key", &self.key)
            .finish()
    }
}

struct StageState {
    throttle: Throttle,
    subscribers: Vec<Registration>,
    /// Reused buffer of what one release let out.
    released: Vec<Arc<Entry>>,
    /// When the timer task was last told to release.
    armed: Option<Instant>,
}

impl SharedThrottle {
    /// A stage whose resume point starts at `cursor` (the market feed's head), with its timer
    /// task spawned on the current runtime.
    pub(super) fn start(key: StageKey, cursor: u64, metrics: Arc<Metrics>) -> Arc<SharedThrottle> {
        let stage = Arc::new(SharedThrottle {
            key,
            state: Mutex::new(StageState {
                throttle: Throttle::new(key.rate, Instant::now(), cursor),
                subscribers: Vec::new(),
                released: Vec::new(),
                armed: None,
            }),
            cursor: AtomicU64::new(cursor),
            wake: Notify::new(),
            retired: AtomicBool::new(false),
        });
        tokio::spawn(run_timer(Arc::clone(&stage), metrics));
        stage
    }

    pub fn key(&self) -> StageKey {
        self.key
    }

    /// The market-feed sequence a subscriber may resume after, once it has drained its queue
    /// (read it before draining).
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// Registers one more subscriber.
    pub(super) fn add(&self, registration: Registration) {
        self.state.lock().subscribers.push(registration);
    }

    /// Removes a queue's registration, handing it (at once) what the stage holds that its
    /// filter wants, so a subscriber leaving for another stage or the raw feed loses no
    /// newest value. Returns whether it was registered.
    pub(super) fn remove(&self, queue: &Arc<super::SubscriberQueue>, metrics: &Metrics) -> bool {
        let mut state = self.state.lock();
        let Some(at) = state
            .subscribers
            .iter()
            .position(|r| Arc::ptr_eq(&r.queue, queue))
        else {
            return false;
        };
        let registration = state.subscribers.swap_remove(at);
        let mut held = Vec::new();
        state.throttle.held_into(&mut held);
        for entry in held
            .iter()
            .filter(|entry| registration.filter.matches(entry))
        {
            registration.queue.push_event(entry, metrics);
        }
        true
    }

    /// Live subscribers (those whose connection is not gone).
    pub(super) fn subscriber_count(&self) -> usize {
        self.state
            .lock()
            .subscribers
            .iter()
            .filter(|r| !r.queue.is_gone())
            .count()
    }

    /// Takes in one market event (under the feed lock, in sequence order) and pushes what it
    /// lets out at once. Returns whether the stage still has a subscriber.
    pub(super) fn publish(&self, entry: &Arc<Entry>, metrics: &Metrics) -> bool {
        let mut state = self.state.lock();
        // Whether anyone is left: the first live subscriber answers it, so this is no
        // per-subscriber work on a market event that may be conflated away. Gone
        // subscribers are removed by the next release's fan-out.
        if !state.subscribers.iter().any(|r| !r.queue.is_gone()) {
            state.subscribers.clear();
            return false;
        }
        let conflated = matches!(entry.kind, EventKind::Trade | EventKind::Quote);
        if conflated && self.key.kinds & entry.kind.bit() == 0 {
            state.throttle.pass_over(entry);
        } else {
            state.throttle.take(Arc::clone(entry));
        }
        self.release_locked(&mut state, Instant::now(), metrics);
        true
    }

    /// Releases what is due and pushes it; re-arms the timer task if the next release moved
    /// earlier.
    fn release_locked(&self, state: &mut StageState, now: Instant, metrics: &Metrics) {
        let StageState {
            throttle,
            subscribers,
            released,
            armed,
        } = state;
        throttle.release(now, released);
        if !released.is_empty() {
            fan_out(subscribers, released, metrics);
        }
        let replaced = throttle.take_replaced();
        if replaced != 0 {
            metrics.throttled.fetch_add(replaced, Ordering::Relaxed);
        }
        self.cursor.store(throttle.cursor(), Ordering::Release);
        let next = throttle.next_release();
        let earlier = match (next, *armed) {
            (Some(next), Some(current)) => next < current,
            (Some(_), None) => true,
            (None, _) => false,
        };
        *armed = next;
        if earlier {
            self.wake.notify_one();
        }
    }

    /// Shutdown: everything held goes to the subscribers now (before their close).
    pub(super) fn flush(&self, metrics: &Metrics) {
        let mut state = self.state.lock();
        let StageState {
            throttle,
            subscribers,
            released,
            ..
        } = &mut *state;
        throttle.release_all(released);
        fan_out(subscribers, released, metrics);
        self.cursor.store(throttle.cursor(), Ordering::Release);
    }

    /// Pushes a control item (the shutdown close) to every subscriber.
    pub(super) fn push_control(&self, delivery: &super::Delivery) {
        for registration in &self.state.lock().subscribers {
            registration.queue.push_control(delivery.clone());
        }
    }

    /// The hub dropped this stage: its timer task ends.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Pushes `released` (in order) to every subscriber whose filter wants it, and empties it;
/// subscribers whose connection is gone are removed on the way.
fn fan_out(subscribers: &mut Vec<Registration>, released: &mut Vec<Arc<Entry>>, metrics: &Metrics) {
    subscribers.retain(|registration| {
        if registration.queue.is_gone() {
            return false;
        }
        for entry in released.iter() {
            if registration.filter.matches(entry) {
                registration.queue.push_event(entry, metrics);
            }
        }
        true
    });
    released.clear();
}

/// The stage's timer: sleeps until the throttle's next window end and releases what is due,
/// until the hub retires the stage.
async fn run_timer(stage: Arc<SharedThrottle>, metrics: Arc<Metrics>) {
    loop {
        if stage.retired.load(Ordering::Acquire) {
            return;
        }
        let due = stage.state.lock().armed;
        match due {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = stage.wake.notified() => continue,
                }
            }
            None => {
                stage.wake.notified().await;
                continue;
            }
        }
        let mut state = stage.state.lock();
        stage.release_locked(&mut state, Instant::now(), &metrics);
    }
}

/// Registration through the stages (the hub's side).
impl super::Hub {
    /// [`Hub::subscribe`] on the market feed at `rate`, through the shared throttle of its
    /// [`StageKey`] (made if none runs): the queue is then pushed only what the stage lets
    /// out. Returns the stage, or `None` when the filter wants neither trades nor quotes or
    /// [`MAX_SHARED_THROTTLES`] other stages run; the queue is then registered on the raw
    /// feed, as by [`Hub::subscribe`], and the caller throttles it itself.
    pub fn subscribe_throttled(
        &self,
        filter: Filter,
        rate: MaxRate,
        resume: Option<Cursor>,
        want_snapshot: bool,
        queue: &Arc<SubscriberQueue>,
    ) -> (Subscribed, Option<Arc<SharedThrottle>>) {
        self.subscribe_inner(
            Feed::Market,
            filter,
            resume,
            want_snapshot,
            queue,
            Some(rate),
        )
    }

    /// The running stage of `key`, or a new one (cursor at the feed's head `newest`) if
    /// fewer than [`MAX_SHARED_THROTTLES`] run; `None` past the cap.
    pub(super) fn stage_locked(
        &self,
        state: &mut FeedState,
        key: StageKey,
        newest: u64,
    ) -> Option<Arc<SharedThrottle>> {
        if let Some(stage) = state.stages.iter().find(|stage| stage.key() == key) {
            return Some(Arc::clone(stage));
        }
        // A stage's timer is a task: without a runtime to run it (or once shut down, or
        // past the cap) the caller throttles on its own.
        if state.sealed
            || state.stages.len() >= MAX_SHARED_THROTTLES
            || tokio::runtime::Handle::try_current().is_err()
        {
            return None;
        }
        let stage = SharedThrottle::start(key, newest, Arc::clone(&self.metrics));
        state.stages.push(Arc::clone(&stage));
        Some(stage)
    }

    /// Moves a market-feed queue registered through [`Hub::subscribe_throttled`] to another
    /// filter or rate (`None`: the raw feed) in one step under the feed lock, so no event is
    /// lost or repeated: what its old stage held that the queue wants is pushed to it first
    /// (at once, whatever the rate), then the new registration takes every later event.
    /// Returns the new stage (as [`Hub::subscribe_throttled`]).
    pub fn move_market_registration(
        &self,
        queue: &Arc<SubscriberQueue>,
        filter: Filter,
        rate: Option<MaxRate>,
    ) -> Option<Arc<SharedThrottle>> {
        let mut state = self.feeds[Feed::Market.index()].lock();
        let newest = state.next_seq - 1;
        state.subscribers.retain(|r| !Arc::ptr_eq(&r.queue, queue));
        for stage in &state.stages {
            stage.remove(queue, &self.metrics);
        }
        let registration = Registration {
            queue: Arc::clone(queue),
            filter,
            slice: queue.slice(),
        };
        let stage = rate
            .and_then(|rate| StageKey::for_kinds(rate, registration.filter.kinds))
            .and_then(|key| self.stage_locked(&mut state, key, newest));
        match &stage {
            Some(stage) => stage.add(registration),
            None => state.subscribers.push(registration),
        }
        stage
    }

    /// How many shared throttles run (for tests and metrics).
    pub fn shared_throttle_count(&self) -> usize {
        self.feeds[Feed::Market.index()].lock().stages.len()
    }
}

#[cfg(test)]
#[path = "shared_throttle_tests.rs"]
mod tests;
