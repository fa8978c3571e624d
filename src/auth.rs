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

use crate::settings::{AuthSettings, subject_problem};

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
    /// Unix second after which the credential is no longer accepted: the token's `exp` plus
    /// `auth.leeway` (for a ticket, that of the token that bought it). A WebSocket session
    /// ends then unless the client sends a fresh token (`docs/websocket.md`).
    pub valid_until: u64,
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
    #[error("token subject {0}")]
    BadSubject(String),
    #[error("token subject is not a configured user (auth.users)")]
    UnknownSubject,
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
    #[error("this user is no longer configured; log in again")]
    UnknownUser,
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
    /// The buying token's [`Identity::valid_until`]: a session opened with the ticket ends
    /// when the token would have.
    valid_until: u64,
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
    /// HS256 only (the built-in issuer): a token's subject must be one of `users`, so
    /// removing a user from the configuration refuses its tokens from the next start on.
    require_listed_users: bool,
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
            require_listed_users: settings.algorithm == "HS256" && settings.require_listed_users,
            tickets: Mutex::new(HashMap::new()),
            connections: Arc::new(Mutex::new(HashMap::new())),
            max_connections_per_user: settings.max_connections_per_user,
            login_attempts: Mutex::new(HashMap::new()),
            max_login_attempts_per_minute: settings.max_login_attempts_per_minute,
        })
    }

    /// Verifies a bearer JWT: signature, algorithm, issuer, audience, expiry (with leeway),
    /// then its subject (see [`AuthService::check_subject`]).
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let identity = match &self.hs256 {
            Some(key) => self.verify_hs256(key, token.trim()),
            None => self.verify_with_jsonwebtoken(token.trim()),
        }?;
        self.check_subject(&identity.user)?;
        Ok(identity)
    }

    /// A verified token's subject: well formed (length, characters) for every issuer, and,
    /// for the built-in issuer, a user in `auth.users`. A signature proves only that this
    /// gateway (or a holder of its secret) once signed the name, not that the user still
    /// exists.
    fn check_subject(&self, subject: &str) -> Result<(), AuthError> {
        if let Some(problem) = subject_problem(subject) {
            return Err(AuthError::BadSubject(problem));
        }
        if self.require_listed_users && !self.users.contains_key(subject) {
            return Err(AuthError::UnknownSubject);
        }
        Ok(())
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
            valid_until: data.claims.exp.saturating_add(self.leeway),
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
            valid_until: claims.exp.saturating_add(self.leeway),
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

    /// A fresh token for the holder of a valid one (`POST /v1/auth/refresh`), so a client can
    /// keep a session going without keeping the password. Only for users still configured.
    pub fn refresh_token(&self, identity: &Identity) -> Result<IssuedToken, AuthError> {
        let Some(encoding) = &self.encoding else {
            return Err(AuthError::IssuerDisabled);
        };
        if !self.users.contains_key(&identity.user) {
            return Err(AuthError::UnknownUser);
        }
        self.sign(&identity.user, encoding)
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
        self.check_subject(&identity.user)?;
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
                valid_until: identity.valid_until,
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
            Some(t) if t.expires > Instant::now() => Ok(Identity {
                user: t.user,
                valid_until: t.valid_until,
            }),
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

impl ConnectionGuard {
    /// The user whose slot this is.
    pub fn user(&self) -> &str {
        &self.user
    }
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
#[path = "auth_tests.rs"]
mod tests;
