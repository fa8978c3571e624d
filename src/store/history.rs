//! Background tasks that keep market history: the bar writer (a hub subscriber that stores
//! one-minute bars in batches) and the pruner (drops bars older than the retention).
//!
//! Ingest never waits on the writer: it is an ordinary bounded hub subscriber. If it falls
//! behind far enough to be closed as a slow client, it resubscribes from its last cursor and
//! gets the missed bars from the replay window; only if they left the window too are bars
//! lost, and that is logged as an error.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{HistoryStore, StoreHealth};
use crate::hub::{CloseReason, Cursor, Delivery, Feed, Filter, Hub, SubscriberQueue, SymbolFilter};
use crate::market::{Bar, EventKind, MarketEvent};
use crate::store::StoreSettings;

/// Bars kept in memory while the database refuses writes (e.g. a full disk); beyond this the
/// oldest are dropped with an error in the log.
const MAX_PENDING_BARS: usize = 100_000;

/// Rows deleted per prune step.
const PRUNE_CHUNK: usize = 5_000;

fn bar_filter() -> Filter {
    Filter {
        symbols: SymbolFilter::All,
        kinds: EventKind::Bar.bit(),
    }
}

struct BarWriter {
    hub: Arc<Hub>,
    history: Arc<dyn HistoryStore>,
    settings: StoreSettings,
    health: StoreHealth,
    queue: Arc<SubscriberQueue>,
    last_seq: Option<u64>,
    pending: Vec<Bar>,
}

impl BarWriter {
    fn take_entry(&mut self, entry: &crate::hub::Entry) {
        // Sequence 0 is a notice outside the log (a cluster status), not a position.
        if entry.seq == 0 {
            return;
        }
        self.last_seq = Some(entry.seq);
        if entry.kind != EventKind::Bar {
            return;
        }
        match serde_json::from_slice::<MarketEvent>(&entry.json) {
            Ok(MarketEvent::Bar(bar)) => self.pending.push(bar),
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "bar writer could not decode a bar"),
        }
    }

    /// Moves queued deliveries into `pending`; resubscribes if the hub closed the queue.
    fn drain(&mut self, scratch: &mut VecDeque<Delivery>) {
        self.queue.drain_into(scratch);
        let mut closed_slow = false;
        for delivery in scratch.drain(..) {
            match delivery {
                Delivery::Event(entry) => self.take_entry(&entry),
                Delivery::Heartbeat | Delivery::Close(CloseReason::Shutdown) => {}
                Delivery::Close(CloseReason::SlowClient) => closed_slow = true,
                Delivery::Close(CloseReason::Reset) => {
                    // The log started afresh (cluster mode): follow the new one from its start.
                    self.last_seq = None;
                    closed_slow = true;
                }
            }
        }
        if closed_slow {
            self.resubscribe();
        }
    }

    fn resubscribe(&mut self) {
        self.queue.mark_gone();
        self.queue = bar_queue(&self.settings);
        let resume = self.last_seq.map(|seq| Cursor {
            epoch: self.hub.cursor(Feed::Market).epoch,
            seq,
        });
        let subscribed = self
            .hub
            .subscribe(Feed::Market, bar_filter(), resume, false, &self.queue);
        if let Some(reason) = subscribed.reset {
            tracing::error!(
                reason = reason.message(),
                "bar writer fell behind the replay window; some bars were not stored"
            );
            self.health
                .set_degraded("bar history has a gap: the bar writer fell behind".into());
        }
        for entry in &subscribed.replay {
            self.take_entry(entry);
        }
    }

    async fn flush(&mut self) {
        while !self.pending.is_empty() {
            let take = self.pending.len().min(self.settings.bar_batch_size.max(1));
            let batch: Vec<Bar> = self.pending.drain(..take).collect();
            let count = batch.len();
            if let Err(error) = self.history.write_bars(batch.clone()).await {
                tracing::error!(%error, bars = batch.len(), "could not store bars; will retry");
                // Put them back in front and try again at the next flush.
                self.pending.splice(0..0, batch);
                if self.pending.len() > MAX_PENDING_BARS {
                    let excess = self.pending.len() - MAX_PENDING_BARS;
                    self.pending.drain(..excess);
                    tracing::error!(dropped = excess, "dropped unstored bars");
                }
                return;
            }
            self.hub.metrics().add_counter(
                "tickgate_store_bars_written_total",
                "One-minute bars written to the store.",
                "",
                count as f64,
            );
        }
    }
}

/// Fewest bars the writer's queue holds, whatever the batch size.
const MIN_BAR_QUEUE: usize = 1024;

/// The bar writer's own queue: room for four batches, so a flush in progress does not make
/// the hub drop it as a slow subscriber.
fn bar_queue(settings: &StoreSettings) -> Arc<SubscriberQueue> {
    SubscriberQueue::with_capacity(settings.bar_batch_size.saturating_mul(4).max(MIN_BAR_QUEUE))
}

/// Subscribes to the market feed's bars now (so a bar published right after start-up is not
/// missed while the task waits for its first poll) and returns the task that stores them in
/// batches until `shutdown`, then flushes what is left.
pub fn run_bar_writer(
    hub: Arc<Hub>,
    history: Arc<dyn HistoryStore>,
    settings: StoreSettings,
    health: StoreHealth,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let queue = bar_queue(&settings);
    hub.subscribe(Feed::Market, bar_filter(), None, false, &queue);
    write_bars(hub, history, settings, health, queue, shutdown)
}

async fn write_bars(
    hub: Arc<Hub>,
    history: Arc<dyn HistoryStore>,
    settings: StoreSettings,
    health: StoreHealth,
    queue: Arc<SubscriberQueue>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(settings.bar_flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer = BarWriter {
        hub,
        history,
        settings,
        health,
        queue,
        last_seq: None,
        pending: Vec::new(),
    };
    let mut scratch = VecDeque::new();
    loop {
        let queue = Arc::clone(&writer.queue);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = queue.notified() => {
                writer.drain(&mut scratch);
                if writer.pending.len() >= writer.settings.bar_batch_size {
                    writer.flush().await;
                }
            }
            _ = ticker.tick() => writer.flush().await,
        }
    }
    writer.drain(&mut scratch);
    writer.flush().await;
    writer.queue.mark_gone();
}

/// Deletes bars older than `bar_retention`, at start-up and then every `prune_interval`.
pub async fn run_pruner(
    history: Arc<dyn HistoryStore>,
    settings: StoreSettings,
    shutdown: CancellationToken,
) {
    let Ok(retention) = chrono::Duration::from_std(settings.bar_retention) else {
        tracing::info!("bar retention is unbounded; pruner not started");
        return;
    };
    let mut ticker = tokio::time::interval(settings.prune_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(before) = Utc::now().checked_sub_signed(retention) else {
            continue;
        };
        let mut removed = 0u64;
        loop {
            match history.prune_bars(before, PRUNE_CHUNK).await {
                Ok(count) => {
                    removed += count;
                    if count < PRUNE_CHUNK as u64 || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning bars failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, %before, "pruned old bars");
        }
    }
}
