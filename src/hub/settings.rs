//! `[hub]`: replay window (events and bytes), subscriber queue capacity, heartbeat and SSE
//! retry intervals, bars kept in memory, the coalescing window. Owned here, beside the hub
//! that applies every one of them; `crate::settings` re-exports it into the configuration
//! tree.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HubConfig {
    /// Events kept per feed for `Last-Event-ID` resume.
    pub replay_window: usize,
    /// Bytes each feed's replay window may hold; the oldest events go first.
    pub replay_window_bytes: usize,
    /// Queued events per subscriber before conflation, then disconnect (407).
    pub subscriber_queue_capacity: usize,
    /// Interval of the shared heartbeat sweep (SSE comment, WebSocket ping).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Reconnect delay sent to SSE clients in `retry:`.
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
    /// One-minute bars kept in memory per symbol.
    pub bar_history: usize,
    /// How long a connection that has fallen behind its stream (or receives more than three
    /// events per window) holds its next write so that one write carries several events (see `hub::coalesce`); zero writes every wake-up at once.
    #[serde(with = "humantime_serde")]
    pub coalesce_window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            replay_window: 10_000,
            replay_window_bytes: 32 << 20,
            subscriber_queue_capacity: 1024,
            heartbeat_interval: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            bar_history: 1440,
            coalesce_window: Duration::from_millis(20),
        }
    }
}
