//! What the hub's calls return: a publish's accepted entry or refusal, a subscription's replay
//! and snapshot, and why a resume could not continue.

use std::sync::Arc;

use super::{Cursor, Entry};
use crate::market::InvalidEvent;

/// Why a resume could not continue from the client's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The cursor is from an earlier (or another node's) log.
    EpochChanged,
    /// The cursor is older than the retained window.
    CursorTooOld,
    /// The cursor is ahead of the log (it was never issued by this log).
    CursorAhead,
}

impl ResetReason {
    pub fn message(self) -> &'static str {
        match self {
            ResetReason::EpochChanged => "cursor is from another epoch; fresh snapshot follows",
            ResetReason::CursorTooOld => {
                "cursor is older than the replay window; fresh snapshot follows"
            }
            ResetReason::CursorAhead => "cursor is ahead of the feed; fresh snapshot follows",
        }
    }
}

/// Current state handed to a new subscriber: what to send before live events.
#[derive(Debug)]
pub struct Subscribed {
    /// Events after the client's cursor, in order (empty on a fresh connect or a reset).
    pub replay: Vec<Arc<Entry>>,
    /// Set when the client's cursor could not be honoured.
    pub reset: Option<ResetReason>,
    /// Latest values (market feed) or recent items (news, alerts) matching the filter; filled
    /// on a fresh connect with `want_snapshot` and on every reset.
    pub snapshot: Option<Vec<Arc<Entry>>>,
    /// The cursor of the newest event in the feed when the subscription was made.
    pub cursor: Cursor,
}

/// Accepted event, with its position.
#[derive(Debug, Clone)]
pub struct Published {
    pub entry: Arc<Entry>,
}

/// Why the hub refused an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error("could not encode event: {0}")]
    Encode(String),
    /// The hub is shutting down: its feeds are sealed at the head every stream was told
    /// to resume from, so nothing more is accepted (see [`Hub::shut_down`]).
    #[error("the server is shutting down; publish again once it is back")]
    ShuttingDown,
    /// Cluster mode: the shared log did not take the event.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterPublishError),
}

impl PublishError {
    /// The metric label of a refusal.
    pub fn reason_label(&self) -> &'static str {
        match self {
            PublishError::Invalid(invalid) => invalid.reason_label(),
            PublishError::Encode(_) => "encode",
            PublishError::ShuttingDown => "shutting_down",
            PublishError::Cluster(error) => error.reason_label(),
        }
    }
}
