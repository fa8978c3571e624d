//! What a client that reconnects or retries learns from the exchange: the answer to "what
//! happened after update `since`" (a replay of the stored updates, or a reset with the state
//! at the current sequence) and the order behind a `client_order_id` the engine no longer
//! keeps in memory. The actor takes the consistent point ([`ResumePoint`]); the reads of the
//! store happen here, off the actor.
//!
//! Invariant: a replay is complete and contiguous (`since + 1 ..= seq`, nothing missing or
//! repeated) or it is not given at all: anything else is a reset.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::api::{
    AccountSnapshot, Order, OrderError, OrderQuery, Portfolio, ResetReason, Resume, TradeUpdate,
};
use super::engine::Engine;
use super::persist::Persistence;

/// Where a resuming user stands, taken by the actor in one step: the current update sequence
/// and, when the client is not at it, the open orders and portfolio at exactly that sequence.
pub(super) struct ResumePoint {
    pub(super) seq: u64,
    pub(super) state: Option<(Vec<Order>, Portfolio)>,
}

impl ResumePoint {
    /// Where `user` stands now; the state only when `since` is not the current sequence.
    pub(super) fn take(engine: &Engine, user: &str, since: u64, now: DateTime<Utc>) -> ResumePoint {
        let seq = engine.update_seq(user);
        let state = (since != seq).then(|| {
            (
                engine.orders(user, OrderQuery::Open),
                engine.portfolio(user, now),
            )
        });
        ResumePoint { seq, state }
    }
}

/// The user's order with this `client_order_id` as the engine has it, or its id when the
/// engine no longer keeps it (`Ok(Err(id))`: read it from the store), or 40410000.
pub(super) fn kept_order(
    engine: &Engine,
    user: &str,
    client_order_id: &str,
) -> Result<Result<Order, String>, OrderError> {
    match engine.order_id_by_client_id(user, client_order_id) {
        Some(id) => Ok(engine.order(id).map_err(|_| id.to_owned())),
        None => Err(OrderError::new(
            OrderError::NOT_FOUND,
            format!("order with client_order_id {client_order_id:?} not found"),
        )),
    }
}

/// The resume answer for `since` at `point`: from the store with one, else from `recent`
/// (the updates with `after < seq <= up_to` the exchange still holds in memory).
pub(super) async fn answer(
    user: &str,
    since: u64,
    point: ResumePoint,
    persistence: Option<Arc<Persistence>>,
    recent: impl FnOnce(u64, u64) -> Vec<TradeUpdate>,
) -> Result<Resume, OrderError> {
    if since == point.seq {
        return Ok(Resume::Replay {
            seq: point.seq,
            updates: Vec::new(),
        });
    }
    if since > point.seq {
        return reset(ResetReason::Ahead, since, point);
    }
    let missed = point.seq - since;
    let updates = match persistence {
        Some(persistence) => {
            if missed > persistence.max_resume_updates() as u64 {
                return reset(ResetReason::TooOld, since, point);
            }
            persistence
                .store()
                .updates_between(user, since, point.seq)
                .await
                .map_err(|error| {
                    tracing::error!(%error, user, "could not read stored trade updates");
                    OrderError::new(
                        OrderError::INTERNAL,
                        "trade updates could not be read from the store",
                    )
                })?
        }
        None => recent(since, point.seq),
    };
    // Complete and contiguous, or the oldest ones are no longer kept.
    let contiguous = updates.len() as u64 == missed
        && updates
            .iter()
            .zip(since + 1..)
            .all(|(update, seq)| update.seq == seq);
    if contiguous {
        Ok(Resume::Replay {
            seq: point.seq,
            updates,
        })
    } else {
        reset(ResetReason::TooOld, since, point)
    }
}

fn reset(reason: ResetReason, since: u64, point: ResumePoint) -> Result<Resume, OrderError> {
    // The actor takes the state whenever `since` is not the current sequence, which is the
    // only case that can reset.
    let Some((orders, account)) = point.state else {
        return Err(OrderError::new(
            OrderError::INTERNAL,
            "the exchange gave no state to reset to",
        ));
    };
    Ok(Resume::Reset(Box::new(AccountSnapshot {
        reason,
        since,
        seq: point.seq,
        orders,
        account,
    })))
}

/// The user's order with this `client_order_id` from the store (`None` without a store).
pub(super) async fn stored_order(
    persistence: Option<&Arc<Persistence>>,
    user: &str,
    client_order_id: &str,
) -> Result<Option<Order>, OrderError> {
    let Some(persistence) = persistence else {
        return Ok(None);
    };
    persistence
        .store()
        .order_by_client_id(user, client_order_id)
        .await
        .map_err(|error| {
            tracing::error!(%error, user, "could not read an order from the store");
            OrderError::new(
                OrderError::INTERNAL,
                "the order could not be read from the store",
            )
        })
}

/// The answer for an order the engine forgot and no store has (store disabled).
pub(super) fn forgotten(id: &str) -> OrderError {
    OrderError::new(
        OrderError::NOT_FOUND,
        format!("order {id} is finished and no longer kept (the store is disabled)"),
    )
}

/// A duplicate `client_order_id` whose order the engine no longer keeps gets that order from
/// the store, so the reply always shows the order as it stands.
pub(super) async fn complete_duplicate(
    persistence: Option<&Arc<Persistence>>,
    user: &str,
    wanted: Option<String>,
    result: Result<Order, OrderError>,
) -> Result<Order, OrderError> {
    match (result, wanted) {
        (Err(mut error), Some(client_order_id))
            if error.code == OrderError::DUPLICATE_CLIENT_ORDER_ID && error.order.is_none() =>
        {
            if let Ok(Some(order)) = stored_order(persistence, user, &client_order_id).await {
                error.order = Some(Box::new(order));
            }
            Err(error)
        }
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::trading::api::TradeEvent;
    use rust_decimal::Decimal;

    fn update(seq: u64) -> TradeUpdate {
        let now = Utc::now();
        TradeUpdate {
            seq,
            event: TradeEvent::New,
            execution_id: None,
            price: None,
            qty: None,
            position_qty: None,
            timestamp: now,
            order: Order {
                id: format!("o{seq}"),
                client_order_id: format!("c{seq}"),
                symbol: "AAPL".into(),
                side: crate::trading::api::Side::Buy,
                order_type: crate::trading::api::OrderType::Market,
                time_in_force: crate::trading::api::TimeInForce::Day,
                qty: Decimal::ONE,
                filled_qty: Decimal::ZERO,
                filled_avg_price: None,
                limit_price: None,
                stop_price: None,
                status: crate::trading::api::OrderStatus::New,
                created_at: now,
                updated_at: now,
                submitted_at: now,
                filled_at: None,
                canceled_at: None,
                expired_at: None,
                replaced_by: None,
                replaces: None,
                commission: Decimal::ZERO,
            },
        }
    }

    fn point(seq: u64) -> ResumePoint {
        let portfolio = Portfolio {
            cash: Decimal::ONE_HUNDRED,
            equity: Decimal::ONE_HUNDRED,
            long_market_value: Decimal::ZERO,
            short_market_value: Decimal::ZERO,
            buying_power: Decimal::ONE_HUNDRED,
            realized_pl: Decimal::ZERO,
            t: Utc::now(),
            positions: Vec::new(),
        };
        ResumePoint {
            seq,
            state: Some((Vec::new(), portfolio)),
        }
    }

    fn held(seqs: &[u64]) -> impl FnOnce(u64, u64) -> Vec<TradeUpdate> + '_ {
        move |after, up_to| {
            seqs.iter()
                .filter(|s| **s > after && **s <= up_to)
                .map(|s| update(*s))
                .collect()
        }
    }

    fn reason(resume: Resume) -> Option<ResetReason> {
        match resume {
            Resume::Reset(snapshot) => Some(snapshot.reason),
            Resume::Replay { .. } => None,
        }
    }

    #[tokio::test]
    async fn only_a_complete_contiguous_run_is_replayed_anything_else_resets() {
        let replay = answer("u", 2, point(5), None, held(&[1, 2, 3, 4, 5]))
            .await
            .expect("answer");
        match replay {
            Resume::Replay { seq, updates } => {
                assert_eq!(seq, 5);
                assert_eq!(updates.iter().map(|u| u.seq).collect::<Vec<_>>(), [3, 4, 5]);
            }
            other => panic!("expected a replay: {other:?}"),
        }
        // The oldest ones are gone (a ring that moved on, or pruned rows).
        let gone = answer("u", 1, point(5), None, held(&[3, 4, 5])).await;
        assert_eq!(reason(gone.expect("answer")), Some(ResetReason::TooOld));
        // A hole in the middle is never replayed around.
        let holed = answer("u", 1, point(5), None, held(&[2, 3, 5])).await;
        assert_eq!(reason(holed.expect("answer")), Some(ResetReason::TooOld));
        let ahead = answer("u", 9, point(5), None, held(&[])).await;
        assert_eq!(reason(ahead.expect("answer")), Some(ResetReason::Ahead));
        let current = answer("u", 5, point(5), None, held(&[])).await;
        assert_eq!(
            reason(current.expect("answer")),
            None,
            "up to date: an empty replay"
        );
    }

    #[test]
    fn the_retention_and_the_resume_limit_are_settings_checked_at_load() {
        let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load_from(&config_dir, None, &[]).expect("defaults");
        assert_eq!(
            settings.trading.updates_retention,
            std::time::Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(settings.trading.max_resume_updates, 10_000);
        let env = vec![(
            "TICKGATE__TRADING__UPDATES_RETENTION".to_string(),
            "36h".to_string(),
        )];
        let settings = Settings::load_from(&config_dir, None, &env).expect("from the environment");
        assert_eq!(
            settings.trading.updates_retention,
            std::time::Duration::from_secs(36 * 3600)
        );
        let bad = vec![
            (
                "TICKGATE__TRADING__UPDATES_RETENTION".to_string(),
                "0s".to_string(),
            ),
            (
                "TICKGATE__TRADING__MAX_RESUME_UPDATES".to_string(),
                "0".to_string(),
            ),
        ];
        let error = Settings::load_from(&config_dir, None, &bad)
            .expect_err("both refused")
            .to_string();
        assert!(error.contains("trading.updates_retention"), "{error}");
        assert!(error.contains("trading.max_resume_updates"), "{error}");
    }
}
