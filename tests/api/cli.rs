//! The `tickgate` binary's start-up contract: bad configuration is reported completely and
//! stops the process before it binds; `hash-password` and `hash-api-secret` print usable hashes.

use std::io::Write;
use std::process::{Command, Stdio};

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
