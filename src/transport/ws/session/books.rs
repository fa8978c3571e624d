//! Order books: the `orderbooks` stream and the `resync` action. One forwarder task per
//! subscribed book moves the exchange's per-symbol broadcast into the session's channel.
//! Invariants kept here:
//! - Order-book `seq` rises by exactly one per symbol for the life of the connection (across
//!   unsubscribe/subscribe and resyncs too); when deltas were lost (lag) the client gets a
//!   fresh snapshot instead of a gap.
//! - Messages of a replaced book stream (an older generation) are ignored, so a resync never
//!   mixes deltas from before its snapshot into what follows.
//! - An idle market-data connection carries no book channel: it is created with the first
//!   order-book subscription.
//! - With a `max_rate` each book sends at most one delta per window: the deltas of the window
//!   merged ([`MergedDelta`], each level at its latest size, zero for removed), which applied
//!   to the book the client holds gives exactly the book after the newest of them. A quiet
//!   book's first delta goes out at once; snapshots are never held, and a new snapshot drops
//!   the merged deltas it already contains.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::error::ErrorCode;
use crate::hub::MaxRate;
use crate::trading::api::{BookLevels, BookUpdate, TradingApi};

use super::WsSession;
use super::frames::{Output, array, error_frame};
use super::parse::{check_keys, symbol_list};

/// Most book messages coalesced into one frame.
const MAX_BATCH: usize = 256;
/// Book messages waiting between the forwarders and the session.
const CHANNEL_CAPACITY: usize = 1024;

/// A book update forwarded from a per-symbol broadcast; `update: None` means deltas were lost.
#[derive(Debug)]
pub struct BookMessage {
    symbol: String,
    generation: u64,
    update: Option<BookUpdate>,
}

struct BookStream {
    generation: u64,
    forwarder: JoinHandle<()>,
}

type BookChannel = (mpsc::Sender<BookMessage>, mpsc::Receiver<BookMessage>);

/// The order books one session follows.
#[derive(Default)]
pub(super) struct Books {
    streams: BTreeMap<String, BookStream>,
    /// The last `seq` sent per symbol; kept after an unsubscribe so it never restarts.
    seq: HashMap<String, u64>,
    next_generation: u64,
    channel: Option<BookChannel>,
    /// Throttled books (`max_rate`); boxed, so a session without one carries a pointer.
    pacing: Option<Box<BookPacing>>,
}

/// The order-book `max_rate` (`None` once removed, until what it held went out) and each
/// throttled book's window and merged deltas.
#[derive(Debug, Default)]
struct BookPacing {
    rate: Option<MaxRate>,
    paced: HashMap<String, BookPace>,
}

/// The deltas of one book over a window, merged: each level at its latest size (zero when
/// removed). Deltas carry absolute sizes, so applying the merge equals applying them in turn.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct MergedDelta {
    bids: BTreeMap<rust_decimal::Decimal, rust_decimal::Decimal>,
    asks: BTreeMap<rust_decimal::Decimal, rust_decimal::Decimal>,
    t: Option<chrono::DateTime<chrono::Utc>>,
}

impl MergedDelta {
    pub(super) fn add(&mut self, update: &BookUpdate) {
        self.bids.extend(update.bids.iter().copied());
        self.asks.extend(update.asks.iter().copied());
        self.t = Some(update.t);
    }

    /// The merged delta of `symbol`, each side best first as the exchange sends them.
    pub(super) fn into_update(self, symbol: &str) -> BookUpdate {
        let bids: BookLevels = self.bids.into_iter().rev().collect();
        let asks: BookLevels = self.asks.into_iter().collect();
        BookUpdate {
            symbol: symbol.to_owned(),
            snapshot: false,
            bids,
            asks,
            t: self.t.unwrap_or_default(),
        }
    }
}

/// One throttled book: when its window ends, and what waits for it.
#[derive(Debug)]
struct BookPace {
    open_at: tokio::time::Instant,
    pending: Option<MergedDelta>,
}

impl Books {
    /// Whether any book was ever subscribed (the channel stays for the session's life).
    pub(super) fn is_open(&self) -> bool {
        self.channel.is_some()
    }

    /// The next forwarded message; pending while no book was ever subscribed. Cancel-safe.
    pub(super) async fn recv(&mut self) -> Option<BookMessage> {
        match &mut self.channel {
            Some((_, receiver)) => receiver.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The `o` object for `update`, with the symbol's next `seq`.
    fn object(&mut self, update: &BookUpdate) -> String {
        let seq = self.seq.entry(update.symbol.clone()).or_insert(0);
        *seq += 1;
        let mut object = json!({
            "T": "o",
            "S": update.symbol,
            "seq": *seq,
            "b": decimal_levels(&update.bids),
            "a": decimal_levels(&update.asks),
            "t": update.t,
        });
        if update.snapshot
            && let Some(map) = object.as_object_mut()
        {
            map.insert("snapshot".into(), Value::Bool(true));
        }
        object.to_string()
    }
}

impl Books {
    /// Sets or removes the order-book `max_rate`; removing it sends what waits at the next
    /// release.
    pub(super) fn set_rate(&mut self, rate: Option<MaxRate>) {
        match (rate, self.pacing.as_mut()) {
            (Some(_), _) => self.pacing.get_or_insert_with(Box::default).rate = rate,
            (None, Some(pacing)) => {
                pacing.rate = None;
                let now = tokio::time::Instant::now();
                for pace in pacing.paced.values_mut() {
                    pace.open_at = now;
                }
            }
            (None, None) => {}
        }
    }

    fn throttled(&self) -> bool {
        self.pacing
            .as_ref()
            .is_some_and(|pacing| pacing.rate.is_some())
    }

    /// Forgets the merged deltas waiting for `symbol` (a snapshot holds them already).
    fn drop_pending(&mut self, symbol: &str) {
        if let Some(pace) = self
            .pacing
            .as_mut()
            .and_then(|pacing| pacing.paced.get_mut(symbol))
        {
            pace.pending = None;
        }
    }

    /// When the next throttled book's window ends with a merged delta waiting.
    pub(super) fn next_release(&self) -> Option<tokio::time::Instant> {
        self.pacing
            .as_ref()?
            .paced
            .values()
            .filter(|pace| pace.pending.is_some())
            .map(|pace| pace.open_at)
            .min()
    }

    /// Takes a delta of a current book stream: returns it to send now, or merges it into the
    /// book's window and returns `None`.
    fn pace(&mut self, update: BookUpdate, now: tokio::time::Instant) -> Option<BookUpdate> {
        let Some(pacing) = self.pacing.as_mut() else {
            return Some(update);
        };
        let Some(rate) = pacing.rate else {
            return Some(update);
        };
        let pace = pacing
            .paced
            .entry(update.symbol.clone())
            .or_insert_with(|| BookPace {
                open_at: now,
                pending: None,
            });
        if pace.open_at <= now && pace.pending.is_none() {
            pace.open_at = now + rate.interval();
            return Some(update);
        }
        pace.pending
            .get_or_insert_with(MergedDelta::default)
            .add(&update);
        None
    }

    /// The merged deltas whose window has ended, each starting a new window.
    fn release_due(&mut self, now: tokio::time::Instant) -> Vec<BookUpdate> {
        let Some(pacing) = self.pacing.as_mut() else {
            return Vec::new();
        };
        let interval = pacing.rate.map_or(Duration::ZERO, MaxRate::interval);
        let mut out = Vec::new();
        for (symbol, pace) in &mut pacing.paced {
            if pace.open_at <= now
                && let Some(merged) = pace.pending.take()
            {
                pace.open_at = now + interval;
                out.push(merged.into_update(symbol));
            }
        }
        if pacing.rate.is_none() && pacing.paced.values().all(|pace| pace.pending.is_none()) {
            // The rate was removed and what it held is out.
            self.pacing = None;
        }
        out.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        out
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        for stream in self.streams.values() {
            stream.forwarder.abort();
        }
    }
}

fn decimal_levels(levels: &[(Decimal, Decimal)]) -> Value {
    Value::Array(
        levels
            .iter()
            .map(|(price, size)| json!([price.to_string(), size.to_string()]))
            .collect(),
    )
}

impl WsSession {
    /// Opens the books that were added to the subscriptions and closes the removed ones.
    pub(super) fn update_books(&mut self, trading: &dyn TradingApi, out: &mut Vec<Output>) {
        if self.streams.is_none() && self.subs.orderbooks.is_empty() {
            // No book was ever opened and none is asked for: nothing to create.
            return;
        }
        let subs = &self.subs;
        let removed: Vec<String> = self
            .streams
            .as_ref()
            .map(|s| {
                s.books
                    .streams
                    .keys()
                    .filter(|symbol| !subs.orderbooks.contains(*symbol))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for symbol in removed {
            if let Some(stream) = self.streams().books.streams.remove(&symbol) {
                stream.forwarder.abort();
            }
            if let Some(pacing) = self.streams().books.pacing.as_mut() {
                pacing.paced.remove(&symbol);
            }
        }
        let added: Vec<String> = self
            .subs
            .orderbooks
            .iter()
            .filter(|s| {
                !self
                    .streams
                    .as_ref()
                    .is_some_and(|streams| streams.books.streams.contains_key(*s))
            })
            .cloned()
            .collect();
        for symbol in added {
            self.open_book(trading, &symbol, out);
        }
    }

    /// (Re)opens the book of `symbol`: a snapshot now, then its deltas through a forwarder.
    fn open_book(&mut self, trading: &dyn TradingApi, symbol: &str, out: &mut Vec<Output>) {
        if let Some(old) = self.streams().books.streams.remove(symbol) {
            old.forwarder.abort();
        }
        let (snapshot, mut receiver) = match trading.book(symbol) {
            Ok(pair) => pair,
            Err(error) => {
                self.subs.orderbooks.remove(symbol);
                out.push(error_frame(None, ErrorCode::InvalidSyntax, &error.message));
                return;
            }
        };
        // The snapshot already holds whatever merged deltas were waiting.
        self.streams().books.drop_pending(symbol);
        self.streams().books.next_generation += 1;
        let generation = self.streams().books.next_generation;
        let sender = self
            .streams()
            .books
            .channel
            .get_or_insert_with(|| mpsc::channel(CHANNEL_CAPACITY))
            .0
            .clone();
        let name = symbol.to_owned();
        let forwarder = tokio::spawn(async move {
            loop {
                let update = match receiver.recv().await {
                    Ok(update) => Some(update),
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let lost = update.is_none();
                let message = BookMessage {
                    symbol: name.clone(),
                    generation,
                    update,
                };
                if sender.send(message).await.is_err() || lost {
                    return;
                }
            }
        });
        self.streams().books.streams.insert(
            symbol.to_owned(),
            BookStream {
                generation,
                forwarder,
            },
        );
        out.push(Output::frame(format!(
            "[{}]",
            self.streams().books.object(&snapshot)
        )));
    }

    /// `resync`: a fresh snapshot of each named (subscribed) book.
    pub(super) fn resync_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        if let Err(refusal) = check_keys(map, "resync", &["orderbooks"]) {
            out.push(error_frame(id, refusal.code, &refusal.msg));
            return;
        }
        let Some(value) = map.get("orderbooks") else {
            out.push(error_frame(
                id,
                ErrorCode::InvalidSyntax,
                "orderbooks is required",
            ));
            return;
        };
        let universe = self.deps.hub.universe();
        let set = match symbol_list(universe, value, "orderbooks", false) {
            Ok(set) => set,
            Err(refusal) => {
                out.push(error_frame(id, refusal.code, &refusal.msg));
                return;
            }
        };
        let names: Vec<String> = set
            .ids
            .iter()
            .map(|i| universe.name(*i).to_owned())
            .collect();
        // An empty list would produce no frame at all, leaving a client waiting for a reply.
        if names.is_empty() {
            out.push(error_frame(
                id,
                ErrorCode::InvalidSyntax,
                "orderbooks must name at least one subscribed order book",
            ));
            return;
        }
        let open = self.streams.as_ref().map(|s| &s.books.streams);
        if let Some(missing) = names
            .iter()
            .find(|n| !open.is_some_and(|open| open.contains_key(*n)))
        {
            out.push(error_frame(
                id,
                ErrorCode::InvalidSyntax,
                &format!("not subscribed to the {missing} order book"),
            ));
            return;
        }
        let trading = std::sync::Arc::clone(&self.deps.trading);
        for name in names {
            self.open_book(trading.as_ref(), &name, out);
        }
    }

    /// Frames `first` and whatever else is already forwarded (up to [`MAX_BATCH`]); a book
    /// whose deltas were lost is reopened with a snapshot.
    pub(super) fn on_book_messages(&mut self, first: BookMessage, out: &mut Vec<Output>) {
        let now = tokio::time::Instant::now();
        let mut objects = Vec::new();
        let mut lagged = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let current = self
                .streams()
                .books
                .streams
                .get(&message.symbol)
                .is_some_and(|b| b.generation == message.generation);
            if current {
                match message.update {
                    Some(update) => {
                        if !self.streams().books.throttled() || update.snapshot {
                            // A snapshot replaces whatever merged deltas were waiting.
                            self.streams().books.drop_pending(&update.symbol);
                            objects.push(self.streams().books.object(&update));
                        } else if let Some(update) = self.streams().books.pace(update, now) {
                            objects.push(self.streams().books.object(&update));
                        }
                    }
                    None => lagged.push(message.symbol.clone()),
                }
            }
            if objects.len() < MAX_BATCH {
                next = self
                    .streams()
                    .books
                    .channel
                    .as_mut()
                    .and_then(|(_, receiver)| receiver.try_recv().ok());
            }
        }
        if !objects.is_empty() {
            out.push(Output::frame(array(&objects)));
        }
        self.on_books_due(out);
        let trading = std::sync::Arc::clone(&self.deps.trading);
        for symbol in lagged {
            // Deltas were lost: a fresh snapshot replaces the gap.
            self.open_book(trading.as_ref(), &symbol, out);
        }
    }
}

impl WsSession {
    /// Sends the merged deltas of throttled books whose window has ended.
    pub(super) fn on_books_due(&mut self, out: &mut Vec<Output>) {
        let Some(streams) = self.streams.as_deref_mut() else {
            return;
        };
        let due = streams.books.release_due(tokio::time::Instant::now());
        if due.is_empty() {
            return;
        }
        let objects: Vec<String> = due
            .iter()
            .map(|update| streams.books.object(update))
            .collect();
        out.push(Output::frame(array(&objects)));
    }
}

#[cfg(test)]
#[path = "books_tests.rs"]
mod tests;
