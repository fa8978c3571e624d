//! Throttled subscriptions (`max_rate`): at most N releases per second per symbol, the newest
//! trade and the newest quote of each symbol winning, everything else delivered whole. The
//! throttle holds the hub's own entries (`Arc<Entry>`), so a throttled subscriber sends the
//! bytes encoded once at publish, like everyone else; it never encodes.
//!
//! Rules kept here (docs/protocol.md, "Throttled streams"):
//! - A symbol is *released* at most once per window of `1/N` s: its newest trade and newest
//!   quote, and any bar or status that waited behind them, go out together. So trades and
//!   quotes each reach the client at most N times a second per symbol.
//! - The first update of a quiet symbol (one not released within the last window) is released
//!   at once; later ones wait for the window to end.
//! - Bars and statuses are never dropped or merged. One that arrives while its symbol has a
//!   trade or quote waiting is held behind it, so the order of what a symbol sends is the
//!   publish order; otherwise it goes out at once and does not use up the window. Market-wide
//!   statuses, news and notices are never held.
//! - The throttle holds at most one trade and one quote per symbol.
//! - Windows end on a grid of a quarter window, so symbols that stay busy are released
//!   together and a busy subscription costs about 4N writes a second however many symbols it
//!   follows.
//! - A symbol whose window is running is *windowed*: a trade or quote of it cannot go out
//!   before the window ends, so the connection need not wake for one. The throttle keeps
//!   those symbols as a bit set ([`Throttle::windowed_symbols`]) that the connection hands
//!   to its queue ([`SubscriberQueue::set_deferred_symbols`]), and its timer
//!   ([`Throttle::next_wake`]) fires at the earliest window end among them, when it drains
//!   what waited in the queue. A busy throttled subscription is then woken about once per
//!   window end instead of once per publish.
//! - [`Throttle::cursor`] is the resume point: every event at or below it was either
//!   delivered or replaced by a newer one of its symbol and kind that was.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::entry::Entry;
use super::{Feed, SubscriberQueue};
use crate::market::{EventKind, SymbolId};

/// The largest `max_rate` accepted: a thousand releases a second per symbol is a millisecond
/// window, the resolution of the timers that end windows.
pub const MAX_RATE_LIMIT: u16 = 1000;

/// How often a throttle drops the slots of symbols whose window has ended.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A valid `max_rate`: updates per second per symbol, 1 to [`MAX_RATE_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRate(u16);

/// Why a `max_rate` was refused; the message is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("max_rate must be a whole number of updates per second per symbol from 1 to 1000")]
pub struct InvalidMaxRate;

impl MaxRate {
    pub fn new(per_second: u64) -> Result<MaxRate, InvalidMaxRate> {
        match u16::try_from(per_second) {
            Ok(rate) if (1..=MAX_RATE_LIMIT).contains(&rate) => Ok(MaxRate(rate)),
            _ => Err(InvalidMaxRate),
        }
    }

    /// Reads a query value such as `max_rate=5` (digits only: no sign, no fraction).
    pub fn parse(text: &str) -> Result<MaxRate, InvalidMaxRate> {
        let text = text.trim();
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidMaxRate);
        }
        text.parse()
            .map_err(|_| InvalidMaxRate)
            .and_then(MaxRate::new)
    }

    pub fn per_second(self) -> u16 {
        self.0
    }

    /// The shortest time between two releases of one symbol.
    pub fn interval(self) -> Duration {
        Duration::from_secs(1) / u32::from(self.0)
    }
}

/// What the throttle holds for one symbol.
#[derive(Debug)]
struct SymbolSlot {
    symbol: SymbolId,
    /// The end of the symbol's current window: it may be released again from then on.
    open_at: Instant,
    trade: Option<Arc<Entry>>,
    quote: Option<Arc<Entry>>,
    /// Bars and statuses waiting behind `trade` or `quote`, in publish order.
    held: Vec<Arc<Entry>>,
    /// Listed in [`Throttle::waiting`].
    waiting: bool,
    /// Listed in [`Throttle::windowed`].
    windowed: bool,
}

impl SymbolSlot {
    fn lowest_seq(&self) -> Option<u64> {
        [self.trade.as_ref(), self.quote.as_ref(), self.held.first()]
            .into_iter()
            .flatten()
            .map(|entry| entry.seq)
            .min()
    }
}

/// One subscription's throttle. It reads no clock: every call takes `now`, so the connection
/// that owns it decides which clock (tokio's, paused in tests) and when.
#[derive(Debug)]
pub struct Throttle {
    rate: MaxRate,
    interval: Duration,
    /// Windows end on multiples of this after `origin` (a quarter window).
    step: Duration,
    origin: Instant,
    /// One slot per symbol heard of since the last sweep, found through `slot_of`.
    slots: Vec<SymbolSlot>,
    /// Symbol id → index in `slots` + 1 (0: no slot), grown to the highest id seen: ids are
    /// small dense integers the server assigns, so a lookup per event is one load, with no
    /// hashing (2 bytes a symbol: 1 KB for a 500-symbol universe).
    slot_of: Vec<u16>,
    /// Symbols holding something, to release when their window ends.
    waiting: Vec<SymbolId>,
    /// The earliest window end among `waiting`, so a drain between window ends (the usual
    /// case for a busy subscription) releases without visiting every held symbol.
    earliest: Option<Instant>,
    /// When slots of symbols gone quiet are next dropped (a quiet symbol needs no slot: a
    /// missing one is an ended window), so a `*` subscription does not keep one per symbol
    /// it ever heard of.
    next_sweep: Instant,
    /// Entries that go out with the next release whatever the windows say.
    ready: Vec<Arc<Entry>>,
    /// The highest sequence of the market feed taken in.
    seen: u64,
    /// Trades and quotes replaced by a newer one before they went out.
    replaced: u64,
    /// Symbols released with a trade or quote whose window may still run (some may have
    /// ended since: they leave at the next release at or after `window_earliest`).
    windowed: Vec<SymbolId>,
    /// `windowed` as a bit set indexed by symbol id, for the queue.
    windowed_bits: Vec<u64>,
    /// The earliest window end among `windowed`.
    window_earliest: Option<Instant>,
    /// `windowed_bits` changed since the queue was last told.
    windowed_changed: bool,
}

impl Throttle {
    /// A throttle whose resume point starts at `cursor` (the sequence the client is known to
    /// have: its resume cursor, or the cursor of the snapshot it was sent).
    pub fn new(rate: MaxRate, now: Instant, cursor: u64) -> Throttle {
        let interval = rate.interval();
        Throttle {
            rate,
            interval,
            step: interval / 4,
            origin: now,
            slots: Vec::new(),
            slot_of: Vec::new(),
            waiting: Vec::new(),
            earliest: None,
            next_sweep: now + SWEEP_EVERY,
            ready: Vec::new(),
            seen: cursor,
            replaced: 0,
            windowed: Vec::new(),
            windowed_bits: Vec::new(),
            window_earliest: None,
            windowed_changed: false,
        }
    }

    pub fn rate(&self) -> MaxRate {
        self.rate
    }

    /// Changes the rate from the next window on; windows already running keep their end.
    pub fn set_rate(&mut self, rate: MaxRate) {
        self.rate = rate;
        self.interval = rate.interval();
        self.step = self.interval / 4;
    }

    /// How many trades and quotes were replaced by a newer one of their symbol before they
    /// were released, since the last call.
    pub fn take_replaced(&mut self) -> u64 {
        std::mem::take(&mut self.replaced)
    }

    /// Takes in one event the subscription wants. Nothing goes out until
    /// [`Throttle::release`]: events taken in together (one drain of the queue) are one
    /// moment, so a quiet symbol's newest trade among them is its first update.
    pub fn take(&mut self, entry: Arc<Entry>) {
        if entry.feed == Feed::Market {
            self.seen = self.seen.max(entry.seq);
        }
        let Some(symbol) = entry.symbol else {
            self.ready.push(entry);
            return;
        };
        match entry.kind {
            EventKind::Trade | EventKind::Quote => {
                let index = self.slot_index_or_insert(symbol);
                let slot = &mut self.slots[index];
                let place = if entry.kind == EventKind::Trade {
                    &mut slot.trade
                } else {
                    &mut slot.quote
                };
                if place.replace(entry).is_some() {
                    self.replaced += 1;
                }
                if !slot.waiting {
                    slot.waiting = true;
                    self.waiting.push(symbol);
                    let open_at = slot.open_at;
                    self.earliest = Some(self.earliest.map_or(open_at, |e| e.min(open_at)));
                }
            }
            // Bars and statuses wait only behind a trade or quote of their own symbol.
            _ => match self.slot_mut(symbol) {
                Some(slot) if slot.waiting => slot.held.push(entry),
                _ => self.ready.push(entry),
            },
        }
    }

    /// Notes an event of the feed the throttle does not carry (a shared stage's kind it
    /// does not conflate), so the resume point may pass it.
    pub fn pass_over(&mut self, entry: &Entry) {
        if entry.feed == Feed::Market {
            self.seen = self.seen.max(entry.seq);
        }
    }

    /// Copies into `out` everything held (it stays held), in feed and sequence order.
    pub fn held_into(&self, out: &mut Vec<Arc<Entry>>) {
        let start = out.len();
        out.extend(self.ready.iter().cloned());
        for symbol in &self.waiting {
            if let Some(at) = slot_index(&self.slot_of, *symbol) {
                let slot = &self.slots[at];
                out.extend(slot.trade.iter().cloned());
                out.extend(slot.quote.iter().cloned());
                out.extend(slot.held.iter().cloned());
            }
        }
        out[start..].sort_by_key(|entry| (entry.feed == Feed::News, entry.seq));
    }

    /// Moves into `out` everything whose time has come, in feed and sequence order, and starts
    /// a new window for each symbol that sent a trade or quote.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Arc<Entry>>) {
        let start = out.len();
        out.append(&mut self.ready);
        if self.earliest.is_some_and(|earliest| earliest <= now) {
            self.release_due(now, out);
        }
        if self.window_earliest.is_some_and(|earliest| earliest <= now) {
            self.end_windows(now);
        }
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + SWEEP_EVERY;
        }
        if out.len() - start > 1 {
            out[start..].sort_by_key(|entry| (entry.feed == Feed::News, entry.seq));
        }
    }

    /// Releases the waiting symbols whose window has ended.
    fn release_due(&mut self, now: Instant, out: &mut Vec<Arc<Entry>>) {
        let mut earliest: Option<Instant> = None;
        let next_window = self.window_end(now);
        let mut index = 0;
        while index < self.waiting.len() {
            let symbol = self.waiting[index];
            let Some(at) = slot_index(&self.slot_of, symbol) else {
                self.waiting.swap_remove(index);
                continue;
            };
            let slot = &mut self.slots[at];
            if slot.open_at > now {
                earliest = Some(earliest.map_or(slot.open_at, |e| e.min(slot.open_at)));
                index += 1;
                continue;
            }
            self.waiting.swap_remove(index);
            slot.waiting = false;
            let mut sent = false;
            for entry in [slot.trade.take(), slot.quote.take()].into_iter().flatten() {
                out.push(entry);
                sent = true;
            }
            out.append(&mut slot.held);
            if sent {
                slot.open_at = next_window;
                if !slot.windowed {
                    slot.windowed = true;
                    self.windowed.push(symbol);
                    set_bit(&mut self.windowed_bits, symbol, true);
                    self.windowed_changed = true;
                }
                self.window_earliest = Some(
                    self.window_earliest
                        .map_or(next_window, |e| e.min(next_window)),
                );
            }
        }
        self.earliest = earliest;
    }

    /// Forgets the windowed symbols whose window has ended: their next trade or quote is a
    /// quiet symbol's first update again, which must wake the connection.
    fn end_windows(&mut self, now: Instant) {
        let mut earliest: Option<Instant> = None;
        let mut index = 0;
        while index < self.windowed.len() {
            let symbol = self.windowed[index];
            match slot_index(&self.slot_of, symbol).map(|at| &mut self.slots[at]) {
                Some(slot) if slot.open_at > now => {
                    earliest = Some(earliest.map_or(slot.open_at, |e| e.min(slot.open_at)));
                    index += 1;
                }
                slot => {
                    if let Some(slot) = slot {
                        slot.windowed = false;
                    }
                    self.windowed.swap_remove(index);
                    set_bit(&mut self.windowed_bits, symbol, false);
                    self.windowed_changed = true;
                }
            }
        }
        self.window_earliest = earliest;
    }

    /// Moves everything held into `out` at once (the stream is ending, or its throttle is
    /// being removed), in feed and sequence order.
    pub fn release_all(&mut self, out: &mut Vec<Arc<Entry>>) {
        let start = out.len();
        out.append(&mut self.ready);
        self.earliest = None;
        for symbol in self.waiting.drain(..) {
            if let Some(at) = slot_index(&self.slot_of, symbol) {
                let slot = &mut self.slots[at];
                slot.waiting = false;
                out.extend(slot.trade.take());
                out.extend(slot.quote.take());
                out.append(&mut slot.held);
            }
        }
        out[start..].sort_by_key(|entry| (entry.feed == Feed::News, entry.seq));
    }

    /// When the next held symbol may be released; `None` when nothing is held.
    pub fn next_release(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(self.origin);
        }
        self.earliest
    }

    /// When the connection must next look at its queue and release: the next held symbol's
    /// window end, or the earliest end of a window during which the queue did not wake the
    /// connection for trades and quotes of its symbol ([`Throttle::windowed_symbols`]).
    pub fn next_wake(&self) -> Option<Instant> {
        match (self.next_release(), self.window_earliest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The symbols whose window is running, as a bit set indexed by symbol id (bit
    /// `id % 64` of word `id / 64`), and whether it changed since the last call.
    pub fn windowed_symbols(&mut self) -> (&[u64], bool) {
        (
            &self.windowed_bits,
            std::mem::take(&mut self.windowed_changed),
        )
    }

    /// Tells `queue` the symbols whose window runs, if they changed since it was last told,
    /// so their trades and quotes are queued without waking the connection.
    pub fn share_windows(&mut self, queue: &SubscriberQueue) {
        let (windowed, changed) = self.windowed_symbols();
        if changed {
            queue.set_deferred_symbols(windowed);
        }
    }

    /// The market-feed sequence a client may resume after: everything at or below it was
    /// delivered, or replaced by a newer event of its symbol and kind that was. Never
    /// decreases.
    pub fn cursor(&self) -> u64 {
        let lowest_held = self
            .waiting
            .iter()
            .filter_map(|symbol| slot_index(&self.slot_of, *symbol).map(|at| &self.slots[at]))
            .filter_map(SymbolSlot::lowest_seq)
            .chain(
                self.ready
                    .iter()
                    .filter(|entry| entry.feed == Feed::Market && entry.seq != 0)
                    .map(|entry| entry.seq),
            )
            .min();
        match lowest_held {
            Some(seq) => self.seen.min(seq.saturating_sub(1)),
            None => self.seen,
        }
    }

    fn slot_mut(&mut self, symbol: SymbolId) -> Option<&mut SymbolSlot> {
        slot_index(&self.slot_of, symbol).map(|at| &mut self.slots[at])
    }

    /// The index of `symbol`'s slot, made (an ended window) if it has none.
    fn slot_index_or_insert(&mut self, symbol: SymbolId) -> usize {
        if let Some(at) = slot_index(&self.slot_of, symbol) {
            return at;
        }
        let at = self.slots.len();
        self.slots.push(SymbolSlot {
            symbol,
            open_at: self.origin,
            trade: None,
            quote: None,
            held: Vec::new(),
            waiting: false,
            windowed: false,
        });
        let id = usize::from(symbol);
        if self.slot_of.len() <= id {
            self.slot_of.resize(id + 1, 0);
        }
        // At most one slot per symbol id, and ids are below `MAX_SYMBOLS` (4,096).
        self.slot_of[id] = u16::try_from(at + 1).unwrap_or(0);
        at
    }

    /// Drops the slots of symbols that hold nothing and whose window has ended (a missing
    /// slot is an ended window), keeping the others' order of arrival.
    fn sweep(&mut self, now: Instant) {
        self.slots
            .retain(|slot| slot.waiting || slot.windowed || slot.open_at > now);
        self.slot_of.fill(0);
        let highest = self.slots.iter().map(|slot| usize::from(slot.symbol)).max();
        self.slot_of.truncate(highest.map_or(0, |id| id + 1));
        for (at, slot) in self.slots.iter().enumerate() {
            self.slot_of[usize::from(slot.symbol)] = u16::try_from(at + 1).unwrap_or(0);
        }
    }

    /// The end of a window that starts now: at least one interval away, on the grid.
    fn window_end(&self, now: Instant) -> Instant {
        let earliest = now + self.interval;
        let step = self.step.as_nanos().max(1);
        let offset = earliest.saturating_duration_since(self.origin).as_nanos();
        let steps = offset.div_ceil(step);
        let nanos = u64::try_from(steps * step).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(nanos)
    }
}

/// The index in `slots` of `symbol`'s slot, if it has one.
fn slot_index(slot_of: &[u16], symbol: SymbolId) -> Option<usize> {
    match slot_of.get(usize::from(symbol)).copied() {
        Some(0) | None => None,
        Some(index) => Some(usize::from(index) - 1),
    }
}

fn set_bit(bits: &mut Vec<u64>, symbol: SymbolId, on: bool) {
    let (word, bit) = (usize::from(symbol) / 64, 1u64 << (symbol % 64));
    if bits.len() <= word {
        if !on {
            return;
        }
        bits.resize(word + 1, 0);
    }
    if on {
        bits[word] |= bit;
    } else {
        bits[word] &= !bit;
    }
}

/// A [`Throttle`] with the timer that ends its windows, for a connection that polls: the
/// connection drains its queue into [`Pacer::throttle`], releases, calls [`Pacer::rearm`], and
/// polls [`Pacer::poll_due`] beside its queue. Only throttled connections carry one.
#[derive(Debug)]
pub struct Pacer {
    pub throttle: Throttle,
    /// Boxed once and reset after, so a release costs no allocation.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Pacer {
    pub fn new(throttle: Throttle) -> Pacer {
        Pacer {
            throttle,
            timer: None,
            armed: false,
        }
    }

    /// Ready once when the next window end armed by [`Pacer::rearm`] has come; pending (with
    /// the waker registered) before, and pending with nothing registered when nothing is held.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            return Poll::Pending;
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_ready() {
            self.armed = false;
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Points the timer at the throttle's next wake-up (or disarms it when nothing is held
    /// and no window runs), and tells `queue` which symbols' trades and quotes need not wake
    /// the connection. Call after every release; poll [`Pacer::poll_due`] after it to
    /// register.
    pub fn rearm(&mut self, queue: &SubscriberQueue) {
        self.throttle.share_windows(queue);
        match self.throttle.next_wake() {
            Some(due) => {
                match self.timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(due),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
                }
                self.armed = true;
            }
            None => self.armed = false,
        }
    }

    /// When the timer will fire, if armed.
    pub fn deadline(&self) -> Option<Instant> {
        if self.armed {
            self.timer.as_ref().map(|timer| timer.deadline())
        } else {
            None
        }
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
