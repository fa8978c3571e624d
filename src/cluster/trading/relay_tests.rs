//! The relay's messages: what is handed over together goes out together, in handover order.

use super::*;
use crate::trading::api::OrderError;
use crate::trading::command::TradingRequest;

/// A relay whose queue the test reads itself (no task, no Redis).
fn relay() -> (Relay, mpsc::UnboundedReceiver<Outgoing>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Relay { sender }, receiver)
}

fn command(node: &str, id: &str) -> TradingCommand {
    TradingCommand {
        id: id.into(),
        user: "alice".into(),
        node: node.into(),
        deadline_ms: 0,
        request: TradingRequest::Portfolio,
    }
}

/// A reply that names its command, so the test can tell replies apart.
fn reply_for(id: &str) -> TradingReply {
    TradingReply::error(&OrderError::new(
        OrderError::INTERNAL,
        format!("reply to {id}"),
    ))
}

fn bump(user: &str) -> Announcement {
    Announcement::Portfolio { user: user.into() }
}

/// What the relay would send for everything handed over so far.
fn sent(receiver: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<Sent> {
    let mut batch = Vec::new();
    while let Ok(outgoing) = receiver.try_recv() {
        batch.push(outgoing);
    }
    let mut alive = String::from("alive");
    messages(7, &mut alive, batch.into_iter())
}

/// The replies of a reply channel's message: (command id, reply), in order.
fn replies_of(payload: &str) -> Vec<(String, TradingReply)> {
    let batch: ReplyBatch = serde_json::from_str(payload).expect("a batch of replies");
    batch
        .replies
        .into_iter()
        .map(|item| {
            let reply = serde_json::from_str(item.reply.get()).expect("a reply");
            (item.id.into_owned(), reply)
        })
        .collect()
}

#[test]
fn one_batchs_replies_to_one_node_go_in_one_message_each_reply_once() {
    let (relay, mut receiver) = relay();
    // As the exchange hands over one read of three commands from two nodes: every step's
    // announcements, then the replies, then the read's acknowledgement.
    relay.announce(&[bump("alice")]);
    relay.announce(&[bump("bob")]);
    relay.announce(&[bump("alice")]);
    relay.reply(&command("n1", "a"), &reply_for("a"));
    relay.reply(&command("n2", "b"), &reply_for("b"));
    relay.reply(&command("n1", "c"), &reply_for("c"));
    relay.acknowledge(vec!["1-0".into(), "2-0".into(), "3-0".into()]);

    let sent = sent(&mut receiver);
    assert_eq!(sent.len(), 4, "{sent:?}");
    let Sent::Publish { channel, payload } = &sent[0] else {
        panic!("the announcements first: {sent:?}");
    };
    assert_eq!(channel, &stream::events_channel());
    let events: EventsMessage = serde_json::from_str(payload).expect("events");
    assert_eq!(events.token, 7);
    let users: Vec<About> = events.items.iter().map(|item| item.about.clone()).collect();
    assert_eq!(
        users,
        ["alice", "bob", "alice"].map(|user| About::User(user.into()))
    );

    let mut seen = Vec::new();
    for (index, node, ids) in [(1, "n1", ["a", "c"].as_slice()), (2, "n2", &["b"])] {
        let Sent::Publish { channel, payload } = &sent[index] else {
            panic!("a reply message: {sent:?}");
        };
        assert_eq!(channel, &stream::reply_channel(node));
        let replies = replies_of(payload);
        let got: Vec<&str> = replies.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, ids, "{payload}");
        for (id, reply) in replies {
            assert_eq!(reply, reply_for(&id));
            seen.push(id);
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);
    assert_eq!(
        sent[3],
        Sent::Acknowledge(vec!["1-0".into(), "2-0".into(), "3-0".into()])
    );
}

#[test]
fn a_reply_travels_as_json_not_as_a_string_holding_json() {
    let (relay, mut receiver) = relay();
    relay.reply(&command("n1", "a"), &TradingReply::Announced);
    let sent = sent(&mut receiver);
    let [Sent::Publish { payload, .. }] = sent.as_slice() else {
        panic!("one message: {sent:?}");
    };
    let value: serde_json::Value = serde_json::from_str(payload).expect("json");
    assert!(value["replies"][0]["reply"].is_object(), "{payload}");
    assert!(
        !payload.contains("\\\""),
        "nothing escaped twice: {payload}"
    );
}

#[test]
fn announcements_handed_over_between_replies_keep_their_place() {
    let (relay, mut receiver) = relay();
    relay.reply(&command("n1", "a"), &reply_for("a"));
    relay.announce(&[bump("alice")]);
    relay.reply(&command("n1", "b"), &reply_for("b"));
    let sent = sent(&mut receiver);
    let order: Vec<String> = sent
        .iter()
        .map(|sent| match sent {
            Sent::Publish { channel, payload } if *channel == stream::events_channel() => {
                format!("events {}", payload.len())
            }
            Sent::Publish { payload, .. } => replies_of(payload)
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
                .join(","),
            Sent::Acknowledge(ids) => ids.join(","),
        })
        .collect();
    assert_eq!(order.len(), 3, "{order:?}");
    assert_eq!(order[0], "a");
    assert!(order[1].starts_with("events"), "{order:?}");
    assert_eq!(order[2], "b");
}

#[test]
fn a_heartbeat_carries_the_state_announced_before_it_and_ends_a_run() {
    let (relay, mut receiver) = relay();
    let halted = Announcement::Trading {
        halted: true,
        message: "halted".into(),
    };
    relay.announce(&[bump("alice")]);
    relay.announce(std::slice::from_ref(&halted));
    relay.sender.send(Outgoing::Heartbeat).expect("queued");
    relay.announce(&[bump("bob")]);
    let sent = sent(&mut receiver);
    // The two steps' announcements, the heartbeat (with the halt), the step after it.
    assert_eq!(sent.len(), 3, "{sent:?}");
    let Sent::Publish { payload, .. } = &sent[0] else {
        panic!("announcements first: {sent:?}");
    };
    let events: EventsMessage = serde_json::from_str(payload).expect("events");
    assert_eq!(events.items.len(), 2);
    assert!(!events.alive);
    let Sent::Publish { payload, .. } = &sent[1] else {
        panic!("then the heartbeat: {sent:?}");
    };
    assert_eq!(payload, &heartbeat_payload(7, &halted));
    let Sent::Publish { payload, .. } = &sent[2] else {
        panic!("then the last step: {sent:?}");
    };
    assert!(
        payload.contains("bob") && !payload.contains("alice"),
        "{payload}"
    );
}

#[test]
fn a_commands_acknowledgement_goes_out_after_its_reply_in_handover_order() {
    let (relay, mut receiver) = relay();
    relay.reply(&command("n1", "a"), &reply_for("a"));
    relay.acknowledge(vec!["1-0".into()]);
    let mut alive = String::new();
    let mut batch = Vec::new();
    while let Ok(outgoing) = receiver.try_recv() {
        batch.push(outgoing);
    }
    let packed = pipeline(7, &mut alive, batch.into_iter()).get_packed_pipeline();
    let text = String::from_utf8_lossy(&packed);
    let publish = text.find("PUBLISH").expect("the reply is published");
    let ack = text.find("XACK").expect("the command is acknowledged");
    assert!(publish < ack, "{text}");
    assert!(text.contains("reply to a") && text.contains("1-0"));
}
