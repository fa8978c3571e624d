//! Smoke run of the load generator: a few hundred SSE subscribers against the real gateway
//! (started in-process on port 0) for a few seconds, asserting that nobody lost a message.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_sse_subscribers_receive_every_published_trade() {
    let app = common::spawn_app().await;
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tickgate-loadgen"))
            .args([
                "--subscribe-url",
                &app.url("/v1/stream/market?symbols=*&types=trades"),
                "--publish-url",
                &app.url("/v1/publish"),
                "--token",
                "dev-admin-token",
                "--subscribers",
                "300",
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
    let report: serde_json::Value = serde_json::from_str(line.trim()).expect("JSON report");
    assert_eq!(report["connected"], 300, "{report}");
    assert_eq!(report["published"], 40, "{report}");
    assert_eq!(report["delivered"], 300 * 40, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    app.stop().await.expect("clean stop");
}
