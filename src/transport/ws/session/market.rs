//! Market data of one session: what it receives from the hub and how. [`MarketState`] (the
//! hub queue, the last sequence sent per feed, the market-data subscriptions) is shared with
//! the transport's fast path, which drains the queue from the response body; the session
//! borrows it only between awaits, never across one. Invariants kept here:
//! - Market data reuses the hub's encoded JSON (`Entry.json`, `Entry.ws`): frames are
//!   concatenations, and one event goes out as the hub's own frame without a copy.
//! - Changing a subscription neither loses nor repeats an event: a new registration resumes
//!   from the feed cursor taken before the old one was removed, and events are delivered in
//!   feed-sequence order with anything at or below the last sequence sent skipped.
//! - A close queued by the hub (slow client, shutdown) ends the session after its last frame.
//! - A MessagePack session (the Alpaca stream) gets the same events as binary frames: the
//!   hub's prebuilt `Entry.msgpack` for one event, an array of their maps for several.
//! - With a `max_rate` the market registration is at the hub's shared throttle for the rate
//!   (`hub::SharedThrottle`), which pushes the queue only what the rate lets out, out of
//!   sequence order across symbols: such entries are not checked against the last sequence
//!   sent. Changing the symbols or the rate moves the registration in one step under the feed
//!   lock (no replay, so nothing to deduplicate); what the old stage held goes out at once.
//!   Only when the hub runs its maximum of stages does the session put the raw feed through a
//!   [`Throttle`] of its own (hub entries, so still no encoding per client); removing the rate
//!   sends whatever it held at once.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use crate::hub::{
    CloseReason, Delivery, Entry, Feed, Filter, MaxRate, MsgpackClientGuard, Pacer,
    SubscriberQueue, SymbolFilter, Throttle,
};
use crate::market::EventKind;
use crate::metrics::{Metrics, Transport};

use super::WsSession;
use super::frames::{Output, closing};
use super::subscriptions::{Subscriptions, SymbolSet};

/// How a session frames market data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketEncoding {
    /// Text frames of JSON arrays (the hub's `Entry.ws` and `Entry.json`).
    Json,
    /// Binary frames of MessagePack arrays (the hub's `Entry.msgpack`; Alpaca's stream).
    MsgPack,
}

/// The market-data part of the subscriptions: what [`MarketState::deliver`] filters by.
#[derive(Debug, Clone, Default)]
pub(super) struct MarketSubs {
    pub(super) trades: SymbolSet,
    pub(super) quotes: SymbolSet,
    pub(super) bars: SymbolSet,
    /// Statuses of these symbols, besides those of symbols in `trades`, `quotes` or `bars`.
    pub(super) statuses: SymbolSet,
    pub(super) news: SymbolSet,
    /// The session trades (see [`Subscriptions::trades_anything`]): it takes trading
    /// statuses even without market data. Kept in step by
    /// [`WsSession::update_market_registrations`].
    pub(super) trading: bool,
}

impl MarketSubs {
    /// Whether an entry matches (the hub's filter is a superset).
    fn wants(&self, entry: &Entry) -> bool {
        match (entry.kind, entry.symbol) {
            (EventKind::Trade, Some(id)) => self.trades.contains(id),
            (EventKind::Quote, Some(id)) => self.quotes.contains(id),
            (EventKind::Bar, Some(id)) => self.bars.contains(id),
            (EventKind::Status, Some(id)) => {
                self.trades.contains(id)
                    || self.quotes.contains(id)
                    || self.bars.contains(id)
                    || self.statuses.contains(id)
            }
            (EventKind::Status, None) => {
                (entry.trading && self.trading)
                    || !(self.trades.is_empty()
                        && self.quotes.is_empty()
                        && self.bars.is_empty()
                        && self.statuses.is_empty())
            }
            (EventKind::News, _) => {
                self.news.all
                    || (!self.news.is_empty()
                        && (entry.tagged.is_empty()
                            || entry.tagged.iter().any(|id| self.news.contains(*id))))
            }
            _ => false,
        }
    }
}

/// What delivering market data needs of a session: its hub queue, the last sequence sent per
/// feed, and what it subscribed to. It is shared (`Rc<RefCell>`, one connection's thread) so
/// the transport can serve a hub wake-up straight from the response body, without running the
/// session's loop; the session borrows it only between awaits, never across one.
pub struct MarketState {
    encoding: MarketEncoding,
    /// Held while the session frames market data as MessagePack, so the hub encodes it.
    _msgpack: Option<MsgpackClientGuard>,
    queue: Arc<SubscriberQueue>,
    spare: VecDeque<Delivery>,
    last_seq: [u64; 2],
    pub(super) wanted: Rc<MarketSubs>,
    metrics: Arc<Metrics>,
    /// A keep-alive tick was drained since [`MarketState::deliver_into`] last said so.
    heartbeat: bool,
    /// The market registration is at a shared throttle: its entries come out of sequence
    /// order and are not deduplicated by `last_seq`.
    staged: bool,
    /// The throttle of a `max_rate` subscription; boxed, so an unthrottled session carries
    /// one pointer for it.
    throttle: Option<Box<MarketThrottle>>,
}

/// A session's `max_rate` state: the throttle with its timer (`None` once the rate was
/// removed) and what it released, or held when its rate was removed, to frame next.
struct MarketThrottle {
    pacer: Option<Pacer>,
    released: Vec<Arc<Entry>>,
}

pub type SharedMarket = Rc<RefCell<MarketState>>;

impl MarketState {
    fn new(
        queue: Arc<SubscriberQueue>,
        metrics: Arc<Metrics>,
        encoding: MarketEncoding,
        msgpack: Option<MsgpackClientGuard>,
    ) -> MarketState {
        MarketState {
            encoding,
            _msgpack: msgpack,
            queue,
            spare: VecDeque::new(),
            last_seq: [0; 2],
            wanted: Rc::default(),
            metrics,
            heartbeat: false,
            staged: false,
            throttle: None,
        }
    }

    pub fn queue(&self) -> &Arc<SubscriberQueue> {
        &self.queue
    }

    /// Whether a throttle window ended (with its waker registered if not): the transport's
    /// fast path polls this beside the queue's wake-up (through its coalescer), so a
    /// throttled session's held updates go out when their window ends.
    pub fn poll_throttle_due(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.throttle
            .as_mut()
            .and_then(|throttle| throttle.pacer.as_mut())
            .is_some_and(|pacer| pacer.poll_due(cx).is_ready())
    }

    /// When the throttle's next window ends, if it holds anything (for the session's own
    /// loop, when the transport does not serve market data).
    pub(super) fn next_release(&self) -> Option<tokio::time::Instant> {
        self.throttle
            .as_ref()
            .and_then(|throttle| throttle.pacer.as_ref())
            .and_then(Pacer::deadline)
    }

    /// Sets or removes the market-data `max_rate`. Removing it hands what the throttle held
    /// to the next delivery.
    pub(super) fn set_max_rate(&mut self, rate: Option<MaxRate>) {
        let new_pacer = |rate| Pacer::new(Throttle::new(rate, tokio::time::Instant::now(), 0));
        match (rate, self.throttle.as_mut()) {
            (Some(rate), Some(throttle)) => match throttle.pacer.as_mut() {
                Some(pacer) => pacer.throttle.set_rate(rate),
                None => throttle.pacer = Some(new_pacer(rate)),
            },
            (Some(rate), None) => {
                self.throttle = Some(Box::new(MarketThrottle {
                    pacer: Some(new_pacer(rate)),
                    released: Vec::new(),
                }));
            }
            (None, Some(throttle)) => {
                if let Some(mut pacer) = throttle.pacer.take() {
                    pacer.throttle.release_all(&mut throttle.released);
                    // Unthrottled again: every push wakes the connection.
                    self.queue.set_deferred_symbols(&[]);
                }
            }
            (None, None) => {}
        }
    }

    /// Turns queued hub deliveries (plus any `extra`) into at most one data frame, pushed on
    /// `out`, and returns the hub's close if one was queued. One wanted event goes out as the
    /// hub's prebuilt frame (`Entry.ws`, shared, no copy).
    pub fn deliver(&mut self, extra: Vec<Delivery>, out: &mut Vec<Output>) -> Option<CloseReason> {
        let (frame, close) = self.collect(extra);
        match frame {
            Some(Pending::One(entry)) => out.push(Output::Frame(entry.ws.clone())),
            Some(Pending::Many(buffer)) => out.push(Output::Frame(buffer.freeze())),
            Some(Pending::Packed(frame)) => out.push(Output::Binary(frame)),
            None => {}
        }
        close
    }

    /// [`MarketState::deliver`] for the transport's fast path: the frame's payload is handed
    /// to `frame` (which copies it behind a frame header), so a single event costs no
    /// reference count of its own.
    /// Also says whether a keep-alive tick was among what was drained.
    pub fn deliver_into(&mut self, frame: impl FnOnce(&[u8])) -> (Option<CloseReason>, bool) {
        let (pending, close) = self.collect(Vec::new());
        match pending {
            Some(Pending::One(entry)) => frame(&entry.ws),
            Some(Pending::Many(buffer)) => frame(&buffer),
            Some(Pending::Packed(packed)) => frame(&packed),
            None => {}
        }
        (close, std::mem::take(&mut self.heartbeat))
    }

    /// Drains the queue (plus `extra`): the wanted events, as one event or one coalesced
    /// array, and the hub's close if one was queued. The drained deque is reused, so
    /// steady-state delivery allocates nothing per subscriber beyond a batch buffer.
    fn collect(&mut self, extra: Vec<Delivery>) -> (Option<Pending>, Option<CloseReason>) {
        let mut items = std::mem::take(&mut self.spare);
        self.queue.drain_into(&mut items);
        items.extend(extra);
        let mut close = None;
        // Replays and live items of two feeds may interleave: order events by feed and
        // sequence (a stable sort, linear on the usual already-sorted batch), controls last.
        let slice = items.make_contiguous();
        if slice.len() > 1 {
            slice.sort_by_key(|item| match item {
                Delivery::Event(entry) => (feed_slot(entry.feed), entry.seq),
                _ => (usize::MAX, 0),
            });
        }
        let mut batch = Batch::default();
        let encoding = self.encoding;
        // What a throttle held when its rate was removed: older than anything drained now.
        if let Some(throttle) = self.throttle.as_mut() {
            for entry in throttle.released.drain(..) {
                batch.add(entry, encoding);
            }
        }
        for item in items.drain(..) {
            let entry = match item {
                Delivery::Event(entry) => entry,
                // A heartbeat writes nothing here; the transport's fast path pings when it
                // sees one (the keep-alive sweep pushes one per ping interval).
                Delivery::Heartbeat => {
                    self.heartbeat = true;
                    continue;
                }
                Delivery::Close(reason) => {
                    close = Some(reason);
                    continue;
                }
            };
            let slot = feed_slot(entry.feed);
            // Sequence 0 is a notice outside every log (a cluster status): never a duplicate.
            if entry.seq != 0 && !(self.staged && slot == 0) {
                if entry.seq <= self.last_seq[slot] {
                    continue;
                }
                self.last_seq[slot] = entry.seq;
            }
            if !self.wanted.wants(&entry) {
                continue;
            }
            match self.throttle.as_mut().and_then(|t| t.pacer.as_mut()) {
                Some(pacer) => pacer.throttle.take(entry),
                None => batch.add(entry, encoding),
            }
        }
        self.spare = items;
        if let Some(throttle) = self.throttle.as_mut() {
            let MarketThrottle { pacer, released } = &mut **throttle;
            if let Some(pacer) = pacer.as_mut() {
                if close.is_some() {
                    // The session ends: what the throttle held goes out before the close.
                    pacer.throttle.release_all(released);
                } else {
                    pacer
                        .throttle
                        .release(tokio::time::Instant::now(), released);
                    pacer.rearm(&self.queue);
                }
                // Replaced in the throttle, or in the queue before it (see `SubscriberQueue`).
                self.metrics.throttled.fetch_add(
                    pacer.throttle.take_replaced() + self.queue.take_replaced(),
                    Ordering::Relaxed,
                );
            }
            for entry in released.drain(..) {
                batch.add(entry, encoding);
            }
            if pacer.is_none() {
                // The rate was removed and what it held is framed: back to one pointer.
                self.throttle = None;
            }
        }
        let (pending, delivered) = batch.finish();
        if pending.is_some() {
            self.metrics.delivered(Transport::WebSocket, delivered);
        }
        (pending, close)
    }
}

/// The data frame being built from one drain's events.
#[derive(Default)]
struct Batch {
    pending: Option<Pending>,
    packed: Vec<Arc<Entry>>,
    delivered: u64,
}

impl Batch {
    fn add(&mut self, entry: Arc<Entry>, encoding: MarketEncoding) {
        self.delivered += 1;
        if encoding == MarketEncoding::MsgPack {
            self.packed.push(entry);
            return;
        }
        self.pending = Some(match self.pending.take() {
            None => Pending::One(entry),
            Some(Pending::One(first)) => {
                // `first.ws` is `[json]`: its opening starts the batch.
                let mut buffer = BytesMut::with_capacity(2 * (first.ws.len() + entry.json.len()));
                buffer.put_slice(&first.ws[..first.ws.len() - 1]);
                buffer.put_u8(b',');
                buffer.put_slice(&entry.json);
                Pending::Many(buffer)
            }
            Some(Pending::Many(mut buffer)) => {
                buffer.put_u8(b',');
                buffer.put_slice(&entry.json);
                Pending::Many(buffer)
            }
            // Only MessagePack sessions pack, and they never reach this match.
            Some(packed @ Pending::Packed(_)) => packed,
        });
    }

    /// The frame, and how many events it carries.
    fn finish(self) -> (Option<Pending>, u64) {
        let mut pending = self.pending;
        if let Some(Pending::Many(buffer)) = pending.as_mut() {
            buffer.put_u8(b']');
        }
        if !self.packed.is_empty() {
            pending = Some(Pending::Packed(msgpack_frame(&self.packed)));
        }
        (pending, self.delivered)
    }
}

/// The data frame a drain produced.
enum Pending {
    One(Arc<Entry>),
    Many(BytesMut),
    /// A MessagePack frame ([`MarketEncoding::MsgPack`]).
    Packed(Bytes),
}

/// The MessagePack frame of `entries`: the hub's prebuilt frame for a single event, else an
/// array of their maps. An event published before any MessagePack client connected has no
/// prebuilt map and is encoded here, from its JSON.
fn msgpack_frame(entries: &[Arc<Entry>]) -> Bytes {
    use crate::hub::msgpack;
    if let [entry] = entries
        && let Some(frame) = &entry.msgpack
    {
        return frame.clone();
    }
    let mut maps: Vec<std::borrow::Cow<'_, [u8]>> = Vec::with_capacity(entries.len());
    for entry in entries {
        match &entry.msgpack {
            Some(frame) => maps.push(std::borrow::Cow::Borrowed(&frame[1..])),
            None => {
                let event = serde_json::from_slice::<crate::market::MarketEvent>(&entry.json);
                if let Some(map) = event.ok().as_ref().and_then(msgpack::encode_event) {
                    maps.push(std::borrow::Cow::Owned(map));
                }
            }
        }
    }
    let mut frame = Vec::with_capacity(maps.iter().map(|m| m.len()).sum::<usize>() + 5);
    msgpack::put_array_header(&mut frame, maps.len());
    for map in &maps {
        frame.extend_from_slice(map);
    }
    Bytes::from(frame)
}

/// The session's side of market data: its hub queue, the state shared with the transport, and
/// which feeds it is registered on.
pub(super) struct MarketFeeds {
    pub(super) queue: Arc<SubscriberQueue>,
    /// Market-data delivery state, shared with the transport's fast path.
    pub(super) shared: SharedMarket,
    /// Whether the transport serves hub wake-ups itself (see `WsSession::market`).
    pub(super) in_transport: bool,
    /// Registered on [`Feed::Market`] (slot 0) and [`Feed::News`] (slot 1).
    registered: [bool; 2],
}

impl MarketFeeds {
    /// Feeds served through `queue` (from `Hub::new_queue`, which sizes it).
    pub(super) fn new(
        queue: Arc<SubscriberQueue>,
        metrics: Arc<Metrics>,
        encoding: MarketEncoding,
        msgpack: Option<MsgpackClientGuard>,
    ) -> MarketFeeds {
        let shared = Rc::new(RefCell::new(MarketState::new(
            Arc::clone(&queue),
            metrics,
            encoding,
            msgpack,
        )));
        MarketFeeds {
            queue,
            shared,
            in_transport: false,
            registered: [false; 2],
        }
    }

    pub(super) fn any_registered(&self) -> bool {
        self.registered.iter().any(|registered| *registered)
    }

    /// The feeds this session is registered on, to leave when it ends.
    pub(super) fn registered_feeds(&self) -> impl Iterator<Item = Feed> + '_ {
        [Feed::Market, Feed::News]
            .into_iter()
            .filter(|feed| self.registered[feed_slot(*feed)])
    }
}

impl WsSession {
    /// Re-registers with the hub on the feeds whose subscriptions changed.
    pub(super) fn update_market_registrations(
        &mut self,
        previous: &Subscriptions,
        out: &mut Vec<Output>,
    ) {
        let trading = self.subs.trades_anything();
        if self.subs.market.trading != trading {
            Rc::make_mut(&mut self.subs.market).trading = trading;
        }
        self.market.shared.borrow_mut().wanted = Rc::clone(&self.subs.market);
        let rate_changed = previous.market_rate != self.subs.market_rate;
        match (previous.trades_anything(), self.subs.trades_anything()) {
            (false, true) => self.deps.hub.listen_trading(&self.market.queue),
            (true, false) => self.deps.hub.unlisten_trading(&self.market.queue),
            _ => {}
        }
        let market_changed = previous.market.trades != self.subs.market.trades
            || previous.market.quotes != self.subs.market.quotes
            || previous.market.bars != self.subs.market.bars
            || previous.market.statuses != self.subs.market.statuses;
        let staged = self.market.shared.borrow().staged;
        if (market_changed || rate_changed) && (staged || self.subs.market_rate.is_some()) {
            let filter = self.market_filter();
            self.move_market(filter);
        } else {
            if rate_changed {
                // The rate was removed from a session throttling on its own (the hub's cap
                // of stages was reached when it was set): what it held goes out next.
                self.market
                    .shared
                    .borrow_mut()
                    .set_max_rate(self.subs.market_rate);
            }
            if market_changed {
                let filter = self.market_filter();
                self.reregister(Feed::Market, filter, out);
            }
        }
        if previous.market.news != self.subs.market.news {
            let filter = (!self.subs.market.news.is_empty()).then(|| Filter {
                symbols: symbol_filter(&self.subs.market.news),
                kinds: EventKind::News.bit(),
            });
            self.reregister(Feed::News, filter, out);
        }
    }

    fn market_filter(&self) -> Option<Filter> {
        let sets = [
            (&self.subs.market.trades, EventKind::Trade),
            (&self.subs.market.quotes, EventKind::Quote),
            (&self.subs.market.bars, EventKind::Bar),
            (&self.subs.market.statuses, EventKind::Status),
        ];
        let mut kinds = 0u8;
        let mut union = SymbolSet::default();
        for (set, kind) in sets {
            if !set.is_empty() {
                kinds |= kind.bit();
                union.all |= set.all;
                union.ids.extend(set.ids.iter().copied());
            }
        }
        (kinds != 0).then(|| Filter {
            symbols: symbol_filter(&union),
            kinds,
        })
    }

    /// Moves the market registration to `filter` at the session's rate, through the hub's
    /// shared throttle for it (see [`Hub::move_market_registration`]), or leaves the feed.
    /// Past the hub's cap of stages the raw feed goes through the session's own throttle.
    ///
    /// [`Hub::move_market_registration`]: crate::hub::Hub::move_market_registration
    fn move_market(&mut self, filter: Option<Filter>) {
        let slot = feed_slot(Feed::Market);
        let hub = &self.deps.hub;
        let rate = self.subs.market_rate;
        let mut shared = self.market.shared.borrow_mut();
        let Some(filter) = filter else {
            if self.market.registered[slot] {
                hub.unsubscribe(Feed::Market, &self.market.queue);
                self.market.registered[slot] = false;
            }
            shared.set_max_rate(None);
            shared.staged = false;
            return;
        };
        let head = hub.cursor(Feed::Market).seq;
        let was_registered = self.market.registered[slot];
        let was_staged = shared.staged;
        let stage = hub.move_market_registration(&self.market.queue, filter, rate);
        self.market.registered[slot] = true;
        shared.staged = stage.is_some();
        // The session's own throttle only without a stage (the hub's cap was reached).
        shared.set_max_rate(if stage.is_some() { None } else { rate });
        if !was_registered {
            // A fresh registration: only events after now.
            shared.last_seq[slot] = head;
        } else if was_staged && stage.is_none() {
            // Back on the raw feed: what the stage pushed (and handed over) came in no
            // sequence order, and the move repeats nothing, so the check starts afresh.
            shared.last_seq[slot] = 0;
        }
    }

    /// Replaces this session's registration on `feed` without a gap or a duplicate: the new
    /// registration resumes from the feed's cursor taken before the old one was removed, and
    /// everything queued is merged in sequence order (see `deliver`).
    fn reregister(&mut self, feed: Feed, filter: Option<Filter>, out: &mut Vec<Output>) {
        let slot = feed_slot(feed);
        let hub = &self.deps.hub;
        let cursor = hub.cursor(feed);
        let was_registered = self.market.registered[slot];
        if was_registered {
            hub.unsubscribe(feed, &self.market.queue);
            self.market.registered[slot] = false;
        }
        let Some(filter) = filter else {
            return;
        };
        let resume = (cursor.seq > 0).then_some(cursor);
        let subscribed = hub.subscribe(feed, filter, resume, false, &self.market.queue);
        self.market.registered[slot] = true;
        if !was_registered {
            // A fresh registration on this feed: only events after now.
            self.market.shared.borrow_mut().last_seq[slot] = cursor.seq;
        }
        let replay: Vec<Delivery> = subscribed.replay.into_iter().map(Delivery::Event).collect();
        self.deliver(replay, out);
    }

    /// Turns queued hub deliveries (plus any `extra`) into at most one data frame (see
    /// [`MarketState::deliver`]); a close from the hub ends the session.
    pub(super) fn deliver(&mut self, extra: Vec<Delivery>, out: &mut Vec<Output>) {
        let close = self.market.shared.borrow_mut().deliver(extra, out);
        if let Some(reason) = close {
            let (frame, code, why) = closing(reason);
            out.push(frame);
            self.close(out, code, why);
        }
    }
}

pub(super) fn feed_slot(feed: Feed) -> usize {
    match feed {
        Feed::News => 1,
        _ => 0,
    }
}

fn symbol_filter(set: &SymbolSet) -> SymbolFilter {
    if set.all {
        SymbolFilter::All
    } else {
        SymbolFilter::from_ids(set.ids.iter().copied())
    }
}
