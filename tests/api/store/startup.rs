//! Start-up with a damaged, missing or too-new database: a clear error naming the file and
//! what to do, a non-zero exit from the binary, and the file left as it was.
use crate::common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{spawn_app_with, test_settings};
use tickgate::settings::Settings;
use tickgate::startup::Application;
use tickgate::store::{Store, StoreError};

fn store_settings(dir: &Path) -> Settings {
    let mut settings = test_settings();
    settings.store.enabled = true;
    settings.store.data_dir = dir.to_path_buf();
    settings
}

fn build_error(settings: Settings) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    match Application::build_with_listener(settings, listener) {
        Ok(_) => panic!("start-up should have failed"),
        Err(error) => format!("{error:#}"),
    }
}

fn garbage(path: &Path) -> Vec<u8> {
    let bytes = b"this is not a database, it is a shopping list\n".repeat(200);
    std::fs::write(path, &bytes).expect("write garbage");
    bytes
}

#[test]
fn a_corrupt_database_file_stops_start_up_with_its_path_and_is_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tickgate.db");
    let bytes = garbage(&file);
    let message = build_error(store_settings(dir.path()));
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("corrupt"), "{message}");
    assert!(message.contains("backup"), "{message}");
    assert_eq!(
        std::fs::read(&file).expect("read"),
        bytes,
        "not overwritten"
    );
}

#[test]
fn a_schema_newer_than_this_build_stops_start_up_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = store_settings(dir.path());
    drop(Store::open(&settings.store).expect("create the store"));
    let file = dir.path().join("tickgate.db");
    {
        let connection = rusqlite::Connection::open(&file).expect("open");
        connection
            .execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (999, 'future', 'x')",
                [],
            )
            .expect("insert");
    }
    let error = Store::open(&settings.store).unwrap_err();
    assert!(
        matches!(error, StoreError::NewerSchema { found: 999, .. }),
        "{error}"
    );
    let message = build_error(settings);
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("newer"), "{message}");
}

#[test]
fn a_missing_file_is_an_error_when_creation_is_not_allowed_or_its_log_is_still_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = store_settings(dir.path());
    settings.store.create_if_missing = false;
    let error = Store::open(&settings.store).unwrap_err();
    assert!(matches!(error, StoreError::Missing { .. }), "{error}");

    // A write-ahead log without its database means the database was deleted by hand.
    std::fs::write(dir.path().join("tickgate.db-wal"), b"").expect("wal");
    settings.store.create_if_missing = true;
    let error = Store::open(&settings.store).unwrap_err();
    assert!(
        matches!(error, StoreError::MissingWithWal { .. }),
        "{error}"
    );
    assert!(!dir.path().join("tickgate.db").exists(), "nothing created");
}

#[test]
fn a_missing_data_directory_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a").join("b");
    let settings = store_settings(&nested);
    let opened = Store::open(&settings.store).expect("open");
    assert_eq!(opened.feed_start.reason, "first start");
    assert!(nested.join("tickgate.db").is_file());
}

#[test]
fn the_binary_exits_non_zero_naming_the_corrupt_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tickgate.db");
    garbage(&file);
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tickgate"))
        .arg("--config-dir")
        .arg(&config_dir)
        .env("TICKGATE__SERVER__BIND", "127.0.0.1:0")
        .env("TICKGATE__SIMULATOR__ENABLED", "false")
        .env("TICKGATE__STORE__DATA_DIR", dir.path())
        .output()
        .expect("run tickgate");
    assert!(!output.status.success(), "must not start");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("corrupt"), "{text}");
}

#[tokio::test]
async fn readyz_reports_the_store_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(store_settings(dir.path())).await;
    let body: serde_json::Value = reqwest::get(app.url("/readyz"))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(body["store"]["state"], "ok", "{body}");
    app.stop().await.expect("stop");

    let app = spawn_app_with(test_settings()).await;
    let body: serde_json::Value = reqwest::get(app.url("/readyz"))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(body["store"]["state"], "disabled", "{body}");
    let _ = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
}

#[tokio::test]
async fn configured_users_and_their_password_hashes_are_synced_into_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = store_settings(dir.path());
    let configured = settings.auth.users.clone();
    assert!(!configured.is_empty(), "the default config has a demo user");
    let app = spawn_app_with(settings.clone()).await;
    app.stop().await.expect("stop");
    let connection = rusqlite::Connection::open(dir.path().join("tickgate.db")).expect("open");
    for user in &configured {
        let (hash, active): (String, bool) = connection
            .query_row(
                "SELECT password_hash, active FROM users WHERE username = ?1",
                [&user.username],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("user stored");
        assert_eq!(hash, user.password_hash);
        assert!(active);
    }
    // A user removed from the configuration stays on record, inactive.
    settings.auth.users.clear();
    let app = spawn_app_with(settings).await;
    app.stop().await.expect("stop");
    let active: i64 = connection
        .query_row("SELECT COUNT(*) FROM users WHERE active = 1", [], |row| {
            row.get(0)
        })
        .expect("count");
    let kept: i64 = connection
        .query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))
        .expect("count");
    assert_eq!((active, kept as usize), (0, configured.len()));
}

#[test]
fn a_second_process_on_the_same_data_directory_is_refused_while_the_first_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = store_settings(dir.path());
    let first = Store::open(&settings.store).expect("first open");
    let error = Store::open(&settings.store).unwrap_err();
    assert!(matches!(error, StoreError::InUse { .. }), "{error}");
    assert!(error.to_string().contains("data_dir"), "{error}");
    drop(first);
    Store::open(&settings.store).expect("free again once the first is gone");
}
