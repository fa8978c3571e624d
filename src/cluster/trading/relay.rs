//! The exchange node's voice: announcements (trade updates, portfolio bumps, book deltas and
//! snapshots), replies to commands and a heartbeat, published to Redis in the order they were
//! handed over by one task, and only while the exchange's lease is held; the commands'
//! acknowledgements (`XACK`) go the same way, after their replies.
//!
//! Announcements and replies share one queue and one connection, and every node listens to
//! both channels on one subscription, so a node sees the trade updates a command caused
//! before the command's reply (what lets a session send `order_ack` before the `new` update).
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

/// On a node's reply channel: the reply (JSON of a `TradingReply`) to its command `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct ReplyMessage {
    pub(super) id: String,
    pub(super) reply: String,
    /// The exchange's stage timestamps, when its stage timing is on (`super::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) trace: Option<ExchangeStamps>,
}

/// What the relay sends, in the order it was handed over.
enum Outgoing {
    Publish {
        channel: String,
        payload: String,
    },
    /// `XACK` of commands whose replies were handed over before it: sent after their
    /// `PUBLISH`es (same connection, same pipeline or a later one), so a command is never
    /// acknowledged while its reply may still be unsent. Acknowledged first, a command whose
    /// exchange died before publishing would leave the stream's pending list, no successor
    /// would answer it, and its requester would wait its whole timeout.
    Acknowledge {
        ids: Vec<String>,
    },
    /// The trading state the heartbeats carry from now on (after the announcement of the
    /// change, handed over just before).
    State(Announcement),
}

/// Messages published per pipelined round trip at most.
const PUBLISH_BATCH: usize = 256;

/// The exchange node's publisher for one lease term. Cheap to share.
pub(super) struct Relay {
    sender: mpsc::UnboundedSender<Outgoing>,
    token: u64,
}

impl Relay {
    /// Starts the publishing task; it ends when the ticket is lost.
    pub(super) fn start(node: ClusterNode, ticket: LeaseTicket) -> Relay {
        // Unbounded: the exchange's actor hands announcements over without waiting. The task
        // drains it continuously, and it ends (dropping the rest) when the lease is lost.
        let (sender, receiver) = mpsc::unbounded_channel();
        let token = ticket.token();
        tokio::spawn(run(node, ticket, receiver));
        Relay { sender, token }
    }

    /// Sends `reply` to the node that sent `command`.
    pub(super) fn reply(&self, command: &TradingCommand, reply: &TradingReply) {
        self.reply_traced(command, reply, None);
    }

    /// [`Relay::reply`] with the exchange's stage timestamps.
    pub(super) fn reply_traced(
        &self,
        command: &TradingCommand,
        reply: &TradingReply,
        trace: Option<ExchangeStamps>,
    ) {
        let message = ReplyMessage {
            id: command.id.clone(),
            reply: reply.encode(),
            trace,
        };
        if let Ok(payload) = serde_json::to_string(&message) {
            let _ = self.sender.send(Outgoing::Publish {
                channel: stream::reply_channel(&command.node),
                payload,
            });
        }
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
        match events_payload(self.token, announcements, false) {
            Ok(payload) => {
                let _ = self.sender.send(Outgoing::Publish {
                    channel: stream::events_channel(),
                    payload,
                });
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
            _ = heartbeat.tick() => batch.push(Outgoing::Publish {
                channel: stream::events_channel(),
                payload: alive.clone(),
            }),
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
        for outgoing in &batch {
            if let Outgoing::State(state) = outgoing {
                alive = heartbeat_payload(ticket.token(), state);
            }
        }
        let pipe = pipeline(batch.drain(..));
        let mut connection = node.commands();
        let result: Result<(), _> = node.timed(pipe.query_async(&mut connection)).await;
        if let Err(error) = result {
            // Lost messages are repaired by the nodes: trade updates from the store by `seq`,
            // replies by the requester reading the stored reply when its wait ends.
            tracing::warn!(%error, "exchange messages not published");
        }
    }
}

/// One pipeline of `batch`, in order.
fn pipeline(batch: impl Iterator<Item = Outgoing>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for outgoing in batch {
        match outgoing {
            Outgoing::Publish { channel, payload } => {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            Outgoing::Acknowledge { ids } => {
                pipe.add_command(stream::ack(&ids)).ignore();
            }
            Outgoing::State(_) => {}
        }
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commands_acknowledgement_goes_out_after_its_reply_in_handover_order() {
        let batch = vec![
            Outgoing::Publish {
                channel: stream::reply_channel("n1"),
                payload: "reply-1".into(),
            },
            Outgoing::Acknowledge {
                ids: vec!["1-0".into()],
            },
        ];
        let packed = pipeline(batch.into_iter()).get_packed_pipeline();
        let text = String::from_utf8_lossy(&packed);
        let publish = text.find("PUBLISH").expect("the reply is published");
        let ack = text.find("XACK").expect("the command is acknowledged");
        assert!(publish < ack, "{text}");
        assert!(text.contains("reply-1") && text.contains("1-0"));
    }
}
