//! Process-wide counters and gauges, rendered as Prometheus text at `GET /metrics`.
//!
//! Plain atomics rather than a metrics registry: the fan-out path bumps these once per batch,
//! and an atomic add is the cheapest thing that stays correct across threads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

/// Transports that hold client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
        }
    }
}

/// Feed labels, in the order of the per-feed arrays in [`Metrics`].
pub const FEED_LABELS: [&str; 3] = ["market", "news", "alerts"];

#[derive(Debug, Default)]
pub struct Metrics {
    pub sse_connections: AtomicI64,
    pub ws_connections: AtomicI64,
    pub sse_connections_total: AtomicU64,
    pub ws_connections_total: AtomicU64,
    pub published_market: AtomicU64,
    pub published_news: AtomicU64,
    pub published_alerts: AtomicU64,
    pub delivered_sse: AtomicU64,
    pub delivered_ws: AtomicU64,
    pub conflated: AtomicU64,
    /// Trades and quotes a `max_rate` subscriber's throttle replaced with a newer one of
    /// their symbol before they went out (what the client asked not to get, not a loss).
    pub throttled: AtomicU64,
    pub dropped: AtomicU64,
    pub slow_client_disconnects: AtomicU64,
    pub replayed: AtomicU64,
    pub resets: AtomicU64,
    /// Per feed (market, news, alerts, the order of [`FEED_LABELS`]): bytes held by the
    /// replay window, and entries evicted to keep it within its byte budget or its count.
    pub replay_window_bytes: [AtomicU64; 3],
    pub replay_evicted_budget: [AtomicU64; 3],
    pub replay_evicted_count: [AtomicU64; 3],
    /// Rejected ingest items keyed by (source, reason).
    ingest_rejected: Mutex<BTreeMap<(String, String), u64>>,
    /// Extra gauges/counters registered by other modules: name -> (help, kind, value by labels).
    extra: Mutex<BTreeMap<String, ExtraMetric>>,
}

#[derive(Debug, Default)]
struct ExtraMetric {
    help: String,
    kind: &'static str,
    values: BTreeMap<String, f64>,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn connection_opened(&self, transport: Transport) {
        match transport {
            Transport::Sse => {
                self.sse_connections.fetch_add(1, Ordering::Relaxed);
                add(&self.sse_connections_total, 1);
            }
            Transport::WebSocket => {
                self.ws_connections.fetch_add(1, Ordering::Relaxed);
                add(&self.ws_connections_total, 1);
            }
        }
    }

    pub fn connection_closed(&self, transport: Transport) {
        match transport {
            Transport::Sse => self.sse_connections.fetch_sub(1, Ordering::Relaxed),
            Transport::WebSocket => self.ws_connections.fetch_sub(1, Ordering::Relaxed),
        };
    }

    pub fn delivered(&self, transport: Transport, n: u64) {
        match transport {
            Transport::Sse => add(&self.delivered_sse, n),
            Transport::WebSocket => add(&self.delivered_ws, n),
        }
    }

    pub fn ingest_rejected(&self, source: &str, reason: &str) {
        *self
            .ingest_rejected
            .lock()
            .entry((source.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    pub fn ingest_rejected_count(&self, source: &str) -> u64 {
        self.ingest_rejected
            .lock()
            .iter()
            .filter(|((s, _), _)| s == source)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Sets a gauge owned by another module, e.g. `tickgate_source_up{source="yahoo"}`.
    /// `labels` is the rendered label set without braces, e.g. `source="yahoo"`.
    pub fn set_gauge(&self, name: &str, help: &str, labels: &str, value: f64) {
        let mut extra = self.extra.lock();
        let metric = extra.entry(name.to_owned()).or_default();
        metric.help = help.to_owned();
        metric.kind = "gauge";
        metric.values.insert(labels.to_owned(), value);
    }

    /// Adds to a counter owned by another module.
    pub fn add_counter(&self, name: &str, help: &str, labels: &str, n: f64) {
        let mut extra = self.extra.lock();
        // Every simulated tick counts here (see `ingest::source`): a counter seen before is
        // bumped without allocating.
        if let Some(value) = extra
            .get_mut(name)
            .and_then(|metric| metric.values.get_mut(labels))
        {
            *value += n;
            return;
        }
        let metric = extra.entry(name.to_owned()).or_default();
        metric.help = help.to_owned();
        metric.kind = "counter";
        *metric.values.entry(labels.to_owned()).or_default() += n;
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tickgate_connections Open client connections by transport.\n# TYPE tickgate_connections gauge"
        );
        let _ = writeln!(
            out,
            "tickgate_connections{{transport=\"sse\"}} {}",
            self.sse_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tickgate_connections{{transport=\"ws\"}} {}",
            self.ws_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tickgate_connections_total Connections accepted by transport.\n# TYPE tickgate_connections_total counter"
        );
        let _ = writeln!(
            out,
            "tickgate_connections_total{{transport=\"sse\"}} {}",
            load(&self.sse_connections_total)
        );
        let _ = writeln!(
            out,
            "tickgate_connections_total{{transport=\"ws\"}} {}",
            load(&self.ws_connections_total)
        );
        let _ = writeln!(
            out,
            "# HELP tickgate_messages_published_total Events accepted into the hub by feed.\n# TYPE tickgate_messages_published_total counter"
        );
        for (feed, counter) in [
            ("market", &self.published_market),
            ("news", &self.published_news),
            ("alerts", &self.published_alerts),
        ] {
            let _ = writeln!(
                out,
                "tickgate_messages_published_total{{feed=\"{feed}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickgate_coalesce_holds_total Connections that fell behind and started holding their writes for the coalescing window, by the rule that made them (late: wake-ups that found a second event; rate: a fast stream).\n# TYPE tickgate_coalesce_holds_total counter"
        );
        for (rule, counter) in [
            ("late", &crate::hub::coalesce::HOLDS_LATE),
            ("rate", &crate::hub::coalesce::HOLDS_RATE),
        ] {
            let _ = writeln!(
                out,
                "tickgate_coalesce_holds_total{{rule=\"{rule}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickgate_messages_delivered_total Events written to clients by transport.\n# TYPE tickgate_messages_delivered_total counter"
        );
        let _ = writeln!(
            out,
            "tickgate_messages_delivered_total{{transport=\"sse\"}} {}",
            load(&self.delivered_sse)
        );
        let _ = writeln!(
            out,
            "tickgate_messages_delivered_total{{transport=\"ws\"}} {}",
            load(&self.delivered_ws)
        );
        for (name, help, counter) in [
            (
                "tickgate_messages_conflated_total",
                "Queued price events replaced by a newer one for a slow client.",
                &self.conflated,
            ),
            (
                "tickgate_messages_throttled_total",
                "Trades and quotes a max_rate subscriber's throttle replaced by a newer one.",
                &self.throttled,
            ),
            (
                "tickgate_messages_dropped_total",
                "Queued events discarded when a slow client was disconnected.",
                &self.dropped,
            ),
            (
                "tickgate_slow_client_disconnects_total",
                "Clients disconnected because they could not keep up (code 407).",
                &self.slow_client_disconnects,
            ),
            (
                "tickgate_messages_replayed_total",
                "Events replayed to resuming clients.",
                &self.replayed,
            ),
            (
                "tickgate_resume_resets_total",
                "Resumes answered with a reset because the cursor was too old or foreign.",
                &self.resets,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickgate_replay_window_bytes Bytes held by each feed's replay window (budget: hub.replay_window_bytes).\n# TYPE tickgate_replay_window_bytes gauge"
        );
        for (feed, bytes) in FEED_LABELS.iter().zip(&self.replay_window_bytes) {
            let _ = writeln!(
                out,
                "tickgate_replay_window_bytes{{feed=\"{feed}\"}} {}",
                load(bytes)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tickgate_replay_window_evictions_total Entries dropped from a replay window, by feed and by which bound (count or bytes) made room.\n# TYPE tickgate_replay_window_evictions_total counter"
        );
        for (index, feed) in FEED_LABELS.iter().enumerate() {
            for (reason, counter) in [
                ("count", &self.replay_evicted_count[index]),
                ("budget", &self.replay_evicted_budget[index]),
            ] {
                let _ = writeln!(
                    out,
                    "tickgate_replay_window_evictions_total{{feed=\"{feed}\",reason=\"{reason}\"}} {}",
                    load(counter)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tickgate_ingest_rejected_total Ingested items refused by validation, by source and reason.\n# TYPE tickgate_ingest_rejected_total counter"
        );
        for ((source, reason), n) in self.ingest_rejected.lock().iter() {
            let _ = writeln!(
                out,
                "tickgate_ingest_rejected_total{{source=\"{}\",reason=\"{}\"}} {n}",
                escape_label(source),
                escape_label(reason)
            );
        }
        for (name, metric) in self.extra.lock().iter() {
            let _ = writeln!(
                out,
                "# HELP {name} {}\n# TYPE {name} {}",
                metric.help, metric.kind
            );
            for (labels, value) in &metric.values {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

/// Escapes a Prometheus label value.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
