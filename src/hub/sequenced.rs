//! What a cluster node does to its hub (see `cluster::local::HubSink`): events sequenced by the
//! shared log are appended with their given numbers, a log that cannot continue is reset with
//! an explicit reset for clients, latest values older than the shared window are seeded, and
//! status notices go out without touching any feed's log.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use chrono::Utc;

use super::entry::{encode_entry, encode_notice};
use super::{CloseReason, Cursor, Delivery, Feed, Hub, PublishError, Published};
use crate::market::MarketEvent;

impl Hub {
    /// Cluster mode: from now on only the shared log sequences this hub's feeds; what the
    /// node itself has to say goes out with [`Hub::notify_status`] instead.
    pub fn follow_shared_log(&self) {
        self.clustered.store(true, Ordering::Relaxed);
    }

    /// Whether [`Hub::follow_shared_log`] was called.
    pub fn follows_shared_log(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    /// Appends an event the shared log already validated and sequenced: `json` is its encoding
    /// as published, `seq` its place in its feed. Per-symbol time order was checked where it
    /// was sequenced, so it is recorded here but not enforced.
    pub fn apply_sequenced(&self, seq: u64, json: &[u8]) -> Result<Published, PublishError> {
        let event: MarketEvent =
            serde_json::from_slice(json).map_err(|e| PublishError::Encode(e.to_string()))?;
        let prepared = self.prepare(&event, false)?;
        self.append(event, prepared, json, Some(seq))
    }

    /// Starts `feed`'s log afresh: the epoch becomes `epoch`, the window is emptied and the
    /// next event gets `next_seq`. With `tell_clients`, every subscriber of the feed is closed
    /// with [`CloseReason::Reset`]; resuming with its old cursor then gets an explicit reset
    /// (another epoch, or a cursor older than the emptied window). Latest values stay.
    pub fn reset_feed(&self, feed: Feed, epoch: u64, next_seq: u64, tell_clients: bool) {
        self.epoch.store(epoch, Ordering::Relaxed);
        let mut state = self.feeds[feed.index()].lock();
        state.window.clear();
        state.window_bytes = 0;
        self.metrics.replay_window_bytes[feed.index()].store(0, Ordering::Relaxed);
        state.next_seq = next_seq.max(1);
        if tell_clients {
            for registration in state.subscribers.drain(..) {
                registration
                    .queue
                    .push_control(Delivery::Close(CloseReason::Reset));
            }
        }
    }

    /// Latest values taken from the shared log without their place in the window (older than
    /// the retained stream): each the JSON of a trade, quote or bar and the sequence it was
    /// published at.
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
                // Latest values reach clients only inside snapshots, which are JSON.
                None,
            ));
            self.record_latest(id, &event, &entry);
        }
    }

    /// Sends a `status` event that is in no feed's log (no id, sequence 0, so no cursor moves)
    /// to every subscriber, once per queue: `sc` is `code`, `sm` is `message`.
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
        let trading = super::trading_status::is_trading_status(code);
        let entry = Arc::new(encode_notice(&json, trading));
        // A WebSocket session's one queue is registered on each feed it follows: once each.
        let mut told = HashSet::new();
        for feed in Feed::ALL {
            let state = self.feeds[feed.index()].lock();
            if state.sealed {
                // Shutdown's final `shutdown` status is the last thing a stream gets.
                continue;
            }
            for registration in &state.subscribers {
                if !registration.queue.is_gone() && told.insert(Arc::as_ptr(&registration.queue)) {
                    registration.queue.push_event(&entry, &self.metrics);
                }
            }
        }
        if trading && !self.is_shut_down() {
            // Sessions that trade without following market data hear it too, still once.
            self.tell_trading_listeners(code, &entry, &mut told);
        }
    }
}
