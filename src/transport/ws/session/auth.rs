//! Authentication of a session: the credential on the upgrade request or the `auth` action
//! (a token, a ticket or an API key pair),
//! the per-user connection limit, and the auth deadline. Invariants kept here: until it is
//! authenticated a session answers every other action with 401; a failed credential (402),
//! the connection limit (406) and the deadline passing (404) end the session with close
//! 1008. An `auth` on an authenticated session refreshes it: a valid token of the same user
//! moves the session's end to the new token's limit; another user's token (403) or an invalid
//! one (402) changes nothing. A session ends at its credential's limit
//! ([`Identity::valid_until`]) with error 409 and close 4001, and nothing a client sends after
//! that limit is processed. The connection slot is held (a [`ConnectionGuard`]) for as long
//! as the session lives.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::auth::{AuthError, ConnectionGuard, Identity};
use crate::error::ErrorCode;

use super::WsSession;
use super::frames::{Output, close_codes, error_frame, success_frame_with_id};
use super::parse::check_keys;

/// Who the session is, once authenticated.
pub(super) struct AuthState {
    /// The connection slot of the authenticated user, which also names the user (one copy
    /// of the name per session, not two: issue 17, idle WebSocket memory).
    guard: Option<ConnectionGuard>,
    /// When an unauthenticated session is closed.
    deadline: Instant,
    /// When the credential stops being valid; `None`: never (or not authenticated yet).
    token_deadline: Option<Instant>,
}

/// The tokio instant of a unix-seconds validity limit (`None` when it is too far to matter).
fn deadline_of(valid_until: u64) -> Option<Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let left_ms = u128::from(valid_until)
        .saturating_mul(1000)
        .saturating_sub(now_ms);
    Instant::now().checked_add(std::time::Duration::from_millis(
        u64::try_from(left_ms).ok()?,
    ))
}

impl AuthState {
    pub(super) fn new(deadline: Instant) -> AuthState {
        AuthState {
            guard: None,
            deadline,
            token_deadline: None,
        }
    }

    /// When the session's credential expires (to wait for).
    pub(super) fn token_deadline(&self) -> Option<Instant> {
        self.token_deadline
    }

    pub(super) fn token_expired(&self) -> bool {
        self.token_deadline.is_some_and(|d| d <= Instant::now())
    }

    pub(super) fn user(&self) -> Option<&str> {
        self.guard.as_ref().map(ConnectionGuard::user)
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.guard.is_some()
    }

    /// The deadline to wait for, while not authenticated.
    pub(super) fn pending_deadline(&self) -> Option<Instant> {
        self.guard.is_none().then_some(self.deadline)
    }
}

impl WsSession {
    pub(super) fn finish_auth(
        &mut self,
        id: Option<&Value>,
        result: Result<Identity, AuthError>,
        out: &mut Vec<Output>,
    ) {
        match result {
            Ok(identity) => match self.deps.auth.acquire_connection(&identity.user) {
                Ok(guard) => {
                    tracing::debug!(user = %identity.user, "websocket authenticated");
                    self.auth.guard = Some(guard);
                    self.auth.token_deadline = deadline_of(identity.valid_until);
                    out.push(success_frame_with_id(id, "authenticated"));
                }
                Err(error) => {
                    out.push(error_frame(
                        id,
                        ErrorCode::ConnectionLimit,
                        &error.to_string(),
                    ));
                    self.close(out, close_codes::POLICY, "connection limit exceeded");
                }
            },
            Err(error) => {
                out.push(error_frame(
                    id,
                    ErrorCode::AuthFailed,
                    &format!("auth failed: {error}"),
                ));
                self.close(out, close_codes::POLICY, "auth failed");
            }
        }
    }

    /// `auth` with a bearer JWT, a ticket, or an API key pair (`key` and `secret`); on an
    /// authenticated session a token refreshes it.
    pub(super) fn auth_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        if let Err(refusal) = check_keys(map, "auth", &["token", "key", "secret"]) {
            out.push(error_frame(id, refusal.code, &refusal.msg));
            return;
        }
        // An API key pair (Alpaca's form) instead of a token.
        if map.contains_key("key") || map.contains_key("secret") {
            if self.auth.is_authenticated() {
                out.push(error_frame(
                    id,
                    ErrorCode::AlreadyAuthenticated,
                    "already authenticated: an API key pair does not expire and cannot refresh a session; send a fresh token to refresh",
                ));
                return;
            }
            let (Some(Value::String(key)), Some(Value::String(secret)), None) =
                (map.get("key"), map.get("secret"), map.get("token"))
            else {
                out.push(error_frame(
                    id,
                    ErrorCode::InvalidSyntax,
                    "an API key pair needs key and secret as strings, and no token",
                ));
                return;
            };
            let result = self
                .deps
                .api_keys
                .verify(key, secret, self.deps.peer)
                .map_err(|_| AuthError::BadApiKey);
            self.finish_auth(id, result, out);
            return;
        }
        let token = match map.get("token") {
            Some(Value::String(token)) => token,
            Some(_) => {
                out.push(error_frame(
                    id,
                    ErrorCode::InvalidSyntax,
                    "token must be a string: a bearer JWT or a ticket from POST /v1/auth/ticket",
                ));
                return;
            }
            None => {
                out.push(error_frame(
                    id,
                    ErrorCode::InvalidSyntax,
                    "token is required: a bearer JWT or a ticket from POST /v1/auth/ticket",
                ));
                return;
            }
        };
        let result = self.deps.auth.verify_token_or_ticket(token);
        match self.auth.user().map(str::to_owned) {
            None => self.finish_auth(id, result, out),
            Some(current_user) => self.refresh_auth(id, &current_user, result, out),
        }
    }

    /// A fresh credential for an authenticated session: same user, later limit. A failure
    /// leaves the session as it was (it still ends at its current limit).
    fn refresh_auth(
        &mut self,
        id: Option<&Value>,
        current_user: &str,
        result: Result<Identity, AuthError>,
        out: &mut Vec<Output>,
    ) {
        match result {
            Ok(identity) if identity.user == current_user => {
                self.auth.token_deadline = deadline_of(identity.valid_until);
                let valid_until = identity.valid_until;
                let mut reply = json!({
                    "T": "success", "msg": "token refreshed", "valid_until": valid_until,
                });
                if let (Some(id), Some(object)) = (id, reply.as_object_mut()) {
                    object.insert("id".into(), id.clone());
                }
                out.push(Output::frame(format!("[{reply}]")));
            }
            Ok(_) => out.push(error_frame(
                id,
                ErrorCode::AlreadyAuthenticated,
                "already authenticated as another user: a token can only refresh its own user's session",
            )),
            Err(error) => out.push(error_frame(
                id,
                ErrorCode::AuthFailed,
                &format!(
                    "token refresh failed: {error}; the session still ends when its current token expires"
                ),
            )),
        }
    }

    /// Ends a session whose credential expired, saying so.
    pub(super) fn end_expired(&mut self, out: &mut Vec<Output>) {
        out.push(error_frame(
            None,
            ErrorCode::TokenExpired,
            "token expired: send {\"action\":\"auth\",\"token\":<fresh token>} before it expires to stay connected",
        ));
        self.close(out, close_codes::TOKEN_EXPIRED, "token expired");
    }

    /// The auth deadline passed.
    pub(super) fn on_auth_deadline(&mut self, out: &mut Vec<Output>) {
        if !self.auth.is_authenticated() {
            out.push(error_frame(
                None,
                ErrorCode::AuthTimeout,
                "auth timeout: no valid auth message in time",
            ));
            self.close(out, close_codes::POLICY, "auth timeout");
        }
    }
}
