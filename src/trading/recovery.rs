//! Recovery after a store failure halted trading (see [`super::persist`]): the halt is
//! announced on the market feed (`trading_halted`, symbol `*`), the store is probed with a
//! small write after 0.5 s and then with doubling waits up to 30 s, and once a probe succeeds
//! the exchange is rebuilt from the store and trading resumes, announced as
//! `trading_resumed`. No restart is needed.
//!
//! On a cluster the exchange runs on one node but traders are on every node: the halt and the
//! resume go to the exchange's outlet (its ordered events channel) as
//! [`Announcement::Trading`], and each node's listener tells its own sessions.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::AnnouncementOutlet;
use super::engine::{Announcement, Engine};
use super::persist::Persistence;
use crate::hub::Hub;
use crate::market::{MarketEvent, Status};

/// First wait before probing a store that failed, doubled after each failed probe.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between two probes of a failed store.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The exchange actor's view of a halt: when to probe next, and whom to tell.
pub(super) struct Recovery {
    hub: Option<Arc<Hub>>,
    /// A cluster's exchange: the statuses go to every node through it instead of the hub.
    outlet: Option<Arc<dyn AnnouncementOutlet>>,
    /// Set while trading is halted: when the next probe is due and the wait after it.
    probe: Option<(Instant, Duration)>,
}

impl Recovery {
    pub(super) fn new(
        hub: Option<Arc<Hub>>,
        outlet: Option<Arc<dyn AnnouncementOutlet>>,
    ) -> Recovery {
        Recovery {
            hub,
            outlet,
            probe: None,
        }
    }

    /// Notes whether trading is halted now; the first time it is, announces the halt and
    /// schedules the first probe.
    pub(super) fn observe(&mut self, halted: bool) {
        match (self.probe.is_some(), halted) {
            (false, true) => {
                tracing::warn!("trading halted by a store failure; probing the store with backoff");
                self.announce(
                    "trading_halted",
                    "trading is halted: the exchange could not store a change; it resumes by itself once the store accepts writes",
                );
                self.probe = Some((Instant::now() + BACKOFF_INITIAL, BACKOFF_INITIAL));
            }
            (true, false) => self.probe = None,
            _ => {}
        }
    }

    /// Resolves when the next probe is due; never while trading runs.
    pub(super) async fn due(&self) {
        match self.probe {
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Probes the store and, if it takes writes again, rebuilds `engine` from it and lifts
    /// the halt; otherwise waits twice as long before the next probe.
    pub(super) async fn attempt(&mut self, persistence: &Persistence, engine: &mut Engine) {
        match persistence.recover(engine).await {
            Ok(()) => {
                self.probe = None;
                self.announce(
                    "trading_resumed",
                    "trading resumed: the store accepts writes again",
                );
            }
            Err(error) => {
                if let Some((at, backoff)) = &mut self.probe {
                    *backoff = (*backoff * 2).min(BACKOFF_MAX);
                    *at = Instant::now() + *backoff;
                    tracing::warn!(%error, retry_in = ?*backoff, "the store still refuses writes; trading stays halted");
                }
            }
        }
    }

    /// A status for the whole market (`S: "*"`). Without a hub (tests) or once the hub is
    /// shut down nobody is listening, which is fine.
    /// On a cluster node the shared log numbers every feed, so the node's own halt goes out
    /// as a notice without an id (and is not in snapshots).
    /// A cluster's exchange hands it to its outlet instead: announced in order on the events
    /// channel (while its lease holds, which a halt does not end), every node's listener tells
    /// its own sessions, this node's included, once each.
    fn announce(&self, code: &str, message: &str) {
        if let Some(outlet) = &self.outlet {
            outlet.announce(&[Announcement::Trading {
                halted: code == "trading_halted",
                message: message.into(),
            }]);
            return;
        }
        let Some(hub) = &self.hub else { return };
        if hub.follows_shared_log() {
            hub.notify_status(code, message);
            return;
        }
        let status = MarketEvent::Status(Status {
            symbol: "*".into(),
            code: code.into(),
            message: message.into(),
            time: Utc::now(),
        });
        if let Err(error) = hub.publish_event(status) {
            tracing::debug!(%error, code, "trading status not published");
        }
    }
}
