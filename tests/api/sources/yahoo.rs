//! The Yahoo chart poller against a real local HTTP server serving chart-shaped fixtures.

use crate::common;
use crate::sources_support;

use std::time::Duration;

use common::{SseEvent, spawn_app_with, test_settings};
use sources_support::{
    FakeUpstream, Reply, eventually, fixture, market_from_start, metric_value, metrics_text,
    read_until,
};
use tickgate::settings::{PollerSettings, Provider, Settings};

const AAPL: &str = "/v8/finance/chart/AAPL";
const MSFT: &str = "/v8/finance/chart/MSFT";
const DEADLINE: Duration = Duration::from_secs(15);

fn settings_for(upstream: &FakeUpstream, symbols: &[&str]) -> Settings {
    let mut settings = test_settings();
    settings.sources.pollers.push(PollerSettings {
        name: "yahoo".into(),
        provider: Some(Provider::Yahoo),
        base_url: upstream.base_url.clone(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        interval: Duration::from_millis(200),
        jitter: Duration::ZERO,
        // Generous: a request timing out on a loaded machine would consume a scripted reply.
        request_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        failures_before_down: 3,
        ..PollerSettings::default()
    });
    settings
}

fn chart(name: &str) -> Reply {
    Reply::json(200, fixture(&format!("yahoo/{name}.json")))
}

fn summary(event: &SseEvent) -> String {
    let json = event.json();
    match event.event.as_str() {
        "trade" => format!(
            "trade {} {} i={} s={}",
            json["S"], json["p"], json["i"], json["s"]
        ),
        "bar" => format!("bar {} {} c={}", json["S"], json["t"], json["c"]),
        "status" => format!("status {} {}", json["S"], json["sc"]),
        other => format!("{other} {json}"),
    }
}

fn has_trade_at(events: &[SseEvent], price: f64) -> bool {
    events
        .iter()
        .any(|e| e.event == "trade" && e.json()["p"].as_f64() == Some(price))
}

#[tokio::test]
async fn yahoo_bars_and_trades_are_published_once_per_change_and_nulls_and_jumps_are_dropped() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        AAPL,
        vec![
            chart("chart_aapl_1"),
            chart("chart_aapl_1"),
            chart("chart_aapl_2"),
            chart("chart_aapl_jump"),
            chart("chart_aapl_3"),
        ],
    );
    let app = spawn_app_with(settings_for(&upstream, &["AAPL"])).await;
    let mut client = market_from_start(&app, "AAPL").await;
    let events = read_until(&mut client, DEADLINE, |events| has_trade_at(events, 228.25)).await;
    let seen: Vec<String> = events.iter().map(summary).collect();
    assert_eq!(
        seen,
        vec![
            "bar \"AAPL\" \"2026-01-02T14:30:00Z\" c=227.3",
            "bar \"AAPL\" \"2026-01-02T14:32:00Z\" c=227.5",
            "trade \"AAPL\" 227.5 i=1 s=1",
            "bar \"AAPL\" \"2026-01-02T14:33:00Z\" c=228",
            "trade \"AAPL\" 228 i=2 s=900",
            "bar \"AAPL\" \"2026-01-02T14:33:00Z\" c=228.25",
            "trade \"AAPL\" 228.25 i=3 s=300",
        ],
        "the 500.0 jump and the repeated first reply publish nothing"
    );
    let trade = events
        .iter()
        .find(|e| e.event == "trade")
        .expect("a trade")
        .json();
    assert_eq!(trade["x"], "yahoo");
    assert_eq!(trade["t"], "2026-01-02T14:32:30Z");

    // The last reply keeps repeating: no duplicate ticks follow.
    let more = tokio::time::timeout(Duration::from_millis(1200), client.next_event()).await;
    assert!(
        more.is_err(),
        "unexpected event after the last change: {more:?}"
    );

    let requests = upstream.requests_to(AAPL);
    assert!(requests.len() >= 5);
    assert!(
        requests[0].query.contains("interval=1m"),
        "{}",
        requests[0].query
    );
    assert!(
        requests[0].query.contains("range=1d"),
        "{}",
        requests[0].query
    );

    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_ingest_rejected_total{source=\"yahoo\",reason=\"implausible_jump\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "tickgate_ingest_rejected_total{source=\"yahoo\",reason=\"null_value\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "tickgate_source_up{source=\"yahoo\"}"),
        Some(1.0)
    );
    let ready: serde_json::Value = reqwest::get(app.url("/readyz"))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["sources"]["yahoo"]["state"], "up", "{ready}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn yahoo_error_objects_empty_results_and_null_prices_are_counted_without_failing_the_source()
{
    let upstream = FakeUpstream::start().await;
    upstream.script(
        AAPL,
        vec![
            Reply::json(404, fixture("yahoo/chart_error_not_found.json")),
            chart("chart_empty_result"),
            chart("chart_no_price"),
            chart("chart_aapl_1"),
        ],
    );
    let app = spawn_app_with(settings_for(&upstream, &["AAPL"])).await;
    let mut client = market_from_start(&app, "AAPL").await;
    let events = read_until(&mut client, DEADLINE, |events| has_trade_at(events, 227.5)).await;
    assert!(
        events.iter().all(|e| e.event != "status"),
        "data problems must not take the source down: {events:?}"
    );
    let metrics = metrics_text(&app).await;
    for (reason, at_least) in [
        ("provider_error", 1.0),
        ("empty_result", 1.0),
        ("null_value", 2.0),
    ] {
        let series =
            format!("tickgate_ingest_rejected_total{{source=\"yahoo\",reason=\"{reason}\"}}");
        assert!(
            metric_value(&metrics, &series).is_some_and(|n| n >= at_least),
            "{series} in {metrics}"
        );
    }
    assert!(
        !metrics.contains("tickgate_source_failures_total{source=\"yahoo\""),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn yahoo_plain_text_429_with_retry_after_seconds_delays_the_next_poll() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        AAPL,
        vec![
            Reply::text(429, "text/plain", "Too Many Requests").header("Retry-After", "2"),
            chart("chart_aapl_1"),
        ],
    );
    let app = spawn_app_with(settings_for(&upstream, &["AAPL"])).await;
    let mut client = market_from_start(&app, "AAPL").await;
    read_until(&mut client, DEADLINE, |events| has_trade_at(events, 227.5)).await;
    let requests = upstream.requests_to(AAPL);
    let waited = requests[1].at - requests[0].at;
    // Without Retry-After the backoff would be 100 ms.
    assert!(waited >= Duration::from_millis(1900), "waited {waited:?}");
    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_source_failures_total{source=\"yahoo\",reason=\"rate_limited\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn yahoo_429_with_an_http_date_retry_after_is_honoured() {
    let upstream = FakeUpstream::start().await;
    let when = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    upstream.script(
        AAPL,
        vec![
            Reply::text(429, "text/plain", "slow down").header("Retry-After", &when),
            chart("chart_aapl_1"),
        ],
    );
    let app = spawn_app_with(settings_for(&upstream, &["AAPL"])).await;
    let mut client = market_from_start(&app, "AAPL").await;
    read_until(&mut client, DEADLINE, |events| has_trade_at(events, 227.5)).await;
    let requests = upstream.requests_to(AAPL);
    let waited = requests[1].at - requests[0].at;
    // The date has whole-second precision, so at least two of the three seconds remain.
    assert!(waited >= Duration::from_millis(1500), "waited {waited:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn yahoo_500s_and_an_html_outage_page_take_the_source_down_and_recovery_is_announced() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        AAPL,
        vec![
            Reply::text(500, "text/plain", "internal error"),
            Reply::text(200, "text/html", fixture("yahoo/outage.html")),
            Reply::text(503, "text/html", fixture("yahoo/outage.html")),
            chart("chart_aapl_1"),
        ],
    );
    upstream.script(MSFT, vec![chart("chart_msft_1")]);
    let app = spawn_app_with(settings_for(&upstream, &["AAPL", "MSFT"])).await;
    let mut client = market_from_start(&app, "AAPL,MSFT").await;
    let events = read_until(&mut client, DEADLINE, |events| {
        has_trade_at(events, 227.5) && has_trade_at(events, 415.2)
    })
    .await;
    let statuses: Vec<(String, String, String)> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| {
            let json = e.json();
            (
                json["S"].as_str().unwrap_or_default().to_owned(),
                json["sc"].as_str().unwrap_or_default().to_owned(),
                json["sm"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let codes: Vec<(&str, &str)> = statuses
        .iter()
        .map(|(s, c, _)| (s.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("AAPL", "upstream_down"),
            ("MSFT", "upstream_down"),
            ("AAPL", "upstream_ok"),
            ("MSFT", "upstream_ok"),
        ]
    );
    assert!(
        statuses[0].2.starts_with("yahoo: HTTP 503"),
        "{}",
        statuses[0].2
    );
    let first_trade = events.iter().position(|e| e.event == "trade");
    let last_status = events.iter().rposition(|e| e.event == "status");
    assert!(first_trade > last_status, "prices only after recovery");
    assert_eq!(
        app.state.sources.snapshot().get("yahoo"),
        Some(&tickgate::ingest::SourceHealth::Up)
    );
    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_source_failures_total{source=\"yahoo\",reason=\"http_5xx\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_ingest_rejected_total{source=\"yahoo\",reason=\"not_json\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_yahoo_source_that_keeps_failing_is_down_in_readyz_and_metrics() {
    let upstream = FakeUpstream::start().await;
    upstream.script(AAPL, vec![Reply::text(500, "text/plain", "broken")]);
    let app = spawn_app_with(settings_for(&upstream, &["AAPL"])).await;
    let url = app.url("/readyz");
    eventually(DEADLINE, "readyz to report yahoo down", || {
        let url = url.clone();
        async move {
            let response = reqwest::get(&url).await.expect("readyz");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("json");
            status == 503
                && body["sources"]["yahoo"]["state"] == "down"
                && body["sources"]["yahoo"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("HTTP 500"))
        }
    })
    .await;
    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(&metrics, "tickgate_source_up{source=\"yahoo\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "tickgate_source_polls_total{source=\"yahoo\"}")
            .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn yahoo_timeouts_fail_the_poll_and_slow_replies_within_the_deadline_still_publish() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        AAPL,
        vec![
            chart("chart_aapl_1").after(Duration::from_secs(3)),
            chart("chart_aapl_2").after(Duration::from_millis(500)),
        ],
    );
    let mut settings = settings_for(&upstream, &["AAPL"]);
    settings.sources.pollers[0].request_timeout = Duration::from_millis(1000);
    let app = spawn_app_with(settings).await;
    let mut client = market_from_start(&app, "AAPL").await;
    let events = read_until(&mut client, DEADLINE, |events| has_trade_at(events, 228.0)).await;
    assert!(
        !has_trade_at(&events, 227.5),
        "the timed-out reply is never used"
    );
    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_source_failures_total{source=\"yahoo\",reason=\"timeout\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // Replies slower than the 200 ms interval make the schedule skip slots, not pile up.
    let app_metrics = app.state.metrics.clone();
    eventually(DEADLINE, "skipped polls to be counted", || {
        let text = app_metrics.render();
        async move {
            metric_value(
                &text,
                "tickgate_source_skipped_polls_total{source=\"yahoo\"}",
            )
            .is_some_and(|n| n >= 1.0)
        }
    })
    .await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_symbol_map_polls_the_providers_spelling_and_publishes_the_gateways() {
    let upstream = FakeUpstream::start().await;
    upstream.script("/v8/finance/chart/BRK-B", vec![chart("chart_msft_1")]);
    let mut settings = settings_for(&upstream, &["BRK.B"]);
    settings.market.symbols.push("BRK.B".into());
    settings.sources.pollers[0]
        .symbol_map
        .insert("BRK.B".into(), "BRK-B".into());
    let app = spawn_app_with(settings).await;
    let mut client = market_from_start(&app, "BRK.B").await;
    let events = read_until(&mut client, DEADLINE, |events| has_trade_at(events, 415.2)).await;
    assert!(
        events.iter().all(|e| e.json()["S"] == "BRK.B"),
        "{events:?}"
    );
    assert!(upstream.requests_to("/v8/finance/chart/BRK.B").is_empty());
    app.stop().await.expect("clean stop");
}
