//! Merging one feed's two inputs, live pub/sub messages and reads of the Redis stream, into a
//! single ordered sequence: every sequence number once, in order, or an explicit reset.
//!
//! The node subscribes first and reads the stream second, so every event is in the read, on
//! the subscription, or in both. This state machine is what makes "in both" harmless
//! (duplicates are dropped by sequence) and "in neither" impossible to miss silently (a jump
//! in sequence asks for a repair read; a hole the stream no longer holds becomes a reset).
//! It does no I/O: the subscriber feeds it and carries out the [`Action`]s it returns.

use std::collections::BTreeMap;

use bytes::Bytes;

/// What the node must do with the local log of this feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append this event at `seq` (always `previous seq + 1` since the last reset).
    Apply { seq: u64, payload: Bytes },
    /// Start the local log afresh under `epoch`; the next applied event has `next_seq`.
    /// `initial` is the node's first synchronisation (no client has seen this feed yet).
    Reset {
        epoch: u64,
        next_seq: u64,
        initial: bool,
    },
}

/// The result of one read of the stream, taken atomically with the feed's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRead {
    pub epoch: u64,
    /// The newest sequence number issued in this epoch (0 when nothing was published).
    pub top: u64,
    /// Retained entries with `seq >= ` the requested start, ascending.
    pub entries: Vec<(u64, Bytes)>,
}

/// Live messages held back while a repair is outstanding; past this many the buffer is
/// dropped and the repair read alone brings the node up to date (it covers them all).
const MAX_BUFFERED: usize = 100_000;

/// The merge state of one feed on one node.
#[derive(Debug, Default)]
pub struct FeedMerge {
    /// The epoch of the local log; `None` until the first read of the stream.
    epoch: Option<u64>,
    /// The last sequence number applied.
    last: u64,
    /// Live messages that arrived ahead of the log, by sequence, with their epoch.
    buffer: BTreeMap<u64, (u64, Bytes)>,
    /// A repair read was asked for and has not been merged yet.
    repairing: bool,
    /// Where the outstanding read starts.
    asked_from: u64,
}

impl FeedMerge {
    pub fn new() -> FeedMerge {
        FeedMerge::default()
    }

    /// The epoch and last applied sequence, once synchronised.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.epoch.map(|epoch| (epoch, self.last))
    }

    /// Where the next repair read must start (the whole retained stream before the first
    /// synchronisation).
    pub fn repair_from(&self) -> u64 {
        match self.epoch {
            None => 0,
            Some(_) => self.last + 1,
        }
    }

    /// Whether a repair read is outstanding.
    pub fn is_repairing(&self) -> bool {
        self.repairing
    }

    /// The subscription was (re)established: whatever was published meanwhile must be read
    /// from the stream. Returns where that read starts.
    pub fn resubscribed(&mut self) -> u64 {
        self.repairing = true;
        self.asked_from = self.repair_from();
        self.asked_from
    }

    /// One live message. Returns `Some(from)` when a repair read starting at `from` is needed
    /// (and none is outstanding yet).
    pub fn live(
        &mut self,
        epoch: u64,
        seq: u64,
        payload: Bytes,
        out: &mut Vec<Action>,
    ) -> Option<u64> {
        let current = match self.epoch {
            Some(current) if !self.repairing => current,
            _ => {
                // Not synchronised, or a read is on its way: hold it for after the read.
                self.hold(epoch, seq, payload);
                return self.ask_repair();
            }
        };
        if epoch != current {
            // Another epoch: only a read of the stream can say which log is current.
            self.hold(epoch, seq, payload);
            return self.ask_repair();
        }
        if seq <= self.last {
            return None;
        }
        if seq == self.last + 1 {
            self.last = seq;
            out.push(Action::Apply { seq, payload });
            return None;
        }
        // A jump: something was missed. Hold this one and repair the hole first.
        self.hold(epoch, seq, payload);
        self.ask_repair()
    }

    /// Merges a read of the stream. Returns `Some(from)` when held messages still leave a hole
    /// (another repair is needed).
    pub fn stream(&mut self, read: StreamRead, out: &mut Vec<Action>) -> Option<u64> {
        if self.epoch.is_some_and(|epoch| epoch != read.epoch) && self.asked_from > 1 {
            // A new log, read from where the old one stopped: its beginning is missing from
            // this read. Read it from its start instead.
            self.asked_from = 0;
            return Some(0);
        }
        self.repairing = false;
        let first_new = read
            .entries
            .iter()
            .map(|(seq, _)| *seq)
            .find(|seq| self.epoch != Some(read.epoch) || *seq > self.last);
        match self.epoch {
            Some(epoch) if epoch == read.epoch => {
                let hole = match first_new {
                    // The next event was trimmed away before this node read it.
                    Some(seq) => seq > self.last + 1,
                    // Nothing new retained, yet the log moved on (or went back): lost too.
                    None => read.top != self.last,
                };
                if hole {
                    let next_seq = first_new.unwrap_or(read.top + 1);
                    out.push(Action::Reset {
                        epoch: read.epoch,
                        next_seq,
                        initial: false,
                    });
                    self.last = next_seq - 1;
                }
            }
            previous => {
                let next_seq = first_new.unwrap_or(read.top + 1);
                out.push(Action::Reset {
                    epoch: read.epoch,
                    next_seq,
                    initial: previous.is_none(),
                });
                self.epoch = Some(read.epoch);
                self.last = next_seq - 1;
            }
        }
        for (seq, payload) in read.entries {
            if seq == self.last + 1 {
                self.last = seq;
                out.push(Action::Apply { seq, payload });
            }
        }
        self.drain_buffer(out)
    }

    /// Applies held messages that now follow the log; drops stale ones.
    fn drain_buffer(&mut self, out: &mut Vec<Action>) -> Option<u64> {
        let current = self.epoch?;
        let mut foreign_epoch = false;
        while let Some((seq, (epoch, payload))) = self.buffer.pop_first() {
            if epoch != current {
                // Either from a log the read has already replaced, or from one newer than
                // the read: a fresh read settles which.
                foreign_epoch = true;
                continue;
            }
            if seq <= self.last {
                continue;
            }
            if seq == self.last + 1 {
                self.last = seq;
                out.push(Action::Apply { seq, payload });
                continue;
            }
            self.buffer.insert(seq, (epoch, payload));
            break;
        }
        if !self.buffer.is_empty() || foreign_epoch {
            return self.ask_repair();
        }
        None
    }

    fn hold(&mut self, epoch: u64, seq: u64, payload: Bytes) {
        if self.buffer.len() >= MAX_BUFFERED {
            self.buffer.clear();
        }
        self.buffer.insert(seq, (epoch, payload));
    }

    fn ask_repair(&mut self) -> Option<u64> {
        if self.repairing {
            return None;
        }
        self.repairing = true;
        self.asked_from = self.repair_from();
        Some(self.asked_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(seq: u64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    fn read(epoch: u64, top: u64, seqs: impl IntoIterator<Item = u64>) -> StreamRead {
        StreamRead {
            epoch,
            top,
            entries: seqs.into_iter().map(|seq| (seq, bytes(seq))).collect(),
        }
    }

    fn applied(out: &[Action]) -> Vec<u64> {
        out.iter()
            .filter_map(|action| match action {
                Action::Apply { seq, .. } => Some(*seq),
                Action::Reset { .. } => None,
            })
            .collect()
    }

    #[test]
    fn the_first_read_is_an_initial_reset_followed_by_the_retained_window() {
        let mut merge = FeedMerge::new();
        assert_eq!(merge.resubscribed(), 0);
        let mut out = Vec::new();
        assert_eq!(merge.stream(read(9, 7, 5..=7), &mut out), None);
        assert_eq!(
            out[0],
            Action::Reset {
                epoch: 9,
                next_seq: 5,
                initial: true
            }
        );
        assert_eq!(applied(&out), vec![5, 6, 7]);
        assert_eq!(merge.position(), Some((9, 7)));
    }

    #[test]
    fn a_jump_holds_the_message_asks_for_a_repair_and_the_read_fills_the_hole_once() {
        let mut merge = FeedMerge::new();
        let mut out = Vec::new();
        merge.resubscribed();
        merge.stream(read(1, 3, 1..=3), &mut out);
        out.clear();
        assert_eq!(merge.live(1, 4, bytes(4), &mut out), None);
        assert_eq!(merge.live(1, 7, bytes(7), &mut out), Some(5));
        // More live traffic while the repair is out: held, no second repair.
        assert_eq!(merge.live(1, 8, bytes(8), &mut out), None);
        // The read covers 5..=8 (8 is in both; it must appear once).
        assert_eq!(merge.stream(read(1, 8, 5..=8), &mut out), None);
        assert_eq!(applied(&out), vec![4, 5, 6, 7, 8]);
        assert_eq!(merge.live(1, 8, bytes(8), &mut out), None);
        assert_eq!(applied(&out), vec![4, 5, 6, 7, 8], "a duplicate is dropped");
    }

    #[test]
    fn a_hole_the_stream_trimmed_away_is_an_explicit_reset_in_the_same_epoch() {
        let mut merge = FeedMerge::new();
        let mut out = Vec::new();
        merge.resubscribed();
        merge.stream(read(1, 2, 1..=2), &mut out);
        out.clear();
        merge.resubscribed();
        merge.stream(read(1, 20, 11..=20), &mut out);
        assert_eq!(
            out[0],
            Action::Reset {
                epoch: 1,
                next_seq: 11,
                initial: false
            }
        );
        assert_eq!(applied(&out), (11..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_new_epoch_resets_even_when_its_sequence_looks_contiguous() {
        let mut merge = FeedMerge::new();
        let mut out = Vec::new();
        merge.resubscribed();
        merge.stream(read(1, 2, 1..=2), &mut out);
        out.clear();
        assert_eq!(merge.live(2, 3, bytes(3), &mut out), Some(3));
        assert!(out.is_empty(), "nothing applied from an unconfirmed epoch");
        // The read from 3 shows a new log: its start is missing, so it is read again from 0.
        assert_eq!(merge.stream(read(2, 3, 3..=3), &mut out), Some(0));
        assert!(out.is_empty());
        assert_eq!(merge.stream(read(2, 3, 1..=3), &mut out), None);
        assert_eq!(
            out[0],
            Action::Reset {
                epoch: 2,
                next_seq: 1,
                initial: false
            }
        );
        assert_eq!(applied(&out), vec![1, 2, 3]);
    }

    /// What the simulated world did, one step at a time.
    #[derive(Debug, Clone)]
    enum Step {
        /// Redis publishes the next event; the node's subscription may lose it.
        Publish { delivered: bool },
        /// The node receives the oldest message in flight on its subscription.
        DeliverLive,
        /// The last delivered message arrives again (an overlap of read and subscription).
        Duplicate,
        /// The outstanding repair read executes now (its result arrives in a later step).
        ExecuteRead,
        /// The executed read's result reaches the merge.
        DeliverRead,
        /// The subscription drops and comes back (messages in flight are lost).
        Reconnect,
        /// Redis restarts without persistence: new epoch, empty stream.
        LoseRedis,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => any::<bool>().prop_map(|lost| Step::Publish { delivered: !lost }),
            6 => Just(Step::DeliverLive),
            1 => Just(Step::Duplicate),
            2 => Just(Step::ExecuteRead),
            2 => Just(Step::DeliverRead),
            1 => Just(Step::Reconnect),
            1 => Just(Step::LoseRedis),
        ]
    }

    struct World {
        epoch: u64,
        top: u64,
        window: u64,
        in_flight: std::collections::VecDeque<(u64, u64)>,
        last_delivered: Option<(u64, u64)>,
        pending_from: Option<u64>,
        executed: Option<StreamRead>,
    }

    impl World {
        fn read(&self, from: u64) -> StreamRead {
            let oldest = self.top.saturating_sub(self.window) + 1;
            read(self.epoch, self.top, from.max(oldest).max(1)..=self.top)
        }
    }

    /// Checks the log the node built: within an epoch every sequence follows its predecessor
    /// exactly, a reset never goes back inside the same epoch, and no event is applied twice.
    fn check(log: &[Action]) -> Result<(), TestCaseError> {
        let mut position: Option<(u64, u64)> = None;
        let mut seen = std::collections::HashSet::new();
        for action in log {
            match action {
                Action::Reset {
                    epoch, next_seq, ..
                } => {
                    if let Some((previous, last)) = position
                        && previous == *epoch
                    {
                        prop_assert!(*next_seq > last + 1, "a same-epoch reset skips forward");
                    }
                    position = Some((*epoch, next_seq - 1));
                }
                Action::Apply { seq, payload } => {
                    let Some((epoch, last)) = position else {
                        return Err(TestCaseError::fail("applied before any reset"));
                    };
                    prop_assert_eq!(*seq, last + 1, "contiguous within an epoch");
                    prop_assert_eq!(payload, &bytes(*seq));
                    prop_assert!(seen.insert((epoch, *seq)), "applied once");
                    position = Some((epoch, *seq));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_interleaving_delivers_each_sequence_once_in_order_or_resets(
            steps in proptest::collection::vec(step(), 0..200),
            window in 1u64..40,
        ) {
            let mut merge = FeedMerge::new();
            let mut world = World {
                epoch: 1,
                top: 0,
                window,
                in_flight: Default::default(),
                last_delivered: None,
                pending_from: Some(merge.resubscribed()),
                executed: None,
            };
            let mut log = Vec::new();
            let mut trimmed_or_lost = false;
            let request = |world: &mut World, from: Option<u64>| {
                if let Some(from) = from {
                    world.pending_from = Some(from);
                }
            };
            for step in steps {
                match step {
                    Step::Publish { delivered } => {
                        world.top += 1;
                        if world.top > world.window {
                            trimmed_or_lost = true;
                        }
                        if delivered {
                            world.in_flight.push_back((world.epoch, world.top));
                        }
                    }
                    Step::DeliverLive => {
                        if let Some((epoch, seq)) = world.in_flight.pop_front() {
                            world.last_delivered = Some((epoch, seq));
                            let from = merge.live(epoch, seq, bytes(seq), &mut log);
                            request(&mut world, from);
                        }
                    }
                    Step::Duplicate => {
                        if let Some((epoch, seq)) = world.last_delivered {
                            let from = merge.live(epoch, seq, bytes(seq), &mut log);
                            request(&mut world, from);
                        }
                    }
                    Step::ExecuteRead => {
                        if world.executed.is_none() && let Some(from) = world.pending_from.take() {
                            world.executed = Some(world.read(from));
                        }
                    }
                    Step::DeliverRead => {
                        if let Some(read) = world.executed.take() {
                            let from = merge.stream(read, &mut log);
                            request(&mut world, from);
                        }
                    }
                    Step::Reconnect => {
                        world.in_flight.clear();
                        world.executed = None;
                        let from = merge.resubscribed();
                        request(&mut world, Some(from));
                    }
                    Step::LoseRedis => {
                        world.epoch += 1;
                        world.top = 0;
                        trimmed_or_lost = true;
                    }
                }
            }
            // Quiesce: deliver what is in flight, then a reconnect's repair until settled.
            while let Some((epoch, seq)) = world.in_flight.pop_front() {
                let from = merge.live(epoch, seq, bytes(seq), &mut log);
                request(&mut world, from);
            }
            world.executed = None;
            let mut from = Some(merge.resubscribed());
            let mut rounds = 0;
            while let Some(start) = from {
                rounds += 1;
                prop_assert!(rounds < 10, "repairs settle");
                from = merge.stream(world.read(start), &mut log);
            }
            check(&log)?;
            prop_assert_eq!(merge.position(), Some((world.epoch, world.top)), "caught up");
            // Nothing the stream still holds was skipped, whatever resets happened before.
            let applied_now: std::collections::HashSet<u64> = log
                .iter()
                .rev()
                .take_while(|action| !matches!(action, Action::Reset { epoch, .. } if *epoch != world.epoch))
                .filter_map(|action| match action {
                    Action::Apply { seq, .. } => Some(*seq),
                    Action::Reset { .. } => None,
                })
                .collect();
            let oldest = world.top.saturating_sub(world.window) + 1;
            for seq in oldest..=world.top {
                prop_assert!(applied_now.contains(&seq), "retained {} was skipped", seq);
            }
            if !trimmed_or_lost {
                // Nothing was ever beyond the stream's reach: one initial reset, no other.
                let resets = log.iter().filter(|a| matches!(a, Action::Reset { .. })).count();
                prop_assert_eq!(resets, 1);
                prop_assert_eq!(applied(&log), (1..=world.top).collect::<Vec<_>>());
            }
        }
    }
}
