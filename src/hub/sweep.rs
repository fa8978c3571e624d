//! The shared heartbeat and keep-alive sweeps: connections own no timers; one task per sweep
//! visits every queue once per interval, in [`SWEEP_SLICES`] ticks so a large population is
//! not written to in one burst.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::queue::{Delivery, SWEEP_SLICES, SubscriberQueue};
use super::{Feed, Hub};

impl Hub {
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
        self.keepalive
            .lock()
            .push((queue.slice(), Arc::clone(queue)));
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
