//! The exchange node's voice: announcements (trade updates, portfolio bumps, book deltas and
//! snapshots), replies to commands and a heartbeat, published to Redis in the order they were
//! handed over by one task, and only while the exchange's lease is held; the commands'
//! acknowledgements (`XACK`) go the same way, after their replies.
//!
//! Announcements and replies share one queue and one connection, and every node listens to
//! both channels on one subscription, so a node sees the trade updates a command caused
//! before the command's reply (what lets a session send `order_ack` before the `new` update).
//!
//! What is handed over together goes out together ([`pipeline`]): a run of announcements
//! (one per engine step) becomes one events message, and a run of replies one message per
//! requesting node ([`ReplyBatch`]), each reply's JSON inline (not a string inside the
//! message). A run ends where something of another kind was handed over in between, so the
//! order between announcements, replies and acknowledgements is the order of the handover.
//!
//! The heartbeat goes out every `ClusterConfig::exchange_heartbeat` (250 ms, less with a
//! lease under 2 s): one small message that every node already reads, so a node notices a
//! silent exchange after a few missed ones (`super::listen`).
//!
//! Every heartbeat carries the exchange's trading state (`Announcement::Trading`: halted after
//! a store failure, or running), as it stands after everything published before it. A node
//! that subscribed during a halt, or missed the halt's or the resume's announcement (pub/sub
//! is lossy), learns it within one heartbeat; a node already told ignores the repetition.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::super::lease::LeaseTicket;
use super::super::node::ClusterNode;
use super::stream;
use super::trace::ExchangeStamps;
use crate::trading::AnnouncementOutlet;
use crate::trading::command::{TradingCommand, TradingReply};
use crate::trading::engine::Announcement;

/// On the events channel: announcements of the exchange holding lease token `token`, or its
/// heartbeat (`alive`, with one item: the trading state, `Announcement::Trading`). Each announcement travels behind a header saying whom it
/// concerns ([`About`]), its body left as raw JSON, so a node reads the headers and decodes
/// only the bodies it needs (a user with a session on it, a book with a subscriber on it).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EventsMessage<'a> {
    pub(super) token: u64,
    #[serde(default, borrow, skip_serializing_if = "Vec::is_empty")]
    pub(super) items: Vec<Headed<'a>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) alive: bool,
}

/// One announcement: its header, then its body (an [`Announcement`]'s JSON), undecoded.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Headed<'a> {
    #[serde(borrow)]
    pub(super) about: About<'a>,
    #[serde(borrow)]
    pub(super) body: &'a RawValue,
}

/// Whom an announcement concerns: what a node checks before decoding its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum About<'a> {
    /// A user's trade update or portfolio bump: for the nodes with that user's mirror.
    User(#[serde(borrow)] Cow<'a, str>),
    /// A book's change (snapshot and delta): every node keeps the book, but a node with no
    /// subscriber of it keeps the body undecoded until one subscribes.
    Book(#[serde(borrow)] Cow<'a, str>),
    /// Everything else (whole books, trading halts): decoded by every node.
    All,
}

impl<'a> About<'a> {
    pub(super) fn of(announcement: &'a Announcement) -> About<'a> {
        match announcement {
            Announcement::User { user, .. } | Announcement::Portfolio { user } => {
                About::User(Cow::Borrowed(user))
            }
            Announcement::Book { snapshot, .. } => About::Book(Cow::Borrowed(&snapshot.symbol)),
            Announcement::BookSnapshot { .. } | Announcement::Trading { .. } => About::All,
        }
    }

    /// The same header, owning its name (to wait in the relay's queue).
    fn into_owned(self) -> About<'static> {
        match self {
            About::User(user) => About::User(Cow::Owned(user.into_owned())),
            About::Book(symbol) => About::Book(Cow::Owned(symbol.into_owned())),
            About::All => About::All,
        }
    }
}

/// The events channel's message for `items` (a heartbeat when `alive`).
pub(super) fn events_payload(
    token: u64,
    items: &[Announcement],
    alive: bool,
) -> Result<String, serde_json::Error> {
    let bodies = items
        .iter()
        .map(serde_json::value::to_raw_value)
        .collect::<Result<Vec<_>, _>>()?;
    let message = EventsMessage {
        token,
        items: items
            .iter()
            .zip(&bodies)
            .map(|(announcement, body)| Headed {
                about: About::of(announcement),
                body,
            })
            .collect(),
        alive,
    };
    serde_json::to_string(&message)
}

/// On a node's reply channel: the replies to commands it sent, in the order the exchange
/// handed them over (one message per batch of the exchange and requesting node).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ReplyBatch<'a> {
    #[serde(borrow)]
    pub(super) replies: Vec<ReplyItem<'a>>,
}

/// One reply in a [`ReplyBatch`]: the command's id and its `TradingReply`'s JSON, decoded by
/// the requester on its own (one reply that does not decode fails only its own command).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ReplyItem<'a> {
    #[serde(borrow)]
    pub(super) id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) reply: &'a RawValue,
    /// The exchange's stage timestamps, when its stage timing is on (`super::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<ExchangeStamps>,
}

/// The reply message of releases before [`ReplyBatch`]: one reply, its JSON as a string.
/// Still read by the listener for one release, so a node can be upgraded while an older one
/// runs the exchange (docs/deployment.md, "Upgrading a cluster").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct LegacyReplyMessage {
    pub(super) id: String,
    pub(super) reply: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<ExchangeStamps>,
}

/// One reply waiting in the relay's queue, its JSON already made.
#[derive(Debug)]
struct QueuedReply {
    id: String,
    reply: Box<RawValue>,
    trace: Option<ExchangeStamps>,
}

/// One announcement waiting in the relay's queue: its header and its body's JSON.
#[derive(Debug)]
struct QueuedAnnouncement {
    about: About<'static>,
    body: Box<RawValue>,
}

/// What the relay sends, in the order it was handed over.
#[derive(Debug)]
enum Outgoing {
    /// One engine step's announcements (consecutive ones share a message).
    Events(Vec<QueuedAnnouncement>),
    /// The heartbeat, with the trading state as it stands at this point of the queue.
    Heartbeat,
    /// A reply for the node `node` (consecutive ones share a message per node).
    Reply { node: String, reply: QueuedReply },
    /// `XACK` of commands whose replies were handed over before it: sent after their
    /// `PUBLISH`es (same connection, same pipeline or a later one), so a command is never
    /// acknowledged while its reply may still be unsent. Acknowledged first, a command whose
    /// exchange died before publishing would leave the stream's pending list, no successor
    /// would answer it, and its requester would wait its whole timeout.
    Acknowledge { ids: Vec<String> },
    /// The trading state the heartbeats carry from now on (after the announcement of the
    /// change, handed over just before).
    State(Announcement),
}

/// Messages published per pipelined round trip at most.
const PUBLISH_BATCH: usize = 256;

/// The exchange node's publisher for one lease term. Cheap to share.
pub(super) struct Relay {
    sender: mpsc::UnboundedSender<Outgoing>,
}

impl Relay {
    /// Starts the publishing task; it ends when the ticket is lost.
    pub(super) fn start(node: ClusterNode, ticket: LeaseTicket) -> Relay {
        // Unbounded: the exchange's actor hands announcements over without waiting. The task
        // drains it continuously, and it ends (dropping the rest) when the lease is lost.
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(node, ticket, receiver));
        Relay { sender }
    }

    /// Sends `reply` to the node that sent `command`.
    pub(super) fn reply(&self, command: &TradingCommand, reply: &TradingReply) {
        self.reply_traced(command, reply, None);
    }

    /// [`Relay::reply`] with the exchange's stage timestamps. The reply's JSON is made here,
    /// once; it travels inline in its node's [`ReplyBatch`].
    pub(super) fn reply_traced(
        &self,
        command: &TradingCommand,
        reply: &TradingReply,
        trace: Option<ExchangeStamps>,
    ) {
        let _ = self.sender.send(Outgoing::Reply {
            node: command.node.clone(),
            reply: QueuedReply {
                id: command.id.clone(),
                reply: reply_json(reply),
                trace,
            },
        });
    }

    /// Acknowledges the commands `ids` in the stream once everything handed over before
    /// (their replies) is published; not at all if the lease is lost first (they stay
    /// pending, and the next exchange answers them from their stored replies).
    pub(super) fn acknowledge(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            let _ = self.sender.send(Outgoing::Acknowledge { ids });
        }
    }
}

impl AnnouncementOutlet for Relay {
    fn announce(&self, announcements: &[Announcement]) {
        if announcements.is_empty() {
            return;
        }
        match queued_announcements(announcements) {
            Ok(items) => {
                let _ = self.sender.send(Outgoing::Events(items));
            }
            Err(error) => tracing::error!(%error, "announcement not encodable; not relayed"),
        }
        let state = announcements
            .iter()
            .rev()
            .find(|item| matches!(item, Announcement::Trading { .. }));
        if let Some(state) = state {
            let _ = self.sender.send(Outgoing::State(state.clone()));
        }
    }
}

/// `reply`'s JSON; an internal error's if it does not encode (as [`TradingReply::encode`]).
fn reply_json(reply: &TradingReply) -> Box<RawValue> {
    match serde_json::value::to_raw_value(reply) {
        Ok(json) => json,
        // Every field serializes; this only guards against a future change that breaks it.
        Err(_) => {
            RawValue::from_string(reply.encode()).unwrap_or_else(|_| RawValue::NULL.to_owned())
        }
    }
}

/// Each announcement's header and body JSON, for the queue.
fn queued_announcements(
    announcements: &[Announcement],
) -> Result<Vec<QueuedAnnouncement>, serde_json::Error> {
    announcements
        .iter()
        .map(|announcement| {
            Ok(QueuedAnnouncement {
                about: About::of(announcement).into_owned(),
                body: serde_json::value::to_raw_value(announcement)?,
            })
        })
        .collect()
}

/// A heartbeat of the exchange holding `token`, with its trading state.
fn heartbeat_payload(token: u64, state: &Announcement) -> String {
    events_payload(token, std::slice::from_ref(state), true).unwrap_or_default()
}

async fn run(
    node: ClusterNode,
    ticket: LeaseTicket,
    mut receiver: mpsc::UnboundedReceiver<Outgoing>,
) {
    // Often enough that a node tells its sessions about a silent exchange after a few missed
    // heartbeats (`cluster.exchange_silence`), long before the lease expires.
    let mut heartbeat = tokio::time::interval(node.config().exchange_heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A term starts with trading running: it claimed its fence, so the store takes writes.
    let mut alive = heartbeat_payload(
        ticket.token(),
        &Announcement::Trading {
            halted: false,
            message: "trading resumed: the exchange runs and the store accepts writes".into(),
        },
    );
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = ticket.lost().cancelled() => return,
            _ = heartbeat.tick() => batch.push(Outgoing::Heartbeat),
            first = receiver.recv() => {
                let Some(first) = first else { return };
                batch.push(first);
                while batch.len() < PUBLISH_BATCH
                    && let Ok(next) = receiver.try_recv()
                {
                    batch.push(next);
                }
            }
        }
        // Checked before every publish: a former exchange says nothing once its lease is gone.
        if ticket.is_lost() {
            return;
        }
        let pipe = pipeline(ticket.token(), &mut alive, batch.drain(..));
        let mut connection = node.commands();
        let result: Result<(), _> = node.timed(pipe.query_async(&mut connection)).await;
        if let Err(error) = result {
            // Lost messages are repaired by the nodes: trade updates from the store by `seq`,
            // replies by the requester reading the stored reply when its wait ends.
            tracing::warn!(%error, "exchange messages not published");
        }
    }
}

/// What the relay sends to Redis, in order.
#[derive(Debug, PartialEq)]
enum Sent {
    Publish { channel: String, payload: String },
    Acknowledge(Vec<String>),
}

/// One pipeline of `batch` (see [`messages`]).
fn pipeline(
    token: u64,
    alive: &mut String,
    batch: impl Iterator<Item = Outgoing>,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for sent in messages(token, alive, batch) {
        match sent {
            Sent::Publish { channel, payload } => {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            Sent::Acknowledge(ids) => {
                pipe.add_command(stream::ack(&ids)).ignore();
            }
        }
    }
    pipe
}

/// The messages of `batch`, in order, for the exchange holding `token`; `alive` is the
/// heartbeat as of the queue's start, and is moved on by the batch's state changes.
///
/// Runs of one kind share a message: consecutive announcements one events message, and
/// consecutive replies one message per requesting node (placed where the run ends, so each
/// reply still follows every announcement handed over before it). An acknowledgement, a
/// heartbeat or a state change ends a run.
fn messages(token: u64, alive: &mut String, batch: impl Iterator<Item = Outgoing>) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut events: Vec<QueuedAnnouncement> = Vec::new();
    // Requesting nodes in the order of their first reply in the run, each with its replies.
    let mut replies: Vec<(String, Vec<QueuedReply>)> = Vec::new();
    for outgoing in batch {
        match outgoing {
            Outgoing::Events(items) => {
                flush_replies(&mut sent, &mut replies);
                events.extend(items);
            }
            Outgoing::Reply { node, reply } => {
                flush_events(&mut sent, token, &mut events);
                match replies.iter_mut().find(|(to, _)| *to == node) {
                    Some((_, queued)) => queued.push(reply),
                    None => replies.push((node, vec![reply])),
                }
            }
            Outgoing::Heartbeat => {
                flush_runs(&mut sent, token, &mut events, &mut replies);
                sent.push(Sent::Publish {
                    channel: stream::events_channel(),
                    payload: alive.clone(),
                });
            }
            Outgoing::Acknowledge { ids } => {
                flush_runs(&mut sent, token, &mut events, &mut replies);
                sent.push(Sent::Acknowledge(ids));
            }
            Outgoing::State(state) => {
                flush_runs(&mut sent, token, &mut events, &mut replies);
                *alive = heartbeat_payload(token, &state);
            }
        }
    }
    flush_runs(&mut sent, token, &mut events, &mut replies);
    sent
}

/// Ends both runs: whichever is open goes out (at most one is, since each flushes the
/// other when it starts).
fn flush_runs(
    sent: &mut Vec<Sent>,
    token: u64,
    events: &mut Vec<QueuedAnnouncement>,
    replies: &mut Vec<(String, Vec<QueuedReply>)>,
) {
    flush_events(sent, token, events);
    flush_replies(sent, replies);
}

/// The announcements of a run, as one events message.
fn flush_events(sent: &mut Vec<Sent>, token: u64, events: &mut Vec<QueuedAnnouncement>) {
    if events.is_empty() {
        return;
    }
    let message = EventsMessage {
        token,
        items: events
            .iter()
            .map(|item| Headed {
                about: item.about.clone(),
                body: &item.body,
            })
            .collect(),
        alive: false,
    };
    match serde_json::to_string(&message) {
        Ok(payload) => sent.push(Sent::Publish {
            channel: stream::events_channel(),
            payload,
        }),
        Err(error) => tracing::error!(%error, "announcements not encodable; not relayed"),
    }
    events.clear();
}

/// The replies of a run, one message per requesting node.
fn flush_replies(sent: &mut Vec<Sent>, replies: &mut Vec<(String, Vec<QueuedReply>)>) {
    for (node, queued) in replies.drain(..) {
        let message = ReplyBatch {
            replies: queued
                .iter()
                .map(|item| ReplyItem {
                    id: Cow::Borrowed(&item.id),
                    reply: &item.reply,
                    trace: item.trace,
                })
                .collect(),
        };
        match serde_json::to_string(&message) {
            Ok(payload) => sent.push(Sent::Publish {
                channel: stream::reply_channel(&node),
                payload,
            }),
            Err(error) => tracing::error!(%error, "replies not encodable; not relayed"),
        }
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
