//! Unit tests of authentication: tokens, tickets, passwords, connection limits.

use super::*;
use crate::settings::UserEntry;

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

/// A well-formed PHC string; these tests never check a password against it.
const SOME_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";

fn user(name: &str) -> UserEntry {
    UserEntry {
        username: name.into(),
        password_hash: SOME_HASH.into(),
    }
}

fn settings() -> AuthSettings {
    AuthSettings {
        hs256_secret: SECRET.into(),
        ticket_ttl: Duration::from_secs(5),
        max_connections_per_user: 2,
        users: vec![user("alice")],
        ..AuthSettings::default()
    }
}

fn token_with(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn claims(exp_offset: i64) -> serde_json::Value {
    let now = now_unix() as i64;
    serde_json::json!({"sub":"alice","iss":"tickgate","aud":"tickgate","iat":now,"exp":now + exp_offset})
}

#[test]
fn a_valid_token_names_its_user_and_bad_ones_say_why() {
    let auth = AuthService::new(&settings()).expect("auth");
    let good = token_with(claims(60), SECRET);
    assert_eq!(auth.verify_token(&good).expect("valid").user, "alice");
    let forged = token_with(claims(60), "another-secret-of-at-least-32-bytes!!");
    assert_eq!(auth.verify_token(&forged), Err(AuthError::BadSignature));
    // Expired beyond the 30 s leeway.
    let expired = token_with(claims(-120), SECRET);
    assert_eq!(auth.verify_token(&expired), Err(AuthError::Expired));
    // Within the leeway it still passes.
    let barely = token_with(claims(-5), SECRET);
    assert!(auth.verify_token(&barely).is_ok());
    let mut wrong_aud = claims(60);
    wrong_aud["aud"] = "someone-else".into();
    assert_eq!(
        auth.verify_token(&token_with(wrong_aud, SECRET)),
        Err(AuthError::BadAudience)
    );
    let mut wrong_iss = claims(60);
    wrong_iss["iss"] = "evil".into();
    assert_eq!(
        auth.verify_token(&token_with(wrong_iss, SECRET)),
        Err(AuthError::BadIssuer)
    );
    assert_eq!(auth.verify_token("garbage"), Err(AuthError::Malformed));
}

/// A token with this exact header and payload text, HMAC-signed with `secret`.
fn raw_token(header: &str, payload: &str, secret: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The HS256 path gives what `jsonwebtoken::decode` gives, token for token, including
/// the odd ones.
#[test]
fn the_hs256_path_agrees_with_jsonwebtoken_on_every_kind_of_token() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let auth = AuthService::new(&settings()).expect("auth");
    let key = auth.hs256.as_ref().expect("an HS256 key");
    let now = now_unix() as i64;
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let claims = |extra: &str| {
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}{extra}}}"#,
            now + 60
        )
    };
    let mut tokens = Vec::new();
    let payloads = [
        claims(""),
        claims(r#","extra":{"a":[1,2]}"#),
        claims(&format!(r#","nbf":{}"#, now - 10)),
        claims(&format!(r#","nbf":{}"#, now + 10)),
        claims(&format!(r#","nbf":{}"#, now + 3600)),
        claims(&format!(r#","nbf":{}.4"#, now + 3600)),
        claims(&format!(r#","nbf":{}.6"#, now)),
        claims(r#","nbf":null"#),
        claims(r#","nbf":"0""#),
        claims(r#","nbf":-5"#),
        claims(r#","nbf":-0.0"#),
        claims(r#","nbf":1e300"#),
        claims(r#","nbf":{"a":1},"zz":1"#),
        claims(r#","nbf":1,"nbf":2"#),
        claims(r#","sub":"bob""#), // a duplicate key
        format!(
            r#"{{"sub":"","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"al\u0069ce","iss":"tick\u0067ate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","exp":{}}}"#,
            now + 60
        ),
        format!(r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now}}}"#),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}.0}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":"{}"}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":["tickgate"],"iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":["tickgate"],"aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"evil","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"other","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"evil","aud":"other","iat":{now},"exp":{}}}"#,
            now - 600
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now - 5
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now - 120
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{},"nbf":"x"}}"#,
            now - 120
        ),
        format!(
            r#"{{"sub":"alice","sub":"bob","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}}"#,
            now + 60
        ),
        format!(
            r#"{{"sub":"alice","iss":"tickgate","aud":"tickgate","iat":{now},"exp":{}}} x"#,
            now + 60
        ),
        "[1,2]".to_owned(),
        "not json".to_owned(),
    ];
    let headers = [
        hs256.to_owned(),
        r#"{"alg":"HS256"}"#.to_owned(),
        r#"{"alg":"HS256","kid":"k1","x":{"y":1}}"#.to_owned(),
        r#"{"alg":"HS256","kid":5}"#.to_owned(),
        r#"{"alg":"HS512","typ":"JWT"}"#.to_owned(),
        r#"{"alg":"none","typ":"JWT"}"#.to_owned(),
        r#"{"alg":"ES256","typ":"JWT"}"#.to_owned(),
        r#"{"alg":"XX999"}"#.to_owned(),
        r#"{"typ":"JWT"}"#.to_owned(),
        "not json".to_owned(),
    ];
    for header in &headers {
        for payload in &payloads {
            tokens.push(raw_token(header, payload, SECRET));
            tokens.push(raw_token(
                header,
                payload,
                "another-secret-of-at-least-32-bytes!!",
            ));
        }
    }
    let good = raw_token(hs256, &claims(""), SECRET);
    let (message, signature) = good.rsplit_once('.').expect("dots");
    let (header_part, payload_part) = message.split_once('.').expect("dots");
    tokens.extend([
        format!("{message}.{signature}="),
        format!("{message}.{signature}x"),
        format!("{message}.!{signature}"),
        format!("{message}."),
        format!("{header_part}.{payload_part}!.{signature}"),
        format!("{header_part}!.{payload_part}.{signature}"),
        format!("{header_part}.x.{payload_part}.{signature}"),
        format!("x.{header_part}.{payload_part}.{signature}"),
        format!("{header_part}.{payload_part}"),
        format!(".{payload_part}.{signature}"),
        format!("{header_part}..{signature}"),
        "..".to_owned(),
        ".".to_owned(),
        String::new(),
        "garbage".to_owned(),
    ]);
    // The built-in issuer's own header, which skips decoding (see `issued_header`).
    let minted = auth.mint_token("alice").expect("mint");
    let issued = auth.issued_header.clone().expect("the issued header");
    assert!(minted.starts_with(&format!("{issued}.")), "{minted}");
    for payload in &payloads {
        let payload = URL_SAFE_NO_PAD.encode(payload);
        for secret in [SECRET, "another-secret-of-at-least-32-bytes!!"] {
            let signed = raw_token(r#"{"typ":"JWT","alg":"HS256"}"#, "", secret);
            let (header, _) = signed.split_once('.').expect("dots");
            assert_eq!(header, issued);
            let message = format!("{issued}.{payload}");
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
            let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
            tokens.push(format!(
                "{message}.{}",
                URL_SAFE_NO_PAD.encode(tag.as_ref())
            ));
        }
    }
    tokens.extend([
        minted.clone(),
        format!("{issued}.{minted}"),
        issued.clone(),
        format!("{issued}."),
        format!("{issued}.."),
        format!("{issued}x.{}", minted.split_once('.').expect("dots").1),
    ]);
    for token in &tokens {
        assert_eq!(
            auth.verify_hs256(key, token),
            auth.verify_with_jsonwebtoken(token),
            "{token}"
        );
    }
    // The cases above reach every outcome, so they compare more than one error.
    let outcomes: std::collections::HashSet<String> = tokens
        .iter()
        .map(|token| format!("{:?}", auth.verify_hs256(key, token)))
        .collect();
    for expected in [
        "Ok(Identity { user: \"alice\", valid_until: ",
        "Err(Malformed)",
        "Err(BadSignature)",
        "Err(Expired)",
        "Err(NotYetValid)",
        "Err(BadAlgorithm)",
        "Err(BadAudience)",
        "Err(BadIssuer)",
        "Err(MissingClaim(\"sub\"))",
    ] {
        assert!(
            outcomes.iter().any(|outcome| outcome.starts_with(expected)),
            "{expected} in {outcomes:?}"
        );
    }
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let auth = AuthService::new(&settings()).expect("auth");
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let good = token_with(claims(60), SECRET);
    let payload = good.split('.').nth(1).expect("payload");
    let unsigned = format!("{header}.{payload}.");
    assert!(auth.verify_token(&unsigned).is_err());
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims(60),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(auth.verify_token(&hs512), Err(AuthError::BadAlgorithm));
}

/// A P-256 key pair generated for this test only (it protects nothing).
const TEST_EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIZfTbdiGYIqhSRx5\nHu3qU+APF1JmHEx2rsObFE3hw5+hRANCAATANLqq+ISKh01lxcaZzKGySI19siUY\nZphW/UToOrJYwRTKX+p2D0mIPhDRC/Z5delUTQOFEvtCsMXrHwvC4ADW\n-----END PRIVATE KEY-----\n";
const TEST_EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwDS6qviEiodNZcXGmcyhskiNfbIl\nGGaYVv1E6DqyWMEUyl/qdg9JiD4Q0Qv2eXXpVE0DhRL7QrDF6x8LwuAA1g==\n-----END PUBLIC KEY-----\n";

#[test]
fn es256_tokens_verify_with_the_public_key_and_hs256_made_with_it_is_refused() {
    let auth = AuthService::new(&AuthSettings {
        algorithm: "ES256".into(),
        public_key_pem: TEST_EC_PUBLIC_PEM.into(),
        ..AuthSettings::default()
    })
    .expect("auth");
    let signed = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(60),
        &EncodingKey::from_ec_pem(TEST_EC_PRIVATE_PEM.as_bytes()).expect("key"),
    )
    .expect("sign");
    assert_eq!(auth.verify_token(&signed).expect("valid").user, "alice");
    // Algorithm confusion: HMAC keyed with the public key must not pass as ES256.
    let confused = token_with(claims(60), TEST_EC_PUBLIC_PEM);
    assert_eq!(auth.verify_token(&confused), Err(AuthError::BadAlgorithm));
    // No signing key: the built-in issuer is off.
    assert_eq!(
        auth.issue_token("demo", "demo-password").unwrap_err(),
        AuthError::IssuerDisabled
    );
    let bad = AuthService::new(&AuthSettings {
        algorithm: "RS256".into(),
        public_key_pem: "not a key".into(),
        ..AuthSettings::default()
    });
    assert!(matches!(bad, Err(AuthConfigError::PublicKey { .. })));
}

#[test]
fn debug_output_of_the_settings_and_the_service_never_shows_secrets() {
    let mut settings = settings();
    settings.users = vec![UserEntry {
        username: "carol".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
    }];
    let auth = AuthService::new(&settings).expect("auth");
    for text in [format!("{settings:?}"), format!("{auth:?}")] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("aGFzaGhhc2g"), "{text}");
    }
}

#[test]
fn tickets_work_once_and_jwts_are_refused_in_urls() {
    let auth = AuthService::new(&settings()).expect("auth");
    let identity = Identity {
        user: "alice".into(),
        valid_until: u64::MAX,
    };
    let ticket = auth.issue_ticket(&identity).expect("ticket").ticket;
    assert_eq!(auth.verify_url_ticket(&ticket), Ok(identity));
    assert_eq!(auth.verify_url_ticket(&ticket), Err(AuthError::BadTicket));
    let token = token_with(claims(60), SECRET);
    assert_eq!(auth.verify_url_ticket(&token), Err(AuthError::TokenInUrl));
}

#[tokio::test(start_paused = true)]
async fn tickets_expire_after_their_ttl() {
    let auth = AuthService::new(&settings()).expect("auth");
    let identity = Identity {
        user: "alice".into(),
        valid_until: u64::MAX,
    };
    let ticket = auth.issue_ticket(&identity).expect("ticket").ticket;
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(auth.redeem_ticket(&ticket), Err(AuthError::BadTicket));
}

#[test]
fn connection_slots_are_limited_per_user_and_freed_on_drop() {
    let auth = AuthService::new(&settings()).expect("auth");
    let first = auth.acquire_connection("alice").expect("slot");
    let _second = auth.acquire_connection("alice").expect("slot");
    assert_eq!(
        auth.acquire_connection("alice").unwrap_err(),
        AuthError::ConnectionLimit(2)
    );
    assert!(auth.acquire_connection("bob").is_ok());
    drop(first);
    assert!(auth.acquire_connection("alice").is_ok());
}

#[test]
fn the_built_in_issuer_checks_passwords_against_argon2_hashes() {
    let mut settings = settings();
    settings.users = vec![UserEntry {
        username: "carol".into(),
        password_hash: hash_password("correct horse").expect("hash"),
    }];
    let auth = AuthService::new(&settings).expect("auth");
    let issued = auth.issue_token("carol", "correct horse").expect("token");
    assert_eq!(
        auth.verify_token(&issued.access_token).expect("valid").user,
        "carol"
    );
    assert_eq!(
        auth.issue_token("carol", "wrong").unwrap_err(),
        AuthError::BadCredentials
    );
    assert_eq!(
        auth.issue_token("mallory", "correct horse").unwrap_err(),
        AuthError::BadCredentials
    );
}

#[test]
fn the_shipped_demo_user_has_the_documented_password() {
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let settings =
        crate::settings::Settings::load_from(&config_dir, None, &[]).expect("defaults load");
    let auth = AuthService::new(&settings.auth).expect("auth");
    assert!(auth.issue_token("demo", "demo-password").is_ok());
    assert_eq!(
        auth.issue_token("demo", "demo").unwrap_err(),
        AuthError::BadCredentials
    );
}

fn token_for_subject(subject: &str) -> String {
    let now = now_unix();
    token_with(
        serde_json::json!({"sub": subject, "iss": "tickgate", "aud": "tickgate", "iat": now, "exp": now + 60}),
        SECRET,
    )
}

#[test]
fn the_built_in_issuer_refuses_validly_signed_tokens_of_users_not_configured() {
    let auth = AuthService::new(&settings()).expect("auth");
    assert_eq!(
        auth.verify_token(&token_for_subject("alice"))
            .expect("listed")
            .user,
        "alice"
    );
    for subject in ["mallory", "Alice", "alice "] {
        assert_eq!(
            auth.verify_token(&token_for_subject(subject)),
            Err(AuthError::UnknownSubject),
            "{subject:?}"
        );
    }
    // A ticket is only issued for a listed user either.
    let ghost = Identity {
        user: "mallory".into(),
        valid_until: u64::MAX,
    };
    assert_eq!(
        auth.issue_ticket(&ghost).unwrap_err(),
        AuthError::UnknownSubject
    );
    // A user removed from the configuration (the next start builds a new service): the
    // token signed before is refused.
    let before = token_for_subject("alice");
    let restarted = AuthService::new(&AuthSettings {
        users: vec![user("bob")],
        ..settings()
    })
    .expect("auth");
    assert_eq!(
        restarted.verify_token(&before),
        Err(AuthError::UnknownSubject)
    );
    // Opting out (another service signs HS256 tokens with the same secret) accepts any
    // well-formed subject.
    let open = AuthService::new(&AuthSettings {
        require_listed_users: false,
        ..settings()
    })
    .expect("auth");
    assert!(open.verify_token(&token_for_subject("mallory")).is_ok());
}

#[test]
fn subjects_that_are_too_long_or_hold_control_characters_are_refused_for_every_issuer() {
    let open = AuthService::new(&AuthSettings {
        require_listed_users: false,
        ..settings()
    })
    .expect("auth");
    let long = "a".repeat(10_000);
    for subject in [
        long.as_str(),
        "ali\0ce",
        "alice\nINFO forged log line",
        "\u{7f}",
        "\u{85}",
    ] {
        let refused = open.verify_token(&token_for_subject(subject));
        assert!(
            matches!(refused, Err(AuthError::BadSubject(_))),
            "{subject:?}: {refused:?}"
        );
    }
    let longest = "é".repeat(crate::settings::MAX_SUBJECT_BYTES / 2);
    assert!(open.verify_token(&token_for_subject(&longest)).is_ok());
    let over = format!("{longest}x");
    assert!(open.verify_token(&token_for_subject(&over)).is_err());
    for fine in [
        "auth0|5f7c8ec7c33c6c004bbafe82",
        "ann@example.com",
        "zoë",
        "a b",
    ] {
        assert!(
            open.verify_token(&token_for_subject(fine)).is_ok(),
            "{fine}"
        );
    }
}

#[test]
fn a_session_may_last_until_exp_plus_leeway_and_a_ticket_carries_its_tokens_limit() {
    let auth = AuthService::new(&settings()).expect("auth");
    let claims = claims(60);
    let exp = claims["exp"].as_u64().expect("exp");
    let identity = auth
        .verify_token(&token_with(claims, SECRET))
        .expect("valid");
    assert_eq!(
        identity.valid_until,
        exp + 30,
        "exp plus the default leeway"
    );
    let ticket = auth.issue_ticket(&identity).expect("ticket").ticket;
    assert_eq!(auth.redeem_ticket(&ticket), Ok(identity));
}

#[test]
fn a_configured_user_refreshes_a_token_and_a_removed_one_cannot() {
    let mut settings = settings();
    settings.users = vec![UserEntry {
        username: "alice".into(),
        password_hash: DUMMY_PASSWORD_HASH.into(),
    }];
    let auth = AuthService::new(&settings).expect("auth");
    let alice = Identity {
        user: "alice".into(),
        valid_until: 0,
    };
    let fresh = auth.refresh_token(&alice).expect("refreshed");
    let verified = auth.verify_token(&fresh.access_token).expect("valid");
    assert_eq!(verified.user, "alice");
    assert!(verified.valid_until > now_unix() + 60);
    let bob = Identity {
        user: "bob".into(),
        valid_until: u64::MAX,
    };
    assert_eq!(auth.refresh_token(&bob).err(), Some(AuthError::UnknownUser));
}
