//! The `tickgate` binary's start-up contract: bad configuration is reported completely and
//! stops the process before it binds; `hash-password` and `hash-api-secret` print usable hashes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn every_bad_setting_is_reported_at_once_and_the_process_exits_2_without_binding() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    let output = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TICKGATE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("TICKGATE__HUB__REPLAY_WINDOW", "lots")
        .env("TICKGATE__SIMULATOR__TRADES_PER_SECOND", "-3")
        .env("TICKGATE__SERVER__COLOUR", "blue")
        .env("TICKGATE__AUTH__API_KEY_HASH_KEY", "too-short")
        .env("TICKGATE__STORE__ENABLED", "false")
        .output()
        .expect("run tickgate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "hub.replay_window",
        "server.colour",
        "simulator.trades_per_second",
        "auth.api_key_hash_key",
    ] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
    // Nothing was bound: the port is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

#[test]
fn cluster_mode_with_a_sqlite_store_exits_2_saying_that_cluster_trading_needs_postgres() {
    let port = crate::redis_support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(dir.path())
        .env("TICKGATE__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("TICKGATE__CLUSTER__REDIS_URL", "redis://127.0.0.1:1/")
        .output()
        .expect("run tickgate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("store.backend"), "{stderr}");
    assert!(stderr.contains("postgres"), "{stderr}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    assert!(
        !dir.path().join("data").exists(),
        "refused before the store was opened"
    );
}

#[test]
fn hash_password_prints_an_argon2_hash_of_the_password_on_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tickgate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse\n")
        .expect("write password");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let hash = String::from_utf8_lossy(&output.stdout);
    assert!(hash.trim().starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("correct horse"));
}

/// Kills the child if the test fails before stopping it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn started_from_an_empty_directory_it_serves_the_dashboard_and_the_demo_login_and_logs_its_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(dir.path())
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    let (url, log) = crate::common::url_from_start_line(stderr, Duration::from_secs(30));
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when not on a terminal:\n{log}"
    );
    assert!(log.contains("built-in defaults"), "{log}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let page = http.get(&url).send().await.expect("GET /");
        assert_eq!(page.status(), 200);
        assert!(page.text().await.expect("body").contains("<html"));
        for path in ["embed.js", "css/dashboard.css", "js/dashboard.js"] {
            let response = http
                .get(format!("{url}{path}"))
                .send()
                .await
                .expect("asset");
            assert_eq!(response.status(), 200, "{path}");
        }
        // The chart library is built in when it was installed at build time; otherwise the
        // 404 says how to get it.
        let chart = http
            .get(format!("{url}vendor/lightweight-charts.mjs"))
            .send()
            .await
            .expect("chart");
        if chart.status() != 200 {
            assert_eq!(chart.status(), 404);
            let body: serde_json::Value = chart.json().await.expect("JSON 404");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("scripts/setup"))
            );
        }
        let login = http
            .post(format!("{url}v1/auth/token"))
            .json(&serde_json::json!({"username": "demo", "password": "demo-password"}))
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 200, "the demo user is built in");
        let missing = http
            .get(format!("{url}no/such/page"))
            .send()
            .await
            .expect("404");
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = missing.json().await.expect("JSON 404");
        assert_eq!(body["code"], 40410000);
    });
    drop(running);
}

#[test]
fn each_allowed_origins_mistake_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (origins, hint) in [
        (r#"["https://a.example, https://b.example"]"#, "comma"),
        (r#"["https://a.example/"]"#, "trailing slash"),
        (r#"["a.example"]"#, "no scheme"),
    ] {
        let config = dir.path().join("origins.toml");
        std::fs::write(&config, format!("[server]\nallowed_origins = {origins}\n"))
            .expect("config");
        let output = Command::new(env!("CARGO_BIN_EXE_tickgate"))
            .current_dir(dir.path())
            .arg("--config")
            .arg(&config)
            .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
            .env("TICKGATE__STORE__ENABLED", "false")
            .output()
            .expect("run tickgate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{origins}: {stderr}");
        assert!(
            stderr.contains("server.allowed_origins") && stderr.contains(hint),
            "{origins}: {stderr}"
        );
    }
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(dir.path())
        .env("TICKGATE__SERVER__BIND", &address)
        .env("TICKGATE__STORE__ENABLED", "false")
        .output()
        .expect("run tickgate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&address) && stderr.contains("server.bind"),
        "{stderr}"
    );
}

#[test]
fn the_server_keeps_serving_when_the_reader_of_its_log_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .current_dir(dir.path())
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__STORE__ENABLED", "false")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let mut running = Running(child);
    // Read up to the start-up line, then close the pipe: every later log line fails to write.
    let mut reader = std::io::BufReader::new(stderr);
    let mut url = None;
    while url.is_none() {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut reader, &mut line).expect("log");
        assert!(read > 0, "the log ended before the start-up line");
        if let Some(at) = line.find("listening on http://") {
            url = line[at + "listening on ".len()..]
                .split_whitespace()
                .next()
                .map(str::to_owned);
        }
    }
    drop(reader);
    let url = url.expect("url");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for _ in 0..5 {
            // Each request writes an access-log line into the closed pipe.
            let response = reqwest::get(format!("{url}healthz"))
                .await
                .expect("still serving");
            assert_eq!(response.status(), 200);
        }
    });
    assert!(
        running.0.try_wait().expect("status").is_none(),
        "still running"
    );
}

#[test]
fn hash_api_secret_prints_the_sha256_that_api_keys_in_the_configuration_take() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .arg("hash-api-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tickgate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"demo-secret\n")
        .expect("write secret");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    // The digest config/default.toml ships for the demo pair.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf"
    );
}

/// The binary in `dir` with the API key hash key `key` (and `env`), on a free port, its
/// stderr piped.
fn hash_key_command(dir: &std::path::Path, key: &str, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tickgate"));
    command
        .current_dir(dir)
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__AUTH__API_KEY_HASH_KEY", key)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Starts the binary on a store (`env` picks it) with `key` as `auth.api_key_hash_key` and
/// waits up to a minute for it to exit; its exit code and stderr. One still running by then
/// is stopped by its PID and fails the test.
fn start_with_hash_key(
    dir: &std::path::Path,
    key: &str,
    env: &[(&str, String)],
) -> (Option<i32>, String) {
    let mut child = hash_key_command(dir, key, env)
        .spawn()
        .expect("run tickgate");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut running = Running(child);
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = running.0.try_wait().expect("status") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node with another key kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().expect("stderr read"))
}

/// Starts the binary with `key` and returns once it listens; it is stopped (by its PID) when
/// the returned guard drops.
fn running_with_hash_key(dir: &std::path::Path, key: &str, env: &[(&str, String)]) -> Running {
    let mut child = hash_key_command(dir, key, env)
        .spawn()
        .expect("run tickgate");
    let stderr = child.stderr.take().expect("stderr");
    let running = Running(child);
    crate::common::url_from_start_line(stderr, Duration::from_secs(60));
    running
}

/// The second start, with another key, on the store the first one used: exit 2 naming the
/// setting, and neither key printed.
fn a_second_key_is_refused(
    first_dir: &std::path::Path,
    second_dir: &std::path::Path,
    env: &[(&str, String)],
) {
    let first_key = "first-node-key-0123456789abcdefghijklmnop";
    let second_key = "second-node-key-0123456789abcdefghijklmno";
    let first = running_with_hash_key(first_dir, first_key, env);
    drop(first);
    let (code, stderr) = start_with_hash_key(second_dir, second_key, env);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("auth.api_key_hash_key"), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(
        !stderr.contains(first_key) && !stderr.contains(second_key),
        "no key printed: {stderr}"
    );
    // The first key still starts (the refusal changed nothing).
    drop(running_with_hash_key(first_dir, first_key, env));
}

#[test]
fn a_start_with_another_api_key_hash_key_than_the_sqlite_store_was_first_used_with_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_second_key_is_refused(dir.path(), dir.path(), &[]);
}

#[test]
fn a_node_with_another_api_key_hash_key_than_the_shared_postgres_store_exits_2() {
    let database = crate::postgres_support::TestDatabase::create();
    let env = [
        ("TICKGATE__STORE__BACKEND", "postgres".to_owned()),
        ("TICKGATE__STORE__POSTGRES_URL", database.url()),
    ];
    // Two nodes, each with its own data directory, sharing the database.
    let (node_a, node_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    a_second_key_is_refused(node_a.path(), node_b.path(), &env);
    let stored = database.psql("SELECT value FROM store_settings WHERE name = 'api_key_hash_key'");
    assert_eq!(stored.trim().len(), 64, "a hex fingerprint: {stored}");
}
