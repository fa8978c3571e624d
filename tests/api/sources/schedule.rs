//! The poller loop's timing with paused tokio time: fixed-rate schedule without drift, jitter
//! that never accumulates, backoff honouring `Retry-After`, and the circuit's health reports
//! and status events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickgate::hub::{EventSink, PublishError};
use tickgate::ingest::poller::{PollFailure, PollRound, PollTiming, run_poller};
use tickgate::ingest::source::SourceContext;
use tickgate::ingest::{SourceHealth, SourceRegistry};
use tickgate::market::MarketEvent;
use tickgate::metrics::Metrics;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A round that records when it started, pretends to work for `work`, then returns the next
/// scripted result (the last one repeats).
struct ScriptedRound {
    origin: Instant,
    work: Duration,
    results: VecDeque<Result<(), PollFailure>>,
    started: Arc<Mutex<Vec<Duration>>>,
}

impl PollRound for ScriptedRound {
    async fn poll_round(&mut self) -> Result<(), PollFailure> {
        self.started
            .lock()
            .expect("lock")
            .push(self.origin.elapsed());
        tokio::time::sleep(self.work).await;
        if self.results.len() > 1 {
            self.results.pop_front().unwrap_or(Ok(()))
        } else {
            self.results.front().cloned().unwrap_or(Ok(()))
        }
    }
}

/// A sink that keeps what it is given, with the (paused) time it arrived.
#[derive(Default)]
struct RecordingSink {
    events: Mutex<Vec<(Duration, MarketEvent)>>,
    origin: Mutex<Option<Instant>>,
}

impl EventSink for RecordingSink {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        let origin = self
            .origin
            .lock()
            .expect("lock")
            .unwrap_or_else(Instant::now);
        self.events
            .lock()
            .expect("lock")
            .push((origin.elapsed(), event));
        // Refuse with a harmless error the
        // loop counts, after recording. Status publishing ignores the result.
        Err(PublishError::Encode("recorded".into()))
    }
}

struct Harness {
    started: Arc<Mutex<Vec<Duration>>>,
    sink: Arc<RecordingSink>,
    registry: SourceRegistry,
    shutdown: CancellationToken,
    origin: Instant,
}

fn timing(interval_s: u64) -> PollTiming {
    PollTiming {
        interval: Duration::from_secs(interval_s),
        jitter: Duration::ZERO,
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        retry_after_max: Duration::from_secs(60),
        failures_before_down: 3,
        jitter_seed: Some(7),
    }
}

fn start(timing: PollTiming, work: Duration, results: Vec<Result<(), PollFailure>>) -> Harness {
    let origin = Instant::now();
    let started = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::new(RecordingSink::default());
    *sink.origin.lock().expect("lock") = Some(origin);
    let metrics = Arc::new(Metrics::default());
    let registry = SourceRegistry::new(Arc::clone(&metrics));
    let context = SourceContext::new(
        "up1",
        Arc::clone(&sink) as Arc<dyn EventSink>,
        registry.clone(),
        metrics,
    );
    let shutdown = CancellationToken::new();
    let round = ScriptedRound {
        origin,
        work,
        results: results.into(),
        started: Arc::clone(&started),
    };
    tokio::spawn(run_poller(
        context,
        vec!["AAPL".into(), "MSFT".into()],
        timing,
        round,
        shutdown.clone(),
    ));
    Harness {
        started,
        sink,
        registry,
        shutdown,
        origin,
    }
}

impl Harness {
    async fn run_until(&self, seconds: u64) {
        tokio::time::sleep_until(self.origin + Duration::from_secs(seconds)).await;
    }

    fn started_secs(&self) -> Vec<f64> {
        self.started
            .lock()
            .expect("lock")
            .iter()
            .map(|d| d.as_secs_f64())
            .collect()
    }

    fn health(&self) -> Option<SourceHealth> {
        self.registry.snapshot().get("up1").cloned()
    }

    fn statuses(&self) -> Vec<(f64, String, String)> {
        self.sink
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(at, event)| match event {
                MarketEvent::Status(status) => {
                    Some((at.as_secs_f64(), status.symbol.clone(), status.code.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

fn server_error() -> Result<(), PollFailure> {
    Err(PollFailure::Status {
        status: 500,
        retry_after: None,
    })
}

#[tokio::test(start_paused = true)]
async fn polls_stay_on_a_fixed_grid_however_long_each_poll_takes() {
    let harness = start(timing(10), Duration::from_secs(3), vec![Ok(())]);
    harness.run_until(45).await;
    harness.shutdown.cancel();
    // A fixed-delay loop would start at 0, 13, 26, 39.
    assert_eq!(harness.started_secs(), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
}

#[tokio::test(start_paused = true)]
async fn a_poll_longer_than_the_interval_skips_slots_instead_of_bursting() {
    let harness = start(timing(10), Duration::from_secs(15), vec![Ok(())]);
    harness.run_until(65).await;
    harness.shutdown.cancel();
    assert_eq!(harness.started_secs(), vec![0.0, 20.0, 40.0, 60.0]);
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_poll_within_its_slot_without_accumulating() {
    let mut timing = timing(10);
    timing.jitter = Duration::from_secs(2);
    let harness = start(timing, Duration::from_millis(500), vec![Ok(())]);
    harness.run_until(200).await;
    harness.shutdown.cancel();
    let started = harness.started_secs();
    assert_eq!(started.len(), 20, "{started:?}");
    for (slot, at) in started.iter().enumerate() {
        let due = slot as f64 * 10.0;
        assert!(
            *at >= due && *at < due + 2.0,
            "poll {slot} at {at} outside [{due}, {due}+2)"
        );
    }
    assert!(
        started
            .iter()
            .enumerate()
            .any(|(slot, at)| *at > slot as f64 * 10.0),
        "some jitter was applied: {started:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_and_honour_retry_after() {
    let results = vec![
        Err(PollFailure::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        }),
        server_error(),
        server_error(),
        Err(PollFailure::Timeout),
        Ok(()),
    ];
    let harness = start(timing(10), Duration::ZERO, results);
    harness.run_until(70).await;
    harness.shutdown.cancel();
    // 0: 429 with Retry-After 30 s (longer than the 1 s backoff) -> 30;
    // 30: 500 -> 2 s -> 32; 32: 500 -> 4 s -> 36; 36: timeout -> 8 s (cap) -> 44;
    // 44: success, then the fixed grid restarts from there: 54, 64.
    assert_eq!(
        harness.started_secs(),
        vec![0.0, 30.0, 32.0, 36.0, 44.0, 54.0, 64.0]
    );
}

#[tokio::test(start_paused = true)]
async fn the_circuit_reports_degraded_then_down_with_status_events_then_recovers() {
    let results = vec![
        Ok(()),
        server_error(),
        server_error(),
        server_error(),
        server_error(),
        Ok(()),
    ];
    let harness = start(timing(10), Duration::ZERO, results);
    harness.run_until(5).await;
    assert_eq!(harness.health(), Some(SourceHealth::Up));
    // 10: first failure -> degraded, retry at 11.
    harness.run_until(10).await;
    tokio::task::yield_now().await;
    assert!(
        matches!(harness.health(), Some(SourceHealth::Degraded { ref reason }) if reason.contains("HTTP 500")),
        "{:?}",
        harness.health()
    );
    assert!(
        harness.statuses().is_empty(),
        "no status while only degraded"
    );
    // 11: second failure -> retry at 13; 13: third failure -> down; retry at 17.
    harness.run_until(14).await;
    assert!(
        matches!(harness.health(), Some(SourceHealth::Down { ref reason }) if reason.contains("3 consecutive")),
        "{:?}",
        harness.health()
    );
    assert_eq!(
        harness.statuses(),
        vec![
            (13.0, "AAPL".into(), "upstream_down".into()),
            (13.0, "MSFT".into(), "upstream_down".into()),
        ]
    );
    // 17: fourth failure (still down, nothing new announced) -> retry at 25; 25: success.
    harness.run_until(30).await;
    harness.shutdown.cancel();
    assert_eq!(harness.health(), Some(SourceHealth::Up));
    assert_eq!(
        harness.statuses(),
        vec![
            (13.0, "AAPL".into(), "upstream_down".into()),
            (13.0, "MSFT".into(), "upstream_down".into()),
            (25.0, "AAPL".into(), "upstream_ok".into()),
            (25.0, "MSFT".into(), "upstream_ok".into()),
        ]
    );
    assert_eq!(
        harness.started_secs(),
        vec![0.0, 10.0, 11.0, 13.0, 17.0, 25.0]
    );
}
