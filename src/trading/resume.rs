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
