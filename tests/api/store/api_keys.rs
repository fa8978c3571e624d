//! Issued API key pairs in the store, on both backends: stored durably, listed while active,
//! revoked once, and kept across a reopen.
use chrono::{TimeZone, Utc};
use tickgate::store::ApiKeyRecord;

use crate::store_support::{Backend, StoreFixture};

fn record(key_id: &str, second: u32) -> ApiKeyRecord {
    ApiKeyRecord {
        key_id: key_id.into(),
        username: "alice".into(),
        secret_hash: format!("{:0>64}", key_id.len()),
        created_at: Utc
            .with_ymd_and_hms(2026, 1, 2, 14, 30, second)
            .single()
            .expect("time"),
    }
}

async fn api_keys_are_listed_until_revoked_and_survive_a_reopen(backend: Backend) {
    let fixture = StoreFixture::new(backend);
    let store = fixture.open();
    store
        .api_keys
        .insert_api_key(record("PK-ONE", 1))
        .await
        .expect("insert");
    store
        .api_keys
        .insert_api_key(record("PK-TWO", 2))
        .await
        .expect("insert");
    assert!(
        store
            .api_keys
            .insert_api_key(record("PK-ONE", 3))
            .await
            .is_err(),
        "a key id is issued once"
    );
    let at = Utc::now();
    assert_eq!(store.api_keys.revoke_api_key("PK-ONE", at).await, Ok(true));
    assert_eq!(
        store.api_keys.revoke_api_key("PK-ONE", at).await,
        Ok(false),
        "already revoked"
    );
    assert_eq!(store.api_keys.revoke_api_key("nope", at).await, Ok(false));
    drop(store);
    let store = fixture.open();
    assert_eq!(
        store.api_keys.active_api_keys().await.expect("list"),
        vec![record("PK-TWO", 2)]
    );
}

on_both_backends!(api_keys_are_listed_until_revoked_and_survive_a_reopen);
