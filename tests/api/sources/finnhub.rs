//! The Finnhub quote poller against a real local HTTP server serving quote-shaped fixtures.

use crate::common;
use crate::sources_support;

use std::time::Duration;

use common::{spawn_app_with, test_settings};
use sources_support::{
    FakeUpstream, Reply, eventually, fixture, market_from_start, metric_value, metrics_text,
    read_until,
};
use tickgate::settings::{PollerSettings, Provider, Settings};

const QUOTE: &str = "/api/v1/quote";
const DEADLINE: Duration = Duration::from_secs(15);
const TOKEN: &str = "test-token-5f3a";

fn settings_for(upstream: &FakeUpstream, symbols: &[&str]) -> Settings {
    let mut settings = test_settings();
    settings.sources.pollers.push(PollerSettings {
        name: "finnhub".into(),
        provider: Some(Provider::Finnhub),
        base_url: upstream.base_url.clone(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        interval: Duration::from_millis(200),
        jitter: Duration::from_millis(20),
        request_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        failures_before_down: 2,
        token: TOKEN.into(),
        ..PollerSettings::default()
    });
    settings
}

fn quote(name: &str) -> Reply {
    Reply::json(200, fixture(&format!("finnhub/{name}.json")))
}

/// The fake server keys scripts by path; Finnhub puts the symbol in the query, so each test
/// polls one symbol per source and scripts the one path.
#[tokio::test]
async fn finnhub_quotes_become_trades_once_per_change_with_the_token_in_a_header() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        QUOTE,
        vec![
            quote("quote_nvda_1"),
            quote("quote_nvda_1"),
            quote("quote_null_price"),
            quote("quote_nvda_2"),
        ],
    );
    let app = spawn_app_with(settings_for(&upstream, &["NVDA"])).await;
    let mut client = market_from_start(&app, "NVDA").await;
    let events = read_until(&mut client, DEADLINE, |events| {
        events.iter().filter(|e| e.event == "trade").count() >= 2
    })
    .await;
    let trades: Vec<serde_json::Value> = events.iter().map(|e| e.json()).collect();
    assert_eq!(trades[0]["p"], 131.6);
    assert_eq!(trades[0]["i"], 1);
    assert_eq!(trades[0]["x"], "finnhub");
    assert_eq!(trades[0]["s"], 1);
    assert_eq!(trades[0]["t"], "2026-01-02T14:32:00Z");
    assert_eq!(trades[1]["p"], 131.92);
    assert_eq!(trades[1]["i"], 2);
    assert_eq!(trades[1]["t"], "2026-01-02T14:33:00Z");
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), client.next_event())
            .await
            .is_err(),
        "no duplicate tick for the repeating last quote"
    );

    let requests = upstream.requests_to(QUOTE);
    assert!(requests.len() >= 4);
    for request in &requests {
        assert_eq!(request.header("X-Finnhub-Token"), Some(TOKEN));
        assert_eq!(request.query, "symbol=NVDA");
    }
    let metrics = metrics_text(&app).await;
    assert_eq!(
        metric_value(
            &metrics,
            "tickgate_ingest_rejected_total{source=\"finnhub\",reason=\"null_value\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!metrics.contains(TOKEN), "the token never reaches metrics");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn finnhub_all_zero_quotes_for_unknown_symbols_are_dropped_and_counted() {
    let upstream = FakeUpstream::start().await;
    upstream.script(QUOTE, vec![quote("quote_unknown_symbol")]);
    let app = spawn_app_with(settings_for(&upstream, &["TSLA"])).await;
    let metrics = app.state.metrics.clone();
    eventually(DEADLINE, "all-zero quotes to be counted", || {
        let text = metrics.render();
        async move {
            metric_value(
                &text,
                "tickgate_ingest_rejected_total{source=\"finnhub\",reason=\"all_zero_quote\"}",
            )
            .is_some_and(|n| n >= 3.0)
        }
    })
    .await;
    assert!(
        app.state.hub.latest(None).is_empty(),
        "nothing was published"
    );
    assert_eq!(
        app.state.sources.snapshot().get("finnhub"),
        Some(&tickgate::ingest::SourceHealth::Up),
        "a data problem is not an outage"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_rejected_finnhub_token_takes_the_source_down_with_status_events() {
    let upstream = FakeUpstream::start().await;
    upstream.script(
        QUOTE,
        vec![Reply::json(401, fixture("finnhub/error_invalid_key.json"))],
    );
    let app = spawn_app_with(settings_for(&upstream, &["NVDA"])).await;
    let mut client = market_from_start(&app, "NVDA").await;
    let events = read_until(&mut client, DEADLINE, |events| !events.is_empty()).await;
    let status = events[0].json();
    assert_eq!(events[0].event, "status");
    assert_eq!(status["S"], "NVDA");
    assert_eq!(status["sc"], "upstream_down");
    assert_eq!(status["sm"], "finnhub: HTTP 401");
    let ready = reqwest::get(app.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["sources"]["finnhub"]["state"], "down", "{body}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_finnhub_token_is_read_from_the_named_environment_variable() {
    // Cargo sets CARGO_PKG_NAME for every test process, so it stands in for a token variable
    // without mutating this process's environment.
    let expected = std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME");
    let upstream = FakeUpstream::start().await;
    upstream.script(QUOTE, vec![quote("quote_nvda_1")]);
    let mut settings = settings_for(&upstream, &["NVDA"]);
    settings.sources.pollers[0].token.clear();
    settings.sources.pollers[0].token_env = "CARGO_PKG_NAME".into();
    let app = spawn_app_with(settings).await;
    let mut client = market_from_start(&app, "NVDA").await;
    read_until(&mut client, DEADLINE, |events| {
        events.iter().any(|e| e.event == "trade")
    })
    .await;
    let requests = upstream.requests_to(QUOTE);
    assert_eq!(
        requests[0].header("X-Finnhub-Token"),
        Some(expected.as_str())
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_missing_token_variable_reports_the_source_down_naming_the_variable() {
    let upstream = FakeUpstream::start().await;
    let mut settings = settings_for(&upstream, &["NVDA"]);
    settings.sources.pollers[0].token.clear();
    settings.sources.pollers[0].token_env = "TICKGATE_TEST_NO_SUCH_TOKEN_VARIABLE".into();
    let app = spawn_app_with(settings).await;
    let url = app.url("/readyz");
    eventually(DEADLINE, "readyz to name the missing variable", || {
        let url = url.clone();
        async move {
            let body: serde_json::Value = reqwest::get(&url)
                .await
                .expect("readyz")
                .json()
                .await
                .expect("json");
            body["sources"]["finnhub"]["state"] == "down"
                && body["sources"]["finnhub"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("TICKGATE_TEST_NO_SUCH_TOKEN_VARIABLE"))
        }
    })
    .await;
    assert!(upstream.requests().is_empty(), "no request without a token");
    app.stop().await.expect("clean stop");
}

#[test]
fn poller_settings_never_print_the_token() {
    let settings = PollerSettings {
        token: TOKEN.into(),
        ..PollerSettings::default()
    };
    let printed = format!("{settings:?}");
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");
}
