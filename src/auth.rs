//! Authentication: JWT verification (HS256 shared secret, or an RS256/ES256 public key), the
//! built-in token issuer for users listed in config (argon2 password hashes), single-use
//! WebSocket tickets, and the per-user connection limit. No actix here: transports call in.
//!
//! Secrets (the HS256 key, passwords, tokens, tickets) are never logged or echoed back.

pub mod api_keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::settings::AuthSettings;

/// Most tickets outstanding at once; a bound so a token holder cannot grow the map forever.
const MAX_OUTSTANDING_TICKETS: usize = 100_000;

/// A PHC hash of a random password with the same parameters as real hashes. Unknown users are
/// checked against it so a login takes as long whether or not the username exists.
const DUMMY_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$VEEAuXeAej5IT+7N+maDJw$fCYl7xTPyAuYnBNyTqBLyY/Wm9OLSdtVsKoi26MWOFM";

/// Who a verified credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: the account the session trades for.
    pub user: String,
}

/// Why a credential was refused. Messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token algorithm is not accepted")]
    BadAlgorithm,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token issuer is not accepted")]
    BadIssuer,
    #[error("token lacks the required claim {0}")]
    MissingClaim(String),
    #[error("ticket is unknown, expired or already used")]
    BadTicket,
    #[error("invalid key id or secret")]
    BadApiKey,
    #[error(
        "a bearer token cannot be sent in a URL; trade it for a ticket at POST /v1/auth/ticket"
    )]
    TokenInUrl,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("the built-in issuer is disabled: tokens come from an external RS256/ES256 issuer")]
    IssuerDisabled,
    #[error("connection limit reached: at most {0} sessions per user")]
    ConnectionLimit(usize),
    #[error("too many outstanding tickets; try again shortly")]
    TooManyTickets,
    #[error("too many login attempts from this address; try again in a minute")]
    TooManyLogins,
    #[error("internal error")]
    Internal,
}

/// The claims this gateway requires and issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A token from the built-in issuer, as returned by `POST /v1/auth/token`.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// A single-use ticket, as returned by `POST /v1/auth/ticket`.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedTicket {
    pub ticket: String,
    pub expires_in_ms: u64,
}

#[derive(Debug)]
struct Ticket {
    user: String,
    expires: Instant,
}

/// Verifies tokens and tickets, issues both, and counts sessions per user.
pub struct AuthService {
    decoding: DecodingKey,
    validation: Validation,
    /// The HS256 secret as a prepared HMAC key, for [`AuthService::verify_hs256`].
    hs256: Option<aws_lc_rs::hmac::Key>,
    /// The encoded header of the tokens this gateway issues (HS256): a token starting with it
    /// is known to name HS256 without decoding it again.
    issued_header: Option<String>,
    /// `auth.leeway` in seconds (also in `validation`).
    leeway: u64,
    /// Present for HS256 only: the built-in issuer signs with the shared secret.
    encoding: Option<EncodingKey>,
    issuer: String,
    audience: String,
    token_ttl: Duration,
    ticket_ttl: Duration,
    users: HashMap<String, String>,
    tickets: Mutex<HashMap<String, Ticket>>,
    connections: Arc<Mutex<HashMap<String, usize>>>,
    max_connections_per_user: usize,
    /// Login attempts per client address in the current window, to bound password guessing
    /// and the argon2 work one client can make the server do.
    login_attempts: Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
    max_login_attempts_per_minute: u32,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("algorithm", &self.validation.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Why the auth settings could not be turned into keys.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.algorithm {0:?} is not supported; use HS256, RS256 or ES256")]
    Algorithm(String),
    #[error("auth.public_key_pem is not a valid {algorithm} public key: {reason}")]
    PublicKey { algorithm: String, reason: String },
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl AuthService {
    /// Counts one login attempt from `client`; refuses once the address has used its
    /// attempts for the current one-minute window.
    pub fn check_login_rate(&self, client: std::net::IpAddr) -> Result<(), AuthError> {
        let now = std::time::Instant::now();
        let window = Duration::from_secs(60);
        let mut attempts = self.login_attempts.lock();
        if attempts.len() > 10_000 {
            attempts.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = attempts.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max_login_attempts_per_minute {
            return Err(AuthError::TooManyLogins);
        }
        entry.1 += 1;
        Ok(())
    }

    pub fn new(settings: &AuthSettings) -> Result<AuthService, AuthConfigError> {
        let (algorithm, decoding, encoding, hs256) = match settings.algorithm.as_str() {
            "HS256" => {
                let secret = if settings.hs256_secret.is_empty() {
                    // No secret configured: a random one keeps the embedded default secure;
                    // tokens simply do not outlive the process.
                    tracing::warn!(
                        "auth.hs256_secret is empty: using a random secret for this process"
                    );
                    random_hex(32).into_bytes()
                } else {
                    settings.hs256_secret.as_bytes().to_vec()
                };
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(&secret),
                    Some(EncodingKey::from_secret(&secret)),
                    Some(aws_lc_rs::hmac::Key::new(
                        aws_lc_rs::hmac::HMAC_SHA256,
                        &secret,
                    )),
                )
            }
            name @ ("RS256" | "ES256") => {
                let pem = settings.public_key_pem.as_bytes();
                let (algorithm, key) = if name == "RS256" {
                    (Algorithm::RS256, DecodingKey::from_rsa_pem(pem))
                } else {
                    (Algorithm::ES256, DecodingKey::from_ec_pem(pem))
                };
                let key = key.map_err(|e| AuthConfigError::PublicKey {
                    algorithm: name.to_owned(),
                    reason: e.to_string(),
                })?;
                (algorithm, key, None, None)
            }
            other => return Err(AuthConfigError::Algorithm(other.to_owned())),
        };
        // Exactly one accepted algorithm: a token naming another one (including `none`, or
        // HS256 signed with a public key) is refused before its signature is looked at.
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let issued_header = hs256.as_ref().and_then(|_| issued_hs256_header());
        Ok(AuthService {
            decoding,
            validation,
            hs256,
            issued_header,
            leeway: settings.leeway.as_secs(),
            encoding,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            token_ttl: settings.token_ttl,
            ticket_ttl: settings.ticket_ttl,
            users: settings
                .users
                .iter()
                .map(|u| (u.username.clone(), u.password_hash.clone()))
                .collect(),
            tickets: Mutex::new(HashMap::new()),
            connections: Arc::new(Mutex::new(HashMap::new())),
            max_connections_per_user: settings.max_connections_per_user,
            login_attempts: Mutex::new(HashMap::new()),
            max_login_attempts_per_minute: settings.max_login_attempts_per_minute,
        })
    }

    /// Verifies a bearer JWT: signature, algorithm, issuer, audience, expiry (with leeway).
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.hs256 {
            Some(key) => self.verify_hs256(key, token.trim()),
            None => self.verify_with_jsonwebtoken(token.trim()),
        }
    }

    /// `jsonwebtoken::decode` with the errors clients see.
    fn verify_with_jsonwebtoken(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| jwt_error(&e))?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::MissingClaim("sub".into()));
        }
        Ok(Identity {
            user: data.claims.sub,
        })
    }

    /// What [`AuthService::verify_with_jsonwebtoken`] does for HS256, in the same order with
    /// the same outcome for every token (a unit test compares them), at about half the cost
    /// per WebSocket connection: `jsonwebtoken::decode` prepares a new HMAC key per token (the
    /// two SHA-256 pad blocks), parses the header twice and the claims twice. Its checks, for
    /// this configuration: header, algorithm, signature, claims (all of `Claims` required, so
    /// `MissingRequiredClaim` cannot happen), then `exp` and `nbf` with leeway, issuer,
    /// audience.
    fn verify_hs256(&self, key: &aws_lc_rs::hmac::Key, token: &str) -> Result<Identity, AuthError> {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        // jsonwebtoken splits at the last two dots too; fewer dots is a malformed token.
        let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (header, payload) = message.rsplit_once('.').ok_or(AuthError::Malformed)?;
        if self.issued_header.as_deref() != Some(header) {
            let header = jsonwebtoken::decode_header(token).map_err(|e| jwt_error(&e))?;
            if !self.validation.algorithms.contains(&header.alg) {
                return Err(AuthError::BadAlgorithm);
            }
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed)?;
        aws_lc_rs::hmac::verify(key, message.as_bytes(), &signature)
            .map_err(|_| AuthError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Hs256Claims<'_> =
            serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        let now = now_unix();
        if claims.exp < now.saturating_sub(self.leeway) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(AuthError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(AuthError::BadIssuer);
        }
        if claims.aud != self.audience {
            return Err(AuthError::BadAudience);
        }
        if claims.sub.is_empty() {
            return Err(AuthError::MissingClaim("sub".into()));
        }
        Ok(Identity {
            user: claims.sub.into_owned(),
        })
    }

    /// Verifies what a client sent in an `auth` message: a JWT (it has dots) or a ticket.
    pub fn verify_token_or_ticket(&self, credential: &str) -> Result<Identity, AuthError> {
        if looks_like_jwt(credential) {
            self.verify_token(credential)
        } else {
            self.redeem_ticket(credential)
        }
    }

    /// Verifies `?ticket=` on the upgrade URL. A JWT there is refused outright, valid or not:
    /// URLs end up in logs and histories, so only short-lived single-use tickets go there.
    pub fn verify_url_ticket(&self, ticket: &str) -> Result<Identity, AuthError> {
        if looks_like_jwt(ticket) {
            return Err(AuthError::TokenInUrl);
        }
        self.redeem_ticket(ticket)
    }

    /// Issues a token for a configured user. CPU-heavy (argon2): call off the async threads.
    pub fn issue_token(&self, username: &str, password: &str) -> Result<IssuedToken, AuthError> {
        let Some(encoding) = &self.encoding else {
            return Err(AuthError::IssuerDisabled);
        };
        let known = self.users.get(username);
        let hash_text = known.map_or(DUMMY_PASSWORD_HASH, String::as_str);
        let hash = PasswordHash::new(hash_text).map_err(|_| {
            tracing::error!(
                user = username,
                "configured password hash is not a PHC string"
            );
            AuthError::Internal
        })?;
        let matches = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        if !(matches && known.is_some()) {
            return Err(AuthError::BadCredentials);
        }
        self.sign(username, encoding)
    }

    /// Signs a token for `user` without a password (tests and tools with the HS256 secret).
    pub fn mint_token(&self, user: &str) -> Result<String, AuthError> {
        let encoding = self.encoding.as_ref().ok_or(AuthError::IssuerDisabled)?;
        Ok(self.sign(user, encoding)?.access_token)
    }

    fn sign(&self, user: &str, encoding: &EncodingKey) -> Result<IssuedToken, AuthError> {
        let now = now_unix();
        let claims = Claims {
            sub: user.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.token_ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|e| {
                tracing::error!(error = %e, "could not sign a token");
                AuthError::Internal
            })?;
        Ok(IssuedToken {
            access_token: token,
            token_type: "Bearer",
            expires_in: self.token_ttl.as_secs(),
        })
    }

    /// Trades a verified identity for a single-use ticket valid for `auth.ticket_ttl`.
    pub fn issue_ticket(&self, identity: &Identity) -> Result<IssuedTicket, AuthError> {
        let now = Instant::now();
        let mut tickets = self.tickets.lock();
        tickets.retain(|_, t| t.expires > now);
        if tickets.len() >= MAX_OUTSTANDING_TICKETS {
            return Err(AuthError::TooManyTickets);
        }
        let ticket = random_hex(24);
        tickets.insert(
            ticket.clone(),
            Ticket {
                user: identity.user.clone(),
                expires: now + self.ticket_ttl,
            },
        );
        Ok(IssuedTicket {
            ticket,
            expires_in_ms: self.ticket_ttl.as_millis() as u64,
        })
    }

    /// Redeems a ticket: it is removed whether or not it is still valid, so it works once.
    pub fn redeem_ticket(&self, ticket: &str) -> Result<Identity, AuthError> {
        let found = self.tickets.lock().remove(ticket.trim());
        match found {
            Some(t) if t.expires > Instant::now() => Ok(Identity { user: t.user }),
            _ => Err(AuthError::BadTicket),
        }
    }

    /// Counts a new session for `user`; the guard gives the slot back when dropped.
    pub fn acquire_connection(&self, user: &str) -> Result<ConnectionGuard, AuthError> {
        let mut connections = self.connections.lock();
        let count = connections.entry(user.to_owned()).or_default();
        if *count >= self.max_connections_per_user {
            return Err(AuthError::ConnectionLimit(self.max_connections_per_user));
        }
        *count += 1;
        Ok(ConnectionGuard {
            connections: Arc::clone(&self.connections),
            user: user.to_owned(),
        })
    }

    /// Sessions currently open for `user`.
    pub fn connection_count(&self, user: &str) -> usize {
        self.connections.lock().get(user).copied().unwrap_or(0)
    }
}

/// The encoded header `jsonwebtoken::encode` writes for the built-in issuer's tokens, if it
/// decodes back to HS256 (it does; the check keeps the shortcut in `verify_hs256` exact).
fn issued_hs256_header() -> Option<String> {
    use base64::Engine;
    let json = serde_json::to_vec(&Header::new(Algorithm::HS256)).ok()?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
    let decoded = jsonwebtoken::decode_header(format!("{encoded}.e30.")).ok()?;
    (decoded.alg == Algorithm::HS256).then_some(encoded)
}

fn jwt_error(error: &jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::BadAlgorithm,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        _ => AuthError::Malformed,
    }
}

/// [`Claims`] plus `nbf`, read as jsonwebtoken reads it for validation: absent, a
/// non-negative integer, or a finite non-negative float (rounded); anything else (null, a
/// string, a negative number) makes the token malformed.
#[derive(Deserialize)]
struct Hs256Claims<'a> {
    // Borrowed from the payload unless they contain escapes (accepts what `String` accepts).
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    iss: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    aud: std::borrow::Cow<'a, str>,
    // Required, as in `Claims`, though nothing reads it.
    #[allow(dead_code)]
    iat: u64,
    exp: u64,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    struct NumericDate;
    impl serde::de::Visitor<'_> for NumericDate {
        type Value = Option<u64>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a non-negative number of seconds")
        }

        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Option<u64>, E> {
            Ok(Some(value))
        }

        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Option<u64>, E> {
            if value.is_finite() && value >= 0.0 && value < (u64::MAX as f64) {
                Ok(Some(value.round() as u64))
            } else {
                Err(E::custom("a date must be representable as a u64"))
            }
        }
    }
    deserializer.deserialize_any(NumericDate)
}

fn looks_like_jwt(credential: &str) -> bool {
    credential.trim().matches('.').count() == 2
}

/// One counted session; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionGuard {
    connections: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut connections = self.connections.lock();
        if let Some(count) = connections.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.remove(&self.user);
            }
        }
    }
}

/// Hashes a password into an argon2id PHC string (for adding users to the config).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt_bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| AuthError::Internal)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::UserEntry;

    const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

    fn settings() -> AuthSettings {
        AuthSettings {
            hs256_secret: SECRET.into(),
            ticket_ttl: Duration::from_secs(5),
            max_connections_per_user: 2,
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
                let key =
                    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
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
            "Ok(Identity { user: \"alice\" })",
            "Err(Malformed)",
            "Err(BadSignature)",
            "Err(Expired)",
            "Err(NotYetValid)",
            "Err(BadAlgorithm)",
            "Err(BadAudience)",
            "Err(BadIssuer)",
            "Err(MissingClaim(\"sub\"))",
        ] {
            assert!(outcomes.contains(expected), "{expected} in {outcomes:?}");
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
}
