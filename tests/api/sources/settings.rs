//! The `[sources]` settings: defaults, parsing of pollers and replays, and clear start-up
//! errors for bad source definitions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tickgate::settings::{Provider, ReplayFormat, Settings};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn load_with(extra: &str) -> Result<Settings, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("extra.toml");
    std::fs::write(&path, extra).expect("write");
    Settings::load_from(&config_dir(), Some(&path), &[]).map_err(|e| e.to_string())
}

#[test]
fn by_default_there_are_no_upstream_sources_and_the_simulator_runs() {
    let settings = Settings::load_from(&config_dir(), None, &[]).expect("defaults load");
    assert!(settings.sources.pollers.is_empty());
    assert!(settings.sources.replays.is_empty());
    assert!(settings.simulator.enabled);
}

#[test]
fn pollers_and_replays_parse_with_durations_and_defaults() {
    let replay = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replay/session.csv");
    let settings = load_with(&format!(
        r#"
[[sources.pollers]]
name = "yahoo"
provider = "yahoo"
symbols = ["AAPL", "msft"]
interval = "2s"
jitter = "100ms"

[[sources.pollers]]
name = "finnhub"
provider = "finnhub"
base_url = "http://127.0.0.1:9999/"
token_env = "FINNHUB_TOKEN"
symbols = ["NVDA"]

[[sources.replays]]
name = "tape"
path = {replay:?}
speed = 10.0
loop = true
"#
    ))
    .expect("valid sources");
    let yahoo = &settings.sources.pollers[0];
    assert_eq!(yahoo.provider, Some(Provider::Yahoo));
    assert_eq!(yahoo.interval, Duration::from_secs(2));
    assert_eq!(yahoo.jitter, Duration::from_millis(100));
    assert_eq!(yahoo.failures_before_down, 3, "default");
    assert_eq!(
        yahoo.effective_base_url(),
        "https://query1.finance.yahoo.com"
    );
    let finnhub = &settings.sources.pollers[1];
    assert_eq!(finnhub.effective_base_url(), "http://127.0.0.1:9999");
    let tape = &settings.sources.replays[0];
    assert!(tape.repeat);
    assert_eq!(tape.speed, 10.0);
    assert_eq!(tape.effective_format(), ReplayFormat::Csv);
}

#[test]
fn every_bad_source_definition_is_reported_at_start_up() {
    let error = load_with(
        r#"
[[sources.pollers]]
name = "yahoo"
provider = "yahoo"
symbols = ["AAPL", "DOGE"]
interval = "1s"
jitter = "2s"
failures_before_down = 0

[sources.pollers.symbol_map]
TSLA = "TSLA.MX"

[[sources.pollers]]
name = "yahoo"
provider = "finnhub"
symbols = []

[[sources.pollers]]
name = "nothing"
symbols = ["AAPL"]
base_url = "ftp://example.test"

[[sources.replays]]
name = "simulator"
path = "/no/such/recording.ndjson"
speed = 0.0
"#,
    )
    .expect_err("invalid sources");
    for needle in [
        "sources.pollers[0].symbols: \"DOGE\" is not in market.symbols",
        "sources.pollers[0].jitter: must be shorter than interval",
        "sources.pollers[0].failures_before_down: must be at least 1",
        "sources.pollers[0].symbol_map: \"TSLA\" is not one of this poller's symbols",
        "sources.pollers[1].name: \"yahoo\" is used by another source",
        "sources.pollers[1]: finnhub needs an API token",
        "sources.pollers[1].symbols: at least one symbol is required",
        "sources.pollers[2].provider: required",
        "sources.replays[0].name: \"simulator\" is reserved",
        "sources.replays[0].path: /no/such/recording.ndjson is not a readable file",
        "sources.replays[0].speed: must be a positive number",
    ] {
        assert!(error.contains(needle), "missing {needle:?} in:\n{error}");
    }
}

#[test]
fn an_unknown_provider_is_a_type_error_naming_the_key() {
    let error = load_with(
        r#"
[[sources.pollers]]
name = "x"
provider = "bloomberg"
symbols = ["AAPL"]
"#,
    )
    .expect_err("unknown provider");
    assert!(error.contains("sources.pollers[0].provider"), "{error}");
    assert!(error.contains("bloomberg"), "{error}");
}
