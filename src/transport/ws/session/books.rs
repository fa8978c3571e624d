//! Order books: the `orderbooks` stream and the `resync` action. One forwarder task per
//! subscribed book moves the exchange's per-symbol broadcast into the session's channel.
//! Invariants kept here:
//! - Order-book `seq` rises by exactly one per symbol for the life of the connection (across
//!   unsubscribe/subscribe and resyncs too); when deltas were lost (lag) the client gets a
//!   fresh snapshot instead of a gap.
//! - Messages of a replaced book stream (an older generation) are ignored, so a resync never
//!   mixes deltas from before its snapshot into what follows.
//! - An idle market-data connection carries no book state at all (`WsSession::books` is
//!   `None`): it is created with the first order-book subscription and kept from then on.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::error::ErrorCode;
use crate::trading::api::{BookUpdate, TradingApi};

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
    /// The session's book state, created with the first use.
    fn books_mut(&mut self) -> &mut Books {
        self.books.get_or_insert_with(Box::default)
    }

    /// Opens the books that were added to the subscriptions and closes the removed ones.
    pub(super) fn update_books(&mut self, trading: &dyn TradingApi, out: &mut Vec<Output>) {
        if self.books.is_none() && self.subs.orderbooks.is_empty() {
            return;
        }
        let wanted = &self.subs.orderbooks;
        let removed: Vec<String> = self
            .books
            .as_deref()
            .into_iter()
            .flat_map(|books| books.streams.keys())
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for symbol in removed {
            if let Some(stream) = self.books_mut().streams.remove(&symbol) {
                stream.forwarder.abort();
            }
        }
        let books = self.books.as_deref();
        let added: Vec<String> = self
            .subs
            .orderbooks
            .iter()
            .filter(|s| books.is_none_or(|books| !books.streams.contains_key(*s)))
            .cloned()
            .collect();
        for symbol in added {
            self.open_book(trading, &symbol, out);
        }
    }

    /// (Re)opens the book of `symbol`: a snapshot now, then its deltas through a forwarder.
    fn open_book(&mut self, trading: &dyn TradingApi, symbol: &str, out: &mut Vec<Output>) {
        if let Some(old) = self.books_mut().streams.remove(symbol) {
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
        let books = self.books_mut();
        books.next_generation += 1;
        let generation = books.next_generation;
        let sender = books
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
        let books = self.books_mut();
        books.streams.insert(
            symbol.to_owned(),
            BookStream {
                generation,
                forwarder,
            },
        );
        out.push(Output::frame(format!("[{}]", books.object(&snapshot))));
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
        let books = self.books.as_deref();
        if let Some(missing) = names
            .iter()
            .find(|n| books.is_none_or(|books| !books.streams.contains_key(*n)))
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
        let mut objects = Vec::new();
        let mut lagged = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let current = self
                .books_mut()
                .streams
                .get(&message.symbol)
                .is_some_and(|b| b.generation == message.generation);
            if current {
                match &message.update {
                    Some(update) => objects.push(self.books_mut().object(update)),
                    None => lagged.push(message.symbol.clone()),
                }
            }
            if objects.len() < MAX_BATCH {
                next = self
                    .books_mut()
                    .channel
                    .as_mut()
                    .and_then(|(_, receiver)| receiver.try_recv().ok());
            }
        }
        if !objects.is_empty() {
            out.push(Output::frame(array(&objects)));
        }
        let trading = std::sync::Arc::clone(&self.deps.trading);
        for symbol in lagged {
            // Deltas were lost: a fresh snapshot replaces the gap.
            self.open_book(trading.as_ref(), &symbol, out);
        }
    }
}
