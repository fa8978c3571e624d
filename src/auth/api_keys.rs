//! API key pairs: the key id and secret that Alpaca clients send (`APCA-API-KEY-ID` and
//! `APCA-API-SECRET-KEY` on REST, the `auth`/`authenticate` messages on the streams). Each pair
//! belongs to one user; users issue and revoke their own through `/v1/api-keys`, and the
//! configuration may define pairs too (`[[auth.api_keys]]`, e.g. the demo pair).
//!
//! A secret is random and long, so unlike a password it needs no slow hash: it is stored as
//! HMAC-SHA256, under a server key, of its SHA-256 (`secret_hash`). Configured pairs give the
//! SHA-256 only, so the same check covers both. Checking a pair costs two hashes on every
//! request. Secrets are never stored, logged or echoed back; a new secret is shown once, in
//! the response that issues it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::{constant_time, digest, hmac};
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::RwLock;
use rand::RngCore;
use serde::Serialize;

use super::Identity;
use crate::settings::{AuthSettings, StoreSettings};
use crate::store::{ApiKeyRecord, ApiKeyStore, StoreError};

/// The file, in the store's data directory, that keeps the generated server key.
const HASH_KEY_FILE: &str = "api_key_hash.key";

/// What the server key's fingerprint is a keyed hash of: a fixed label, so the stored
/// fingerprint says whether two keys are the same without revealing either.
const FINGERPRINT_LABEL: &[u8] = b"tickgate api_key_hash_key fingerprint v1";

/// The store was first used with another server key: this node would reject every API key
/// issued there (and issue keys the other nodes reject). Start-up refuses (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "auth.api_key_hash_key does not match the key this store was first used with (its \
     fingerprint is stored in the store's store_settings table): every node sharing a store \
     needs the same auth.api_key_hash_key (or, without it, the same api_key_hash.key in its data \
     directory); set this node's to the others' (docs/deployment.md, \"Nodes sharing a database\")"
)]
pub struct HashKeyMismatch;

/// Why a pair was refused or could not be changed. Messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Unknown key id, wrong secret, revoked pair, or a loopback-only pair used from afar:
    /// one answer for all, so a caller learns nothing about which.
    #[error("invalid key id or secret")]
    Invalid,
    #[error("no API key {0:?} among yours")]
    NotFound(String),
    #[error("API key {0:?} comes from the configuration and cannot be revoked here")]
    Configured(String),
    #[error("you already hold {0} API keys; revoke one first")]
    TooMany(usize),
    #[error("the API key store failed")]
    Store(StoreError),
}

/// A pair just issued: the only time the secret is seen.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedApiKey {
    pub key_id: String,
    pub secret: String,
    pub created_at: String,
}

/// A pair as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyInfo {
    pub key_id: String,
    /// `config` for pairs from `[[auth.api_keys]]`, `api` for issued ones.
    pub source: &'static str,
    pub created_at: Option<String>,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    user: String,
    secret_hash: [u8; 32],
    created_at: Option<DateTime<Utc>>,
    configured: bool,
    loopback_only: bool,
}

/// Every active pair in memory (verification never touches the store), and the store that
/// keeps the issued ones.
pub struct ApiKeys {
    hash_key: hmac::Key,
    keys: RwLock<HashMap<String, KeyEntry>>,
    store: Option<Arc<dyn ApiKeyStore>>,
    max_per_user: usize,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.read().len())
            .field("durable", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// True for ids of 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn is_valid_key_id(key_id: &str) -> bool {
    (1..=64).contains(&key_id.len())
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The problems of the `[auth]` keys about API key pairs, for the settings check at start-up.
pub fn check_settings(auth: &AuthSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if !auth.api_key_hash_key.is_empty() && auth.api_key_hash_key.len() < 32 {
        problems.push("auth.api_key_hash_key: must be at least 32 bytes".into());
    }
    if auth.max_api_keys_per_user == 0 {
        problems.push("auth.max_api_keys_per_user: must be at least 1".into());
    }
    let mut key_ids = std::collections::HashSet::new();
    for key in &auth.api_keys {
        if !is_valid_key_id(&key.key_id) {
            problems.push(format!(
                "auth.api_keys: key_id {:?} must be 1-64 letters, digits, '-' or '_'",
                key.key_id
            ));
        } else if !key_ids.insert(key.key_id.as_str()) {
            problems.push(format!(
                "auth.api_keys: key_id {:?} appears twice",
                key.key_id
            ));
        }
        if key.user.is_empty() {
            problems.push(format!("auth.api_keys: {:?} needs a user", key.key_id));
        }
        if parse_sha256_hex(&key.secret_sha256).is_none() {
            problems.push(format!(
                "auth.api_keys: {:?} needs secret_sha256, the 64-digit hex SHA-256 of the secret",
                key.key_id
            ));
        }
    }
    problems
}

/// Parses a 64-digit hex SHA-256.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[index] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a secret, as `[[auth.api_keys]]` expects it (`tickgate hash-api-secret`).
pub fn secret_sha256_hex(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

/// Random characters from an alphabet without look-alikes, for key ids and secrets.
fn random_text(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut raw = vec![0u8; length];
    rand::rng().fill_bytes(&mut raw);
    // 256 is not a multiple of 56, so a plain modulo would favour the first letters slightly;
    // rejection keeps every character uniform.
    let mut out = String::with_capacity(length);
    let mut rng = rand::rng();
    for byte in raw {
        let mut value = byte;
        while usize::from(value) >= 256 - 256 % ALPHABET.len() {
            let mut one = [0u8; 1];
            rng.fill_bytes(&mut one);
            value = one[0];
        }
        out.push(char::from(ALPHABET[usize::from(value) % ALPHABET.len()]));
    }
    out
}

/// The server key: configured, else kept in the data directory, else random for this process.
fn load_hash_key(auth: &AuthSettings, store: Option<&StoreSettings>) -> std::io::Result<Vec<u8>> {
    if !auth.api_key_hash_key.is_empty() {
        return Ok(auth.api_key_hash_key.as_bytes().to_vec());
    }
    let Some(store) = store else {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        return Ok(key);
    };
    let path = store.data_dir.join(HASH_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match parse_sha256_hex(&text) {
            Some(key) => Ok(key.to_vec()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not 64 hex digits; restore it from a backup or delete it (issued API keys then stop working)",
                    path.display()
                ),
            )),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            // With the PostgreSQL store nothing else creates the data directory.
            std::fs::create_dir_all(&store.data_dir)
                .and_then(|()| write_private(&path, &hex(&key)))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            if store.backend == crate::store::StoreBackend::Postgres {
                tracing::warn!(
                    file = %path.display(),
                    "the API key hash key was created in this node's data directory; nodes that \
                     share the PostgreSQL store need the same auth.api_key_hash_key to accept \
                     each other's issued API keys"
                );
            }
            Ok(key.to_vec())
        }
        Err(error) => Err(error),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

impl ApiKeys {
    /// Builds the key table from the configuration and, with a store, the issued pairs in it.
    /// Start-up only: it waits for the store.
    pub fn load(
        auth: &AuthSettings,
        store_settings: Option<&StoreSettings>,
        store: Option<Arc<dyn ApiKeyStore>>,
    ) -> anyhow::Result<ApiKeys> {
        let key = load_hash_key(auth, store_settings.filter(|_| store.is_some()))?;
        let hash_key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        if let Some(store) = &store {
            let fingerprint = hex(hmac::sign(&hash_key, FINGERPRINT_LABEL).as_ref());
            let stored =
                futures::executor::block_on(store.claim_hash_key_fingerprint(fingerprint.clone()))?;
            if stored != fingerprint {
                return Err(HashKeyMismatch.into());
            }
        }
        let keys = ApiKeys {
            hash_key,
            keys: RwLock::new(HashMap::new()),
            store,
            max_per_user: auth.max_api_keys_per_user.max(1),
        };
        {
            let mut table = keys.keys.write();
            for entry in &auth.api_keys {
                let Some(sha) = parse_sha256_hex(&entry.secret_sha256) else {
                    anyhow::bail!(
                        "auth.api_keys: {:?} has no valid secret_sha256",
                        entry.key_id
                    );
                };
                table.insert(
                    entry.key_id.clone(),
                    KeyEntry {
                        user: entry.user.clone(),
                        secret_hash: keys.keyed(&sha),
                        created_at: None,
                        configured: true,
                        loopback_only: entry.loopback_only,
                    },
                );
            }
        }
        if let Some(store) = &keys.store {
            let stored = futures::executor::block_on(store.active_api_keys())?;
            let mut table = keys.keys.write();
            for record in stored {
                let Some(secret_hash) = parse_sha256_hex(&record.secret_hash) else {
                    anyhow::bail!("stored API key {:?} has a malformed hash", record.key_id);
                };
                // A configured pair with the same id wins: the operator's file is the
                // authority, and ids are drawn at random so this only happens on purpose.
                table.entry(record.key_id).or_insert(KeyEntry {
                    user: record.username,
                    secret_hash,
                    created_at: Some(record.created_at),
                    configured: false,
                    loopback_only: false,
                });
            }
        }
        Ok(keys)
    }

    /// A table with only the configured pairs and a random server key (tests).
    pub fn in_memory(auth: &AuthSettings) -> anyhow::Result<ApiKeys> {
        ApiKeys::load(auth, None, None)
    }

    fn keyed(&self, sha: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.hash_key, sha);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn secret_hash(&self, secret: &str) -> [u8; 32] {
        self.keyed(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
    }

    /// Checks a pair presented by a client at `peer` (`None` when unknown, which a
    /// loopback-only pair refuses).
    pub fn verify(
        &self,
        key_id: &str,
        secret: &str,
        peer: Option<IpAddr>,
    ) -> Result<Identity, ApiKeyError> {
        // Hashed before the lookup, so an unknown id costs as much as a wrong secret.
        let candidate = self.secret_hash(secret);
        let keys = self.keys.read();
        let Some(entry) = keys.get(key_id) else {
            return Err(ApiKeyError::Invalid);
        };
        if constant_time::verify_slices_are_equal(&entry.secret_hash, &candidate).is_err() {
            return Err(ApiKeyError::Invalid);
        }
        if entry.loopback_only && !peer.is_some_and(|ip| ip.is_loopback()) {
            return Err(ApiKeyError::Invalid);
        }
        // A key pair does not expire: a session opened with it lasts until it closes.
        Ok(Identity {
            user: entry.user.clone(),
            valid_until: u64::MAX,
        })
    }

    /// Issues a new pair for `user`; durable before it returns when there is a store.
    pub async fn issue(&self, user: &str) -> Result<IssuedApiKey, ApiKeyError> {
        let held = self
            .keys
            .read()
            .values()
            .filter(|e| e.user == user && !e.configured)
            .count();
        if held >= self.max_per_user {
            return Err(ApiKeyError::TooMany(self.max_per_user));
        }
        let key_id = format!("TK{}", random_text(18).to_ascii_uppercase());
        // 40 characters from 56: about 232 bits.
        let secret = random_text(40);
        let secret_hash = self.secret_hash(&secret);
        let created_at = Utc::now();
        if let Some(store) = &self.store {
            store
                .insert_api_key(ApiKeyRecord {
                    key_id: key_id.clone(),
                    username: user.to_owned(),
                    secret_hash: hex(&secret_hash),
                    created_at,
                })
                .await
                .map_err(ApiKeyError::Store)?;
        }
        self.keys.write().insert(
            key_id.clone(),
            KeyEntry {
                user: user.to_owned(),
                secret_hash,
                created_at: Some(created_at),
                configured: false,
                loopback_only: false,
            },
        );
        Ok(IssuedApiKey {
            key_id,
            secret,
            created_at: created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
    }

    /// Revokes one of `user`'s issued pairs; it stops working at once.
    pub async fn revoke(&self, user: &str, key_id: &str) -> Result<(), ApiKeyError> {
        match self.keys.read().get(key_id) {
            Some(entry) if entry.user == user && entry.configured => {
                return Err(ApiKeyError::Configured(key_id.to_owned()));
            }
            Some(entry) if entry.user == user => {}
            _ => return Err(ApiKeyError::NotFound(key_id.to_owned())),
        }
        // Off the in-memory table first: from here on the pair is refused, even if the store
        // write below fails (the pair would then come back at a restart; the error says the
        // revocation did not complete).
        self.keys.write().remove(key_id);
        if let Some(store) = &self.store {
            store
                .revoke_api_key(key_id, Utc::now())
                .await
                .map_err(ApiKeyError::Store)?;
        }
        Ok(())
    }

    /// `user`'s pairs, oldest first, without secrets.
    pub fn list(&self, user: &str) -> Vec<ApiKeyInfo> {
        let keys = self.keys.read();
        let mut out: Vec<(Option<DateTime<Utc>>, ApiKeyInfo)> = keys
            .iter()
            .filter(|(_, e)| e.user == user)
            .map(|(id, e)| {
                (
                    e.created_at,
                    ApiKeyInfo {
                        key_id: id.clone(),
                        source: if e.configured { "config" } else { "api" },
                        created_at: e
                            .created_at
                            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key_id.cmp(&b.1.key_id)));
        out.into_iter().map(|(_, info)| info).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ApiKeyEntry;

    fn settings() -> AuthSettings {
        AuthSettings {
            api_keys: vec![ApiKeyEntry {
                key_id: "demo-key".into(),
                user: "demo".into(),
                secret_sha256: secret_sha256_hex("demo-secret"),
                loopback_only: true,
            }],
            max_api_keys_per_user: 2,
            ..AuthSettings::default()
        }
    }

    fn local() -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, 1]))
    }

    #[test]
    fn the_configured_demo_pair_authenticates_its_user_from_loopback_only() {
        let keys = ApiKeys::in_memory(&settings()).expect("keys");
        let identity = keys
            .verify("demo-key", "demo-secret", local())
            .expect("valid pair");
        assert_eq!(identity.user, "demo");
        assert_eq!(
            keys.verify("demo-key", "demo-secret", Some(IpAddr::from([10, 0, 0, 7]))),
            Err(ApiKeyError::Invalid)
        );
        assert_eq!(
            keys.verify("demo-key", "demo-secret", None),
            Err(ApiKeyError::Invalid)
        );
    }

    #[test]
    fn a_wrong_secret_and_an_unknown_key_get_the_same_answer() {
        let keys = ApiKeys::in_memory(&settings()).expect("keys");
        let wrong = keys.verify("demo-key", "demo-secreT", local());
        let unknown = keys.verify("nobody", "demo-secret", local());
        assert_eq!(wrong, Err(ApiKeyError::Invalid));
        assert_eq!(unknown, wrong);
    }

    #[tokio::test]
    async fn an_issued_pair_works_until_revoked_and_its_secret_is_never_listed() {
        let keys = ApiKeys::in_memory(&settings()).expect("keys");
        let issued = keys.issue("alice").await.expect("issue");
        assert!(issued.key_id.starts_with("TK") && issued.key_id.len() == 20);
        assert_eq!(issued.secret.len(), 40);
        let from_afar = Some(IpAddr::from([192, 0, 2, 1]));
        assert_eq!(
            keys.verify(&issued.key_id, &issued.secret, from_afar)
                .expect("issued pairs work from anywhere")
                .user,
            "alice"
        );
        let listed = keys.list("alice");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key_id, issued.key_id);
        assert_eq!(listed[0].source, "api");
        let text = serde_json::to_string(&listed).expect("json");
        assert!(!text.contains(&issued.secret));
        assert_eq!(
            keys.revoke("bob", &issued.key_id).await,
            Err(ApiKeyError::NotFound(issued.key_id.clone())),
            "another user cannot revoke it"
        );
        keys.revoke("alice", &issued.key_id).await.expect("revoke");
        assert_eq!(
            keys.verify(&issued.key_id, &issued.secret, local()),
            Err(ApiKeyError::Invalid)
        );
        assert!(keys.list("alice").is_empty());
    }

    #[tokio::test]
    async fn issuing_stops_at_the_per_user_limit_and_configured_pairs_cannot_be_revoked() {
        let keys = ApiKeys::in_memory(&settings()).expect("keys");
        keys.issue("demo").await.expect("first");
        keys.issue("demo").await.expect("second");
        assert_eq!(
            keys.issue("demo").await.err(),
            Some(ApiKeyError::TooMany(2))
        );
        assert_eq!(
            keys.revoke("demo", "demo-key").await,
            Err(ApiKeyError::Configured("demo-key".into()))
        );
        assert_eq!(keys.list("demo").len(), 3);
    }

    #[test]
    fn hex_digests_parse_only_when_complete() {
        let text = secret_sha256_hex("demo-secret");
        assert_eq!(
            text,
            "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf"
        );
        assert!(parse_sha256_hex(&text).is_some());
        assert!(parse_sha256_hex(&text[1..]).is_none());
        assert!(parse_sha256_hex(&text.replace('c', "g")).is_none());
        assert!(is_valid_key_id("demo-key") && !is_valid_key_id("a b") && !is_valid_key_id(""));
    }

    #[test]
    fn random_text_uses_the_whole_alphabet_and_no_look_alikes() {
        let text: String = (0..50).map(|_| random_text(40)).collect();
        assert!(!text.contains(['0', 'O', '1', 'l', 'I']));
        let distinct: std::collections::HashSet<char> = text.chars().collect();
        assert!(
            distinct.len() > 50,
            "{} distinct characters",
            distinct.len()
        );
    }
}
