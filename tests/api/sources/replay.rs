//! File replay: a recorded session plays over SSE exactly as its valid rows, in order; speed
//! and loop timing are checked with paused time.

use crate::common;
use crate::sources_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SseEvent, spawn_app_with, test_settings};
use sources_support::{
    eventually, fixture_path, market_from_start, metric_value, metrics_text, read_until,
};
use tickgate::hub::{EventSink, PublishError};
use tickgate::ingest::replay::{parse_recording, play};
use tickgate::ingest::source::SourceContext;
use tickgate::ingest::{SourceHealth, SourceRegistry};
use tickgate::market::MarketEvent;
use tickgate::metrics::Metrics;
use tickgate::settings::{ReplayFormat, ReplaySettings};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(15);

fn replay_settings(name: &str, file: &str) -> ReplaySettings {
    ReplaySettings {
        name: name.into(),
        path: fixture_path(file),
        ..ReplaySettings::default()
    }
}

fn describe(event: &SseEvent) -> String {
    let json = event.json();
    match event.event.as_str() {
        "trade" => format!(
            "trade {} i={} p={} c={}",
            json["S"].as_str().unwrap_or_default(),
            json["i"],
            json["p"],
            json["c"]
        ),
        "quote" => format!(
            "quote {} {}x{}",
            json["S"].as_str().unwrap_or_default(),
            json["bp"],
            json["ap"]
        ),
        "bar" => format!(
            "bar {} c={}",
            json["S"].as_str().unwrap_or_default(),
            json["c"]
        ),
        other => format!("{other} {json}"),
    }
}

async fn plays_exactly_the_valid_rows(file: &str) {
    let mut settings = test_settings();
    settings.sources.replays.push(replay_settings("tape", file));
    let app = spawn_app_with(settings).await;
    let mut client = market_from_start(&app, "AAPL,MSFT").await;
    let events = read_until(&mut client, DEADLINE, |events| events.len() >= 5).await;
    let seen: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        seen,
        vec![
            "trade AAPL i=101 p=227.5 c=[\"@\"]",
            "quote AAPL 227.49x227.51",
            "trade MSFT i=102 p=415.2 c=[]",
            "bar AAPL c=227.55",
            "trade AAPL i=106 p=227.6 c=[\"@\",\"I\"]",
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(700), client.next_event())
            .await
            .is_err(),
        "nothing beyond the valid rows"
    );
    let metrics = metrics_text(&app).await;
    for (reason, count) in [
        ("malformed", 1.0),
        ("not_positive", 1.0),
        ("unknown_symbol", 1.0),
    ] {
        let series =
            format!("tickgate_ingest_rejected_total{{source=\"tape\",reason=\"{reason}\"}}");
        assert_eq!(
            metric_value(&metrics, &series),
            Some(count),
            "{series}: {metrics}"
        );
    }
    let sources = app.state.sources.clone();
    eventually(DEADLINE, "the replay to report it finished", || {
        let health = sources.snapshot().get("tape").cloned();
        async move {
            matches!(health, Some(SourceHealth::Degraded { reason }) if reason.contains("5 events"))
        }
    })
    .await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_ndjson_recording_delivers_exactly_its_valid_rows_in_order() {
    plays_exactly_the_valid_rows("replay/session.ndjson").await;
}

#[tokio::test]
async fn a_csv_recording_delivers_exactly_its_valid_rows_in_order() {
    plays_exactly_the_valid_rows("replay/session.csv").await;
}

#[tokio::test]
async fn a_looping_replay_shifts_times_forward_so_they_never_go_backwards() {
    let mut settings = test_settings();
    let mut replay = replay_settings("tape", "replay/loop.ndjson");
    replay.repeat = true;
    replay.speed = 4.0;
    replay.loop_gap = Duration::from_millis(100);
    settings.sources.replays.push(replay);
    let app = spawn_app_with(settings).await;
    let mut client = market_from_start(&app, "AAPL").await;
    let events = read_until(&mut client, DEADLINE, |events| events.len() >= 6).await;
    let rows: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            let json = e.json();
            (
                json["i"].as_u64().unwrap_or_default(),
                json["t"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    // Each pass moves on by the 200 ms the file spans plus the 100 ms gap.
    assert_eq!(
        rows[..6],
        [
            (1, "2026-01-02T14:30:00Z".to_owned()),
            (2, "2026-01-02T14:30:00.200Z".to_owned()),
            (1, "2026-01-02T14:30:00.300Z".to_owned()),
            (2, "2026-01-02T14:30:00.500Z".to_owned()),
            (1, "2026-01-02T14:30:00.600Z".to_owned()),
            (2, "2026-01-02T14:30:00.800Z".to_owned()),
        ]
    );
    let metrics = metrics_text(&app).await;
    assert!(
        !metrics.contains("reason=\"time_backwards\""),
        "no looped event was refused: {metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_missing_replay_file_reports_the_source_down() {
    let mut settings = test_settings();
    settings
        .sources
        .replays
        .push(replay_settings("tape", "replay/no-such-file.ndjson"));
    let app = spawn_app_with(settings).await;
    let sources = app.state.sources.clone();
    eventually(DEADLINE, "the replay to be down", || {
        let health = sources.snapshot().get("tape").cloned();
        async move {
            matches!(health, Some(SourceHealth::Down { reason }) if reason.contains("no-such-file"))
        }
    })
    .await;
    app.stop().await.expect("clean stop");
}

/// Records the paused-clock time of each publish.
struct TimingSink {
    origin: Instant,
    seen: Mutex<Vec<(Duration, MarketEvent)>>,
}

impl EventSink for TimingSink {
    fn publish(&self, event: MarketEvent) -> Result<(), PublishError> {
        self.seen
            .lock()
            .expect("lock")
            .push((self.origin.elapsed(), event));
        Err(PublishError::Encode("recorded only".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn playback_follows_recorded_gaps_divided_by_the_speed_without_drift() {
    let text = [
        r#"{"T":"t","S":"AAPL","i":1,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:00Z","c":[]}"#,
        r#"{"T":"t","S":"AAPL","i":2,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:01Z","c":[]}"#,
        r#"{"T":"t","S":"AAPL","i":3,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:03Z","c":[]}"#,
        r#"{"T":"t","S":"AAPL","i":4,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:02Z","c":[]}"#,
        r#"{"T":"t","S":"AAPL","i":5,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:10Z","c":[]}"#,
    ]
    .join("\n");
    let recording = parse_recording(&text, ReplayFormat::Ndjson);
    assert!(recording.malformed.is_empty());
    let sink = Arc::new(TimingSink {
        origin: Instant::now(),
        seen: Mutex::default(),
    });
    let metrics = Arc::new(Metrics::default());
    let context = SourceContext::new(
        "tape",
        Arc::clone(&sink) as Arc<dyn EventSink>,
        SourceRegistry::new(Arc::clone(&metrics)),
        metrics,
    );
    let settings = ReplaySettings {
        speed: 2.0,
        ..ReplaySettings::default()
    };
    play(&recording, &settings, &context, &CancellationToken::new()).await;
    let seen = sink.seen.lock().expect("lock");
    let times: Vec<f64> = seen.iter().map(|(at, _)| at.as_secs_f64()).collect();
    // Recorded 0, 1, 3, (2: earlier than its predecessor, so right after it), 10 seconds, at
    // double speed.
    assert_eq!(times, vec![0.0, 0.5, 1.5, 1.5, 5.0]);
}

#[tokio::test(start_paused = true)]
async fn a_looping_recording_with_bars_shifts_by_whole_minutes_so_bars_stay_aligned() {
    let text = [
        r#"{"T":"b","S":"AAPL","o":1,"h":1,"l":1,"c":1,"v":1,"n":1,"vw":1,"t":"2026-01-02T14:30:00Z"}"#,
        r#"{"T":"t","S":"AAPL","i":1,"x":"V","p":1.0,"s":1,"t":"2026-01-02T14:30:05Z","c":[]}"#,
    ]
    .join("\n");
    let recording = parse_recording(&text, ReplayFormat::Ndjson);
    let sink = Arc::new(TimingSink {
        origin: Instant::now(),
        seen: Mutex::default(),
    });
    let metrics = Arc::new(Metrics::default());
    let context = SourceContext::new(
        "tape",
        Arc::clone(&sink) as Arc<dyn EventSink>,
        SourceRegistry::new(Arc::clone(&metrics)),
        metrics,
    );
    let settings = ReplaySettings {
        speed: 50.0,
        repeat: true,
        ..ReplaySettings::default()
    };
    let shutdown = CancellationToken::new();
    let played = tokio::time::timeout(
        Duration::from_millis(2700),
        play(&recording, &settings, &context, &shutdown),
    )
    .await;
    assert!(played.is_err(), "a looping replay runs until stopped");
    let seen = sink.seen.lock().expect("lock");
    let rows: Vec<(u128, String)> = seen
        .iter()
        .map(|(at, event)| (at.as_millis(), event.time().to_rfc3339()))
        .collect();
    // 5 s recorded + 1 s gap rounds up to one minute: a pass every 1.2 s at speed 50.
    assert_eq!(
        rows[..6],
        [
            (0, "2026-01-02T14:30:00+00:00".to_owned()),
            (100, "2026-01-02T14:30:05+00:00".to_owned()),
            (1200, "2026-01-02T14:31:00+00:00".to_owned()),
            (1300, "2026-01-02T14:31:05+00:00".to_owned()),
            (2400, "2026-01-02T14:32:00+00:00".to_owned()),
            (2500, "2026-01-02T14:32:05+00:00".to_owned()),
        ]
    );
}
