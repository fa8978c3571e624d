//! Authentication of a session: the credential on the upgrade request or the `auth` action
//! (a token, a ticket or an API key pair),
//! the per-user connection limit, and the auth deadline. Invariants kept here: until it is
//! authenticated a session answers every other action with 401; a failed credential (402),
//! the connection limit (406) and the deadline passing (404) end the session with close
//! 1008; a second `auth` is refused with 403 and changes nothing. The connection slot is held
//! (a [`ConnectionGuard`]) for as long as the session lives.

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::auth::{AuthError, ConnectionGuard, Identity};
use crate::error::ErrorCode;

use super::WsSession;
use super::frames::{Output, close_codes, error_frame, success_frame_with_id};
use super::parse::check_keys;

/// Who the session is, once authenticated.
pub(super) struct AuthState {
    identity: Option<Identity>,
    guard: Option<ConnectionGuard>,
    /// When an unauthenticated session is closed.
    deadline: Instant,
}

impl AuthState {
    pub(super) fn new(deadline: Instant) -> AuthState {
        AuthState {
            identity: None,
            guard: None,
            deadline,
        }
    }

    pub(super) fn user(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.as_str())
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.identity.is_some()
    }

    /// The deadline to wait for, while not authenticated.
    pub(super) fn pending_deadline(&self) -> Option<Instant> {
        self.identity.is_none().then_some(self.deadline)
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
                    self.auth.identity = Some(identity);
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

    /// `auth` with a bearer JWT, a ticket, or an API key pair (`key` and `secret`).
    pub(super) fn auth_action(
        &mut self,
        id: Option<&Value>,
        map: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) {
        if self.auth.is_authenticated() {
            out.push(error_frame(
                id,
                ErrorCode::AlreadyAuthenticated,
                "already authenticated",
            ));
            return;
        }
        if let Err(refusal) = check_keys(map, "auth", &["token", "key", "secret"]) {
            out.push(error_frame(id, refusal.code, &refusal.msg));
            return;
        }
        // An API key pair (Alpaca's form) instead of a token.
        if map.contains_key("key") || map.contains_key("secret") {
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
        self.finish_auth(id, result, out);
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
