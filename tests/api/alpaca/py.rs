//! Unmodified alpaca-py programs (`tests/alpaca/*.py`) against the real `tickgate` binary on a
//! free loopback port: the Alpaca dialect checked by the client it exists for. alpaca-py is
//! pinned and installed by `scripts/alpaca-venv` into `target/alpaca-venv` on first use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const ADMIN_TOKEN: &str = "alpaca-test-admin-token";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtual environment's interpreter, made once per machine (pip caches the download).
fn python() -> PathBuf {
    let output = Command::new(root().join("scripts/alpaca-venv"))
        .output()
        .expect("run scripts/alpaca-venv");
    assert!(
        output.status.success(),
        "scripts/alpaca-venv failed (scripts/setup installs python3-venv): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The gateway as a child process, stopped by its PID when dropped.
struct Gateway {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `target/debug/tickgate` on port 0 with the simulator off (the programs publish
/// their own data) and a fresh store; reads the bound port from its JSON log.
fn start_gateway() -> Gateway {
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(root())
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__SIMULATOR__ENABLED", "false")
        .env("TICKGATE__PUBLISH__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TICKGATE__STORE__DATA_DIR", data.path())
        .env("TICKGATE__LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let (port_sender, port_receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut port_sender = Some(port_sender);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(sender) = &port_sender
                && line.contains("tickgate listening")
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(port) = value["port"].as_u64()
            {
                let _ = sender.send(port as u16);
                port_sender = None;
            }
            // Kept on stderr so a failing test shows what the gateway said.
            eprintln!("[tickgate] {line}");
        }
    });
    let port = port_receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("tickgate reported its port");
    Gateway {
        child,
        port,
        _data: data,
    }
}

/// Runs one program against a fresh gateway; fails with its output unless it exits 0.
fn run_program(name: &str) {
    let python = python();
    let gateway = start_gateway();
    let mut program = Command::new(python)
        .arg(root().join("tests/alpaca").join(name))
        .current_dir(root().join("tests/alpaca"))
        .env(
            "TICKGATE_HTTP",
            format!("http://127.0.0.1:{}", gateway.port),
        )
        .env("TICKGATE_WS", format!("ws://127.0.0.1:{}", gateway.port))
        .env("TICKGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = program.try_wait().expect("poll python") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = program.kill();
            break program.wait().expect("wait python");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = program.wait_with_output().expect("python output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "{name} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains(": ok"), "{name} did not finish: {stdout}");
    drop(gateway);
}

#[test]
fn stock_data_stream_receives_trades_quotes_bars_and_statuses_as_its_models() {
    run_program("stock_data_stream.py");
}

#[test]
fn trading_client_and_trading_stream_place_replace_and_cancel_orders_with_alpaca_errors() {
    run_program("trading.py");
}

#[test]
fn stock_historical_data_client_reads_bars_and_the_latest_trade_and_quote() {
    run_program("historical.py");
}
