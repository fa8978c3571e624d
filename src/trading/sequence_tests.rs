//! Engine tests for private streams: every user's trade updates are numbered 1, 2, 3, ...
//! (and numbered the same again when the events are replayed), and a `client_order_id` is
//! refused once used, before the checks a retry would otherwise fail.

use rust_decimal_macros::dec;

use super::api::{OrderError, OrderRef, OrderRequest, ReplaceRequest, UserEvent};
use super::engine::{Announcement, Outcome};
use super::engine_tests::{
    engine, engine_with, limit, now, order, settings, standard_book, submit, submit_err,
};

#[test]
fn a_retry_is_recognised_before_buying_power_is_checked() {
    let mut engine = engine();
    standard_book(&mut engine);
    // Everything the account can afford, so an identical second order could not be.
    let request = OrderRequest {
        client_order_id: Some("all-in".into()),
        ..limit("buy", "1000", "90", "gtc")
    };
    let (first, _) = submit(&mut engine, request.clone());
    let error = submit_err(&mut engine, request);
    assert_eq!(error.code, OrderError::DUPLICATE_CLIENT_ORDER_ID);
    assert_eq!(error.order.map(|o| o.id), Some(first.id));
}

#[test]
fn a_replacement_needs_a_client_order_id_of_its_own() {
    let mut engine = engine();
    standard_book(&mut engine);
    let (old, _) = submit(
        &mut engine,
        OrderRequest {
            client_order_id: Some("keep".into()),
            ..limit("buy", "2", "90", "gtc")
        },
    );
    let mut out = Outcome::default();
    let error = engine
        .replace(
            "alice",
            &OrderRef::Id(old.id.clone()),
            &ReplaceRequest {
                client_order_id: Some("keep".into()),
                ..ReplaceRequest::default()
            },
            now(),
            &mut out,
        )
        .expect_err("the old order still has it");
    assert_eq!(error.code, OrderError::DUPLICATE_CLIENT_ORDER_ID);
    assert!(out.events.is_empty(), "a refused replace commits nothing");
    let replacement = engine
        .replace(
            "alice",
            &OrderRef::Id(old.id),
            &ReplaceRequest {
                qty: Some("1".into()),
                ..ReplaceRequest::default()
            },
            now(),
            &mut out,
        )
        .expect("replaced");
    assert_ne!(replacement.client_order_id, "keep");
}

#[test]
fn every_user_has_one_contiguous_update_sequence_that_a_replay_gives_back() {
    let mut engine = engine();
    standard_book(&mut engine);
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut events = Vec::new();
    let mut record = |out: Outcome, seen: &mut Vec<(String, u64)>| {
        for announcement in &out.announcements {
            if let Announcement::User {
                user,
                event: UserEvent::TradeUpdate(update),
            } = announcement
            {
                seen.push((user.clone(), update.seq));
            }
        }
        events.extend(out.events);
    };
    for user in ["alice", "bob", "alice"] {
        let mut out = Outcome::default();
        engine
            .submit(user, &limit("buy", "5", "90", "gtc"), now(), &mut out)
            .expect("resting");
        record(out, &mut seen);
        let mut out = Outcome::default();
        engine
            .submit(user, &order("buy", "market", "3", "day"), now(), &mut out)
            .expect("market");
        record(out, &mut seen);
    }
    let mut out = Outcome::default();
    engine.on_trade("AAPL", dec!(89.00), dec!(100000), now(), &mut out);
    record(out, &mut seen);
    for user in ["alice", "bob"] {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, seq)| *seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{user}'s updates are numbered 1, 2, 3, ...");
        assert_eq!(engine.update_seq(user), seqs.len() as u64);
    }
    let mut rebuilt = engine_with(settings());
    for event in &events {
        rebuilt.apply(event);
    }
    assert_eq!(rebuilt.update_seq("alice"), engine.update_seq("alice"));
    assert_eq!(rebuilt.update_seq("bob"), engine.update_seq("bob"));
    assert_eq!(rebuilt.update_seq("nobody"), 0);
}
