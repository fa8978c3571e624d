//! Reading client messages: the action names, the keys each action accepts, symbol lists, and
//! the `data` of order actions. Invariants kept here: an unknown key is refused with a message
//! that lists the allowed ones (never ignored); symbols are trimmed and upper-cased before they
//! are looked up; decimals stay text until the engine parses them (money is never a float).

use serde_json::{Map, Value};

use crate::error::ErrorCode;
use crate::market::SymbolUniverse;
use crate::trading::api::{OrderError, OrderRef};

use super::subscriptions::SymbolSet;

/// What a client message asks for. A new action is a variant here, its name in
/// [`Action::parse`], and a handler in the file of its concern, called from
/// `WsSession::on_text` (whose `match` is exhaustive, so the compiler points there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Auth,
    Subscribe,
    Unsubscribe,
    Resync,
    Order,
    Cancel,
    Replace,
}

impl Action {
    pub(super) fn parse(name: &str) -> Result<Action, Refusal> {
        Ok(match name {
            "auth" => Action::Auth,
            "subscribe" => Action::Subscribe,
            "unsubscribe" => Action::Unsubscribe,
            "resync" => Action::Resync,
            "order" => Action::Order,
            "cancel" => Action::Cancel,
            "replace" => Action::Replace,
            other => {
                return Err(refuse(
                    ErrorCode::InvalidSyntax,
                    format!(
                        "unknown action {other:?}; use auth, subscribe, unsubscribe, resync, order, cancel or replace"
                    ),
                ));
            }
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Action::Auth => "auth",
            Action::Subscribe => "subscribe",
            Action::Unsubscribe => "unsubscribe",
            Action::Resync => "resync",
            Action::Order => "order",
            Action::Cancel => "cancel",
            Action::Replace => "replace",
        }
    }

    /// Whether the action only sends a command to the exchange and touches nothing but the
    /// session's trading streams (an order, a cancel, a replace): it starts or stops no market
    /// data, and may wait a failover's seconds for its answer.
    fn waits_only_for_the_exchange(self) -> bool {
        match self {
            Action::Order | Action::Cancel | Action::Replace => true,
            Action::Auth | Action::Subscribe | Action::Unsubscribe | Action::Resync => false,
        }
    }

    /// Whether the action needs an authenticated session.
    pub(super) fn needs_identity(self) -> bool {
        match self {
            Action::Auth => false,
            Action::Subscribe
            | Action::Unsubscribe
            | Action::Resync
            | Action::Order
            | Action::Cancel
            | Action::Replace => true,
        }
    }
}

/// Whether a client message asks for an order, a cancel or a replace: an action that
/// touches only the session's trading streams, so the session's market data (and the
/// trading statuses that come with it) need not wait for the exchange's answer. A message
/// this cannot read says no: it is handled like any other action.
pub fn is_order_action(text: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Peek<'_>>(text)
        .ok()
        .and_then(|peek| peek.action)
        .and_then(|action| Action::parse(&action).ok())
        .is_some_and(Action::waits_only_for_the_exchange)
}

/// A client message that could not be acted on: its reply code and message.
pub(super) struct Refusal {
    pub(super) code: ErrorCode,
    pub(super) msg: String,
}

pub(super) fn refuse(code: ErrorCode, msg: impl Into<String>) -> Refusal {
    Refusal {
        code,
        msg: msg.into(),
    }
}

/// The `id` of a message the session will not process, so the client still learns which
/// request was dropped. Only the id is deserialized; oversize or malformed messages give none.
pub(super) fn request_id(text: &str, max_message_bytes: usize) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    if text.len() > max_message_bytes {
        return None;
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.id?;
    (id.is_string() || id.is_number()).then_some(id)
}

/// Keys every action accepts besides its own.
pub(super) const COMMON_KEYS: [&str; 2] = ["action", "id"];

pub(super) fn check_keys(
    map: &Map<String, Value>,
    action: &str,
    allowed: &[&str],
) -> Result<(), Refusal> {
    if let Some(key) = map
        .keys()
        .find(|k| !COMMON_KEYS.contains(&k.as_str()) && !allowed.contains(&k.as_str()))
    {
        return Err(refuse(
            ErrorCode::InvalidSyntax,
            format!(
                "unknown field {key:?} for action {action:?}; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(())
}

/// A JSON array of symbol names (`"*"` for all when `allow_all`), every one known.
pub(super) fn symbol_list(
    universe: &SymbolUniverse,
    value: &Value,
    key: &str,
    allow_all: bool,
) -> Result<SymbolSet, Refusal> {
    let Value::Array(items) = value else {
        return Err(refuse(
            ErrorCode::InvalidSyntax,
            format!("{key} must be an array of symbols"),
        ));
    };
    let mut set = SymbolSet::default();
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for item in items {
        let Value::String(name) = item else {
            return Err(refuse(
                ErrorCode::InvalidSyntax,
                format!("{key} must contain only symbol strings"),
            ));
        };
        let name = name.trim().to_ascii_uppercase();
        if name == "*" {
            if !allow_all {
                return Err(refuse(
                    ErrorCode::InvalidSyntax,
                    format!("{key} does not accept \"*\": name the symbols"),
                ));
            }
            set.all = true;
            continue;
        }
        match universe.id(&name) {
            Some(id) => ids.push(id),
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        return Err(refuse(
            ErrorCode::InvalidSyntax,
            format!("unknown symbol(s) in {key}: {}", unknown.join(", ")),
        ));
    }
    set.ids.extend(ids);
    Ok(set)
}

// Order bodies are parsed once for every door (this session, `/v1/orders`, `/v2/orders`).
pub(super) use crate::routes::orders::{order_request, replace_request, string_field};

pub(super) fn target(map: &Map<String, Value>) -> Result<OrderRef, OrderError> {
    let order_id = string_field(map, "order_id")?;
    let client_order_id = string_field(map, "client_order_id")?;
    match (order_id, client_order_id) {
        (Some(id), None) if !id.is_empty() => Ok(OrderRef::Id(id)),
        (None, Some(id)) if !id.is_empty() => Ok(OrderRef::ClientOrderId(id)),
        (Some(_), Some(_)) => Err(OrderError::invalid(
            "give either order_id or client_order_id, not both",
        )),
        _ => Err(OrderError::invalid(
            "order_id or client_order_id is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_orders_cancels_and_replaces_let_market_data_flow_while_they_wait() {
        for text in [
            r#"{"action":"order","data":{}}"#,
            r#"{"action":"cancel","data":{}}"#,
            r#"{"action":"replace","data":{}}"#,
        ] {
            assert!(is_order_action(text.as_bytes()), "{text}");
        }
        for text in [
            r#"{"action":"subscribe","trades":["AAPL"]}"#,
            r#"{"action":"unsubscribe"}"#,
            r#"{"action":"auth","token":"x"}"#,
            r#"{"action":"resync"}"#,
            r#"{"action":"Order"}"#,
            r#"{"action":"nonsense"}"#,
            r#"{"data":{}}"#,
            "not json",
        ] {
            assert!(!is_order_action(text.as_bytes()), "{text}");
        }
    }
}
