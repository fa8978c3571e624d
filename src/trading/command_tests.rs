//! The command/reply rules: encoding round trips, and what the exchange does with a command
//! delivered once, delivered again, or delivered too late.

use super::*;
use crate::trading::api::OrderRef;

fn command(deadline_ms: i64) -> TradingCommand {
    TradingCommand {
        id: "n1-7".into(),
        user: "alice".into(),
        node: "n1".into(),
        deadline_ms,
        request: TradingRequest::Cancel {
            target: OrderRef::ClientOrderId("my-1".into()),
        },
    }
}

#[test]
fn a_command_survives_its_wire_encoding() {
    let original = TradingCommand {
        request: TradingRequest::Replace {
            target: OrderRef::Id("o-1".into()),
            patch: ReplaceRequest {
                qty: Some("3".into()),
                ..ReplaceRequest::default()
            },
        },
        ..command(10)
    };
    let text = serde_json::to_string(&original).expect("encodes");
    let back: TradingCommand = serde_json::from_str(&text).expect("decodes");
    assert_eq!(back, original);
    assert!(back.request.is_change());
    assert!(!TradingRequest::Portfolio.is_change());
}

#[test]
fn an_error_reply_keeps_its_code_by_name_even_where_numbers_are_shared() {
    let refused = OrderError::new(ErrorCode::UnprocessableOrder, "qty: too large");
    let reply = TradingReply::decode(&TradingReply::error(&refused).encode()).expect("decodes");
    let error = reply.into_order().expect_err("an error");
    assert_eq!(error.code, ErrorCode::UnprocessableOrder);
    assert_eq!(error.message, "qty: too large");
}

#[test]
fn a_reply_of_the_wrong_kind_is_an_internal_error_not_a_panic() {
    let error = TradingReply::Orders(Vec::new())
        .into_portfolio()
        .expect_err("mismatch");
    assert_eq!(error.code, OrderError::INTERNAL);
    let garbage = TradingReply::decode("{\"kind\":\"nonsense\"}").expect_err("unreadable");
    assert_eq!(garbage.code, OrderError::INTERNAL);
}

#[test]
fn a_first_delivery_in_time_is_executed() {
    assert_eq!(
        disposition(&command(10_000), None, 5_000, 1_000),
        Disposition::Execute
    );
}

#[test]
fn a_redelivered_command_with_a_stored_reply_gets_that_reply_and_is_not_executed_again() {
    let stored = TradingReply::error(&OrderError::new(OrderError::NOT_FOUND, "gone")).encode();
    // Even long past its deadline: the reply is the truth about what happened.
    let decided = disposition(&command(10_000), Some(&stored), 50_000, 1_000);
    assert_eq!(
        decided,
        Disposition::Answer(TradingReply::decode(&stored).expect("decodes"))
    );
}

#[test]
fn a_command_within_the_guard_of_its_deadline_is_refused_as_expired() {
    assert_eq!(
        disposition(&command(10_000), None, 9_001, 1_000),
        Disposition::Expired
    );
    assert_eq!(
        disposition(&command(10_000), None, 9_000, 1_000),
        Disposition::Execute
    );
}

#[test]
fn exchange_unavailable_is_its_own_code_and_says_retry() {
    let error = exchange_unavailable();
    assert_eq!(error.code, ErrorCode::ExchangeUnavailable);
    assert_eq!(error.code.number(), 50310002);
    assert!(error.message.contains("retry"));
}

#[test]
fn a_request_to_announce_the_books_changes_nothing_and_its_answer_survives_encoding() {
    assert!(!TradingRequest::AnnounceBooks.is_change());
    let text = TradingReply::Announced.encode();
    let back = TradingReply::decode(&text).expect("decodes");
    assert_eq!(back.clone().into_announced(), Ok(()));
    assert!(TradingReply::Orders(Vec::new()).into_announced().is_err());
}
