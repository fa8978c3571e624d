//! Smoke runs of the load generator: a few hundred SSE or WebSocket subscribers against the
//! real gateway (started in-process on port 0) for a few seconds, asserting that nobody lost
//! a message.

use crate::common;
use crate::ws_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The `tickgate-loadgen` binary, built once per test run. It is the `loadgen/` workspace
/// member, not a binary of this package, so Cargo gives no `CARGO_BIN_EXE_` path for it: this
/// builds it with the Cargo that runs the tests, in the profile the tests were built with, and
/// returns its path in the shared target directory (a no-op build when
/// `cargo test --workspace` has built it already).
fn loadgen_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let test_binary = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            // target/<profile>/deps/api-<hash>
            let profile_dir = test_binary
                .parent()
                .and_then(|deps| deps.parent())
                .ok_or_else(|| format!("no profile directory above {}", test_binary.display()))?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
                "build",
                "--package",
                "tickgate-loadgen",
                "--bin",
                "tickgate-loadgen",
            ]);
            match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("debug") => {}
                Some("release") => {
                    build.arg("--release");
                }
                Some(other) => {
                    build.args(["--profile", other]);
                }
                None => return Err(format!("odd target path {}", profile_dir.display())),
            }
            let output = build
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "cargo build of tickgate-loadgen failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let binary =
                profile_dir.join(format!("tickgate-loadgen{}", std::env::consts::EXE_SUFFIX));
            if binary.is_file() {
                Ok(binary)
            } else {
                Err(format!("built, but {} is not there", binary.display()))
            }
        })
        .clone()
}

/// Runs the load generator against `app`'s publish API with `args` (subscribers and how they
/// subscribe) plus the common ones, returns its JSON report.
async fn run_loadgen(app: &common::TestApp, args: &[&str]) -> serde_json::Value {
    let loadgen = tokio::task::spawn_blocking(loadgen_binary)
        .await
        .expect("the build task ran")
        .unwrap_or_else(|error| panic!("{error}"));
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(loadgen)
            .args(args)
            .args([
                "--publish-url",
                &app.url("/v1/publish"),
                "--token",
                "dev-admin-token",
                "--rate",
                "20",
                "--duration",
                "2",
                "--settle",
                "0.2",
                // Generous: CI is a loaded 2-core box running a debug build.
                "--drain",
                "20",
                "--source-addresses",
                "8",
                "--threads",
                "1",
                "--label",
                "smoke",
                "--json",
                report.path().to_str().expect("utf-8 path"),
                "--check",
            ])
            .output(),
    )
    .await
    .expect("the load generator finished within two minutes")
    .expect("the load generator ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "load generator failed:\n{stdout}\n{stderr}"
    );
    let line = std::fs::read_to_string(report.path()).expect("report written");
    serde_json::from_str(line.trim()).expect("JSON report")
}

/// All `subscribers` connected and each got every one of the run's 40 trades, once.
fn assert_every_trade_delivered(report: &serde_json::Value, subscribers: u64) {
    assert_eq!(report["connected"], subscribers, "{report}");
    assert_eq!(report["published"], 40, "{report}");
    assert_eq!(report["delivered"], subscribers * 40, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
}

/// WebSocket subscribers while the feed heartbeat sweep runs every 200 ms instead of 15 s:
/// the WebSocket forwards no feed heartbeat, and with no ping due (the ping interval is long
/// here, so no ping and pong unsticks anything either) each one is a wake-up that sends
/// nothing, which must not cost anyone a trade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_websocket_subscribers_receive_every_trade_across_feed_heartbeats() {
    let mut settings = ws_support::ws_settings();
    settings.auth.max_connections_per_user = 1000;
    settings.hub.heartbeat_interval = Duration::from_millis(200);
    settings.ws.ping_interval = Duration::from_secs(60);
    settings.ws.idle_timeout = Duration::from_secs(120);
    let app = common::spawn_app_with(settings).await;
    let bearer = format!("Authorization: Bearer {}", ws_support::token_for("alice"));
    let report = run_loadgen(
        &app,
        &[
            "--transport",
            "ws",
            "--subscribe-url",
            &app.url("/v1/stream"),
            "--header",
            &bearer,
            "--ws-message",
            r#"{"action":"subscribe","trades":["AAPL"]}"#,
            "--subscribers",
            "100",
        ],
    )
    .await;
    assert_every_trade_delivered(&report, 100);
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_sse_subscribers_receive_every_published_trade() {
    let app = common::spawn_app().await;
    let report = run_loadgen(
        &app,
        &[
            "--subscribe-url",
            &app.url("/v1/stream/market?symbols=*&types=trades"),
            "--subscribers",
            "300",
        ],
    )
    .await;
    assert_every_trade_delivered(&report, 300);
    app.stop().await.expect("clean stop");
}
