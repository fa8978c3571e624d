//! What every upstream source shares: the fixed-rate schedule with jitter, capped exponential
//! backoff honouring `Retry-After`, the circuit that reports a source down and up again (with
//! `status` events to users), the price guard (duplicates, implausible jumps), the bounded
//! HTTP fetch, and start-up of the configured pollers and replays.
//!
//! The loop in [`run_poller`] only sees a [`PollRound`], so its timing is tested with paused
//! tokio time and a scripted round, while the provider modules are tested over real sockets.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ingest::SourceHealth;
use crate::ingest::config::{PollerSettings, Provider, SourcesSettings};
use crate::ingest::source::{Publisher, SourceContext};

/// Largest upstream body read; provider replies are a few kilobytes, an outage page a few more.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 4 << 20;

/// Why one poll round failed. Each failure counts towards backoff and the circuit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollFailure {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("rate limited (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("response is not JSON: {0}")]
    NotJson(String),
    #[error("unexpected response shape: {0}")]
    BadShape(String),
    #[error("response body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Config(String),
}

impl PollFailure {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PollFailure::Timeout => "timeout",
            PollFailure::Connect(_) => "connect",
            PollFailure::RateLimited { .. } => "rate_limited",
            PollFailure::Status { status, .. } if *status >= 500 => "http_5xx",
            PollFailure::Status { .. } => "http_status",
            PollFailure::NotJson(_) => "not_json",
            PollFailure::BadShape(_) => "bad_shape",
            PollFailure::TooLarge(_) => "too_large",
            PollFailure::Config(_) => "config",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollFailure::RateLimited { retry_after } | PollFailure::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether the upstream sent data that had to be thrown away (counted as a rejection too).
    pub fn is_bad_data(&self) -> bool {
        matches!(
            self,
            PollFailure::NotJson(_) | PollFailure::BadShape(_) | PollFailure::TooLarge(_)
        )
    }
}

/// One round of a source: poll every symbol once and publish what changed.
pub trait PollRound: Send {
    fn poll_round(&mut self) -> impl Future<Output = Result<(), PollFailure>> + Send;
}

/// Timing and circuit parameters of [`run_poller`].
#[derive(Debug, Clone)]
pub struct PollTiming {
    pub interval: Duration,
    pub jitter: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub retry_after_max: Duration,
    pub failures_before_down: u32,
    /// Seed of the jitter; `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
}

impl PollTiming {
    pub fn from_settings(settings: &PollerSettings) -> PollTiming {
        PollTiming {
            interval: settings.interval,
            jitter: settings.jitter,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            retry_after_max: settings.retry_after_max,
            failures_before_down: settings.failures_before_down,
            jitter_seed: None,
        }
    }
}

/// Due times on a fixed grid: the next poll is due one period after the previous one was due,
/// however long the poll took, so the schedule never drifts. Slots that passed while a poll
/// was still running are skipped rather than fired in a burst.
#[derive(Debug, Clone)]
pub struct FixedRateSchedule {
    period: Duration,
    next_due: Instant,
}

impl FixedRateSchedule {
    pub fn new(first_due: Instant, period: Duration) -> FixedRateSchedule {
        FixedRateSchedule {
            period: period.max(Duration::from_millis(1)),
            next_due: first_due,
        }
    }

    pub fn due(&self) -> Instant {
        self.next_due
    }

    /// Moves to the first grid slot not earlier than `now`; returns how many slots were skipped.
    pub fn advance(&mut self, now: Instant) -> u32 {
        self.next_due += self.period;
        if self.next_due >= now {
            return 0;
        }
        // Computed rather than looped, so a long stall (a suspended laptop) costs nothing.
        let behind = (now - self.next_due).as_nanos();
        let period = self.period.as_nanos().max(1);
        let skipped = behind.div_ceil(period);
        let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
        self.next_due += self.period * skipped;
        skipped
    }

    /// After a failure the retry replaces the grid slot: the next attempt is at `at` (sooner
    /// than the slot for a short backoff, later under a long one) and the grid restarts there.
    pub fn retry_at(&mut self, at: Instant) {
        self.next_due = at;
    }
}

/// Capped exponential backoff: `initial * 2^(n-1)` after the n-th consecutive failure, at most
/// `max`, and never shorter than the provider's `Retry-After` (itself capped by
/// `retry_after_max` so a hostile header cannot stall the source forever).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    retry_after_max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, retry_after_max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            retry_after_max,
            failures: 0,
        }
    }

    /// The delay before the next attempt after one more failure.
    pub fn on_failure(&mut self, retry_after: Option<Duration>) -> Duration {
        let exponent = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let exponential = self
            .initial
            .checked_mul(1u32 << exponent)
            .unwrap_or(self.max)
            .min(self.max);
        match retry_after {
            Some(wait) => exponential.max(wait.min(self.retry_after_max)),
            None => exponential,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What a poll result changed in the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitChange {
    /// Nothing users need to hear about.
    Unchanged,
    /// A first success, or a success after failures that never reached the threshold.
    Up,
    /// Failing, not yet down.
    Degraded,
    /// The failure that reached the threshold: the source is now down.
    WentDown,
    /// The first success after being down.
    Recovered,
}

/// Counts consecutive failures; opens (down) at a threshold and closes on the next success.
#[derive(Debug, Clone)]
pub struct Circuit {
    threshold: u32,
    consecutive_failures: u32,
    down: bool,
    seen_success: bool,
}

impl Circuit {
    pub fn new(threshold: u32) -> Circuit {
        Circuit {
            threshold: threshold.max(1),
            consecutive_failures: 0,
            down: false,
            seen_success: false,
        }
    }

    pub fn is_down(&self) -> bool {
        self.down
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn on_success(&mut self) -> CircuitChange {
        let change = if self.down {
            CircuitChange::Recovered
        } else if self.consecutive_failures > 0 || !self.seen_success {
            CircuitChange::Up
        } else {
            CircuitChange::Unchanged
        };
        self.consecutive_failures = 0;
        self.down = false;
        self.seen_success = true;
        change
    }

    pub fn on_failure(&mut self) -> CircuitChange {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.down {
            CircuitChange::Unchanged
        } else if self.consecutive_failures >= self.threshold {
            self.down = true;
            CircuitChange::WentDown
        } else {
            CircuitChange::Degraded
        }
    }
}

/// Runs a source's rounds on the fixed-rate schedule until `shutdown` fires, reporting health,
/// backing off after failures, and announcing down/recovery to users of `symbols`.
pub async fn run_poller<R: PollRound>(
    context: SourceContext,
    symbols: Vec<String>,
    timing: PollTiming,
    mut round: R,
    shutdown: CancellationToken,
) {
    let mut rng = match timing.jitter_seed {
        Some(seed) => SmallRng::seed_from_u64(seed),
        None => SmallRng::from_rng(&mut rand::rng()),
    };
    let labels = context.labels();
    let mut schedule = FixedRateSchedule::new(Instant::now(), timing.interval);
    let mut backoff = Backoff::new(
        timing.backoff_initial,
        timing.backoff_max,
        timing.retry_after_max,
    );
    let mut circuit = Circuit::new(timing.failures_before_down);
    context.report(SourceHealth::Starting);
    loop {
        let jitter = if timing.jitter.is_zero() {
            Duration::ZERO
        } else {
            rng.random_range(Duration::ZERO..timing.jitter)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(schedule.due() + jitter) => {}
        }
        context.metrics.add_counter(
            "tickgate_source_polls_total",
            "Poll rounds started by an upstream source.",
            labels,
            1.0,
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = round.poll_round() => result,
        };
        let now = Instant::now();
        match result {
            Ok(()) => {
                let skipped = schedule.advance(now);
                if skipped > 0 {
                    context.metrics.add_counter(
                        "tickgate_source_skipped_polls_total",
                        "Scheduled polls skipped because the previous poll was still running.",
                        labels,
                        f64::from(skipped),
                    );
                }
                backoff.reset();
                match circuit.on_success() {
                    CircuitChange::Recovered => {
                        tracing::info!(source = %context.name, "upstream recovered");
                        context.report(SourceHealth::Up);
                        // Usually done already, just before the round's first new price.
                        context.announce_recovery();
                    }
                    CircuitChange::Up => context.report(SourceHealth::Up),
                    _ => {}
                }
            }
            Err(failure) => {
                let delay = backoff.on_failure(failure.retry_after());
                schedule.retry_at(now + delay);
                context.metrics.add_counter(
                    "tickgate_source_failures_total",
                    "Failed poll rounds by source and reason.",
                    &format!("{labels},reason=\"{}\"", failure.label()),
                    1.0,
                );
                if failure.is_bad_data() {
                    context.reject(failure.label());
                }
                let failures = circuit.consecutive_failures() + 1;
                let reason = format!("{failure} ({failures} consecutive failures)");
                tracing::warn!(
                    source = %context.name,
                    %failure,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "upstream poll failed"
                );
                match circuit.on_failure() {
                    CircuitChange::WentDown => {
                        tracing::error!(source = %context.name, %reason, "upstream is down");
                        context.report(SourceHealth::Down {
                            reason: reason.clone(),
                        });
                        context.announce_down(&symbols, &failure.to_string());
                    }
                    CircuitChange::Degraded => {
                        context.report(SourceHealth::Degraded { reason });
                    }
                    _ => context.report(SourceHealth::Down { reason }),
                }
            }
        }
    }
}

/// Outcome of comparing a polled price with the last accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceCheck {
    /// Publish it (then call [`PriceGuard::accept`] once the hub took it).
    Publish,
    /// Same as the last accepted price: not a new tick.
    Unchanged,
    /// Moved further than the allowed fraction; dropped until confirmed.
    ImplausibleJump,
}

/// Per-symbol last accepted price: drops repeats and implausible jumps. A jump seen on
/// `confirmations` consecutive polls is accepted as the market's new level, so a real gap (an
/// opening gap, a split) cannot lock a symbol out forever.
#[derive(Debug, Clone)]
pub struct PriceGuard {
    max_jump_fraction: f64,
    confirmations: u32,
    last_accepted: HashMap<String, f64>,
    pending_jumps: HashMap<String, u32>,
}

impl PriceGuard {
    pub fn new(max_jump_fraction: f64, confirmations: u32) -> PriceGuard {
        PriceGuard {
            max_jump_fraction,
            confirmations,
            last_accepted: HashMap::new(),
            pending_jumps: HashMap::new(),
        }
    }

    pub fn last_accepted(&self, symbol: &str) -> Option<f64> {
        self.last_accepted.get(symbol).copied()
    }

    pub fn check(&mut self, symbol: &str, price: f64) -> PriceCheck {
        let Some(last) = self.last_accepted(symbol) else {
            return PriceCheck::Publish;
        };
        if price == last {
            self.pending_jumps.remove(symbol);
            return PriceCheck::Unchanged;
        }
        if ((price - last) / last).abs() <= self.max_jump_fraction {
            self.pending_jumps.remove(symbol);
            return PriceCheck::Publish;
        }
        let seen = self.pending_jumps.entry(symbol.to_owned()).or_default();
        *seen += 1;
        if self.confirmations > 0 && *seen >= self.confirmations {
            PriceCheck::Publish
        } else {
            PriceCheck::ImplausibleJump
        }
    }

    pub fn accept(&mut self, symbol: &str, price: f64) {
        self.pending_jumps.remove(symbol);
        self.last_accepted.insert(symbol.to_owned(), price);
    }
}

/// A provider reply read in full (bounded).
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl HttpReply {
    /// Parses the body as JSON, telling an outage page or plain text apart from a bad shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PollFailure> {
        let first = self.body.iter().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'{') | Some(b'[')) {
            return Err(PollFailure::NotJson(self.describe()));
        }
        serde_json::from_slice(&self.body).map_err(|e| PollFailure::BadShape(e.to_string()))
    }

    /// A short, log-safe description of a non-JSON body.
    fn describe(&self) -> String {
        let text: String = String::from_utf8_lossy(&self.body[..self.body.len().min(60)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let content_type = if self.content_type.is_empty() {
            "no content type"
        } else {
            &self.content_type
        };
        format!("HTTP {} {content_type}: {:?}", self.status, text.trim())
    }
}

fn classify(error: &reqwest::Error) -> PollFailure {
    if error.is_timeout() {
        PollFailure::Timeout
    } else {
        // The URL in reqwest's message carries no secret: tokens travel in headers.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        PollFailure::Connect(text)
    }
}

/// `Retry-After` as a delay: delta seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let date = SystemTime::from(date.with_timezone(&Utc));
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Sends a request and reads the reply, classifying 429 and 5xx as failures (with their
/// `Retry-After`). Other statuses are returned for the provider to judge.
pub async fn fetch(request: reqwest::RequestBuilder) -> Result<HttpReply, PollFailure> {
    let mut response = request.send().await.map_err(|e| classify(&e))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    if status == 429 {
        return Err(PollFailure::RateLimited { retry_after });
    }
    if status >= 500 {
        return Err(PollFailure::Status {
            status,
            retry_after,
        });
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_UPSTREAM_BODY_BYTES as u64)
    {
        return Err(PollFailure::TooLarge(MAX_UPSTREAM_BODY_BYTES));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
        if body.len() + chunk.len() > MAX_UPSTREAM_BODY_BYTES {
            return Err(PollFailure::TooLarge(MAX_UPSTREAM_BODY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpReply {
        status,
        content_type,
        body: body.freeze(),
    })
}

/// The shared HTTP client of every poller.
pub fn build_client(settings: &SourcesSettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .user_agent(settings.user_agent.clone())
        .build()
}

/// Reads a poller's token from its settings or the environment variable they name.
pub fn resolve_token(settings: &PollerSettings) -> Result<String, PollFailure> {
    if !settings.token.is_empty() {
        return Ok(settings.token.clone());
    }
    let variable = settings.token_env.trim();
    match std::env::var(variable) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        _ => Err(PollFailure::Config(format!(
            "API token environment variable {variable} is not set"
        ))),
    }
}

/// Starts every configured poller and replay (called from `ingest::spawn_sources`).
pub fn spawn_upstream_sources(
    settings: &super::config::SourcesSettings,
    simulator_enabled: bool,
    publisher: &Publisher,
    universe: &crate::market::SymbolUniverse,
    shutdown: &CancellationToken,
) {
    if settings.pollers.is_empty() && settings.replays.is_empty() {
        return;
    }
    let context = |name: &str| publisher.context(name);
    if simulator_enabled {
        tracing::warn!(
            "the simulator is enabled next to upstream sources: both publish the same symbols, \
             and the hub refuses ticks whose time goes backwards; set simulator.enabled = false"
        );
    }
    let client = if settings.pollers.is_empty() {
        None
    } else {
        match build_client(settings) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::error!(%error, "cannot build the HTTP client for upstream pollers");
                for poller in &settings.pollers {
                    context(&poller.name).report(SourceHealth::Down {
                        reason: format!("HTTP client: {error}"),
                    });
                }
                None
            }
        }
    };
    // Each source runs under `Publisher::spawn_source`: once here, or (cluster mode) wherever
    // its lease is held, with a context made for that run.
    if let Some(client) = client {
        for poller in &settings.pollers {
            // Registered before any task runs, so `/readyz` never looks ready without them.
            context(&poller.name).report(SourceHealth::Starting);
            // Symbols were validated against the universe at start-up; this keeps its spelling.
            let symbols: Vec<String> = poller
                .symbols
                .iter()
                .map(|s| s.trim().to_ascii_uppercase())
                .filter(|s| universe.contains(s))
                .collect();
            let timing = PollTiming::from_settings(poller);
            let token = match poller.provider {
                Some(Provider::Finnhub) => match resolve_token(poller) {
                    Ok(token) => Some(token),
                    Err(failure) => {
                        tracing::error!(source = %poller.name, %failure, "poller not started");
                        context(&poller.name).report(SourceHealth::Down {
                            reason: failure.to_string(),
                        });
                        continue;
                    }
                },
                Some(Provider::Yahoo) => None,
                None => continue,
            };
            let poller = poller.clone();
            let client = client.clone();
            publisher.spawn_source(&poller.name.clone(), shutdown, move |ctx, stop| {
                let (symbols, timing) = (symbols.clone(), timing.clone());
                match &token {
                    None => {
                        let round = crate::ingest::yahoo::YahooRound::new(
                            client.clone(),
                            &poller,
                            symbols.clone(),
                            ctx.clone(),
                        );
                        Box::pin(run_poller(ctx, symbols, timing, round, stop))
                    }
                    Some(token) => match crate::ingest::finnhub::FinnhubRound::new(
                        client.clone(),
                        &poller,
                        token,
                        symbols.clone(),
                        ctx.clone(),
                    ) {
                        Ok(round) => Box::pin(run_poller(ctx, symbols, timing, round, stop)),
                        Err(failure) => {
                            ctx.report(SourceHealth::Down {
                                reason: failure.to_string(),
                            });
                            Box::pin(async {})
                        }
                    },
                }
            });
        }
    }
    for replay in &settings.replays {
        context(&replay.name).report(SourceHealth::Starting);
        let replay = replay.clone();
        publisher.spawn_source(&replay.name.clone(), shutdown, move |ctx, stop| {
            Box::pin(crate::ingest::replay::run(replay.clone(), ctx, stop))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let mut backoff = Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(8),
            Duration::from_secs(60),
        );
        let delays: Vec<u64> = (0..5).map(|_| backoff.on_failure(None).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 8]);
        backoff.reset();
        assert_eq!(
            backoff.on_failure(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            backoff.on_failure(Some(Duration::from_secs(3600))),
            Duration::from_secs(60),
            "a huge Retry-After is capped"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 + 0; ten seconds later:
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn circuit_goes_down_at_the_threshold_and_recovers_on_success() {
        let mut circuit = Circuit::new(3);
        assert_eq!(circuit.on_success(), CircuitChange::Up);
        assert_eq!(circuit.on_failure(), CircuitChange::Degraded);
        assert_eq!(circuit.on_failure(), CircuitChange::Degraded);
        assert_eq!(circuit.on_failure(), CircuitChange::WentDown);
        assert_eq!(circuit.on_failure(), CircuitChange::Unchanged);
        assert!(circuit.is_down());
        assert_eq!(circuit.on_success(), CircuitChange::Recovered);
        assert_eq!(circuit.on_success(), CircuitChange::Unchanged);
    }

    #[test]
    fn price_guard_drops_repeats_and_jumps_until_confirmed() {
        let mut guard = PriceGuard::new(0.1, 3);
        assert_eq!(guard.check("AAPL", 100.0), PriceCheck::Publish);
        guard.accept("AAPL", 100.0);
        assert_eq!(guard.check("AAPL", 100.0), PriceCheck::Unchanged);
        assert_eq!(guard.check("AAPL", 105.0), PriceCheck::Publish);
        assert_eq!(guard.check("AAPL", 150.0), PriceCheck::ImplausibleJump);
        assert_eq!(guard.check("AAPL", 151.0), PriceCheck::ImplausibleJump);
        assert_eq!(guard.check("AAPL", 150.5), PriceCheck::Publish);
        guard.accept("AAPL", 150.5);
        assert_eq!(guard.check("AAPL", 151.0), PriceCheck::Publish);
    }

    #[test]
    fn schedule_skips_slots_missed_by_a_slow_poll_and_stays_on_the_grid() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let mut schedule = FixedRateSchedule::new(start, period);
        assert_eq!(schedule.advance(start + Duration::from_secs(3)), 0);
        assert_eq!(schedule.due(), start + period);
        assert_eq!(schedule.advance(start + Duration::from_secs(35)), 2);
        assert_eq!(schedule.due(), start + Duration::from_secs(40));
    }
}
