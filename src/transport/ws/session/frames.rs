//! The session's reply frames: what [`Output`] the transport writes, the close codes, and the
//! encoders of every server message that is not market data (success, error, tagged objects,
//! the shutdown status). Invariants kept here: every frame is a JSON array of `T`-tagged
//! objects, UTF-8 by construction; replies written without `json!` print their keys in the
//! order a `json!` object would (sorted), byte for byte what clients have seen so far.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ErrorCode;
use crate::hub::CloseReason;

/// WebSocket close codes the glue sends with [`Output::Close`].
pub mod close_codes {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    /// The session's token expired and no fresh one came in time (application range).
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// What the transport must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// One text frame: a JSON array (UTF-8 by construction: serde_json output or the hub's
    /// prebuilt `Entry.ws`, shared without a copy or a second UTF-8 check).
    Frame(Bytes),
    /// One binary frame: a MessagePack array of market events (`MarketEncoding::MsgPack`).
    Binary(Bytes),
    /// Send a close frame with this code and reason, then stop.
    Close { code: u16, reason: String },
}

impl Output {
    pub(super) fn frame(text: String) -> Output {
        Output::Frame(Bytes::from(text))
    }

    pub fn frame_json(&self) -> Option<Value> {
        match self {
            Output::Frame(text) => serde_json::from_slice(text).ok(),
            Output::Binary(_) | Output::Close { .. } => None,
        }
    }
}

/// What a session sends when the hub closes its queue: the last frame, then the close code
/// and reason.
pub fn closing(reason: CloseReason) -> (Output, u16, &'static str) {
    match reason {
        CloseReason::SlowClient => (
            error_frame(
                None,
                ErrorCode::SlowClient,
                "slow client: could not keep up; reconnect and resubscribe",
            ),
            close_codes::POLICY,
            "slow client",
        ),
        CloseReason::Shutdown => {
            let status = crate::hub::entry::shutdown_status("server restarting; reconnect");
            (
                Output::frame(format!("[{status}]")),
                close_codes::RESTART,
                "server restarting",
            )
        }
        CloseReason::Reset => {
            let status = json!({
                "T": "s", "S": "*", "sc": "reset",
                "sm": "the feed was reset; reconnect and subscribe again for a fresh snapshot",
                "t": chrono::Utc::now(),
            });
            (
                Output::frame(format!("[{status}]")),
                close_codes::RESTART,
                "feed reset",
            )
        }
    }
}

/// `{"T":..., ...fields of inner}` without building an intermediate `Value`.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "T")]
    tag: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

pub(super) fn tagged<T: Serialize>(tag: &'static str, inner: &T) -> String {
    serde_json::to_string(&Tagged { tag, inner }).unwrap_or_else(|e| {
        tracing::error!(error = %e, tag, "could not encode a server message");
        format!(
            r#"{{"T":"error","code":{},"msg":"internal error encoding {tag}"}}"#,
            ErrorCode::StreamInternal.number()
        )
    })
}

/// `[a,b,...]` from already encoded objects.
pub(super) fn array(objects: &[String]) -> String {
    let mut out = String::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 2);
    out.push('[');
    for (index, object) in objects.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(object);
    }
    out.push(']');
    out
}

fn error_object(id: Option<&Value>, code: ErrorCode, msg: &str) -> String {
    let mut object = json!({"T": "error", "code": code.number(), "msg": msg});
    if let (Some(id), Some(map)) = (id, object.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    object.to_string()
}

/// `[{"T":"error","code":...,"id":...,"msg":...}]`.
pub(super) fn error_frame(id: Option<&Value>, code: ErrorCode, msg: &str) -> Output {
    Output::frame(format!("[{}]", error_object(id, code, msg)))
}

/// An order-level error; a duplicate `client_order_id` (42210002) carries the existing order.
pub(super) fn order_error_frame(
    id: Option<&Value>,
    error: &crate::trading::api::OrderError,
) -> Output {
    let mut object = json!({"T": "error", "code": error.code.number(), "msg": error.message});
    if let Some(map) = object.as_object_mut() {
        if let Some(id) = id {
            map.insert("id".into(), id.clone());
        }
        if let Some(order) = &error.order {
            map.insert(
                "order".into(),
                serde_json::to_value(order).unwrap_or(Value::Null),
            );
        }
    }
    Output::frame(format!("[{object}]"))
}

/// The greeting every connection gets first; constant, so it is not encoded per connection.
pub(super) const CONNECTED_FRAME: &[u8] = br#"[{"T":"success","msg":"connected"}]"#;

/// `[{"T":"success","id":...,"msg":...}]`, the keys in the order a `json!` object prints them
/// (sorted), written straight into the frame instead of through a `Value` and `format!`.
pub(super) fn success_frame_with_id(id: Option<&Value>, msg: &str) -> Output {
    #[derive(Serialize)]
    struct Success<'a> {
        #[serde(rename = "T")]
        tag: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
        msg: &'a str,
    }
    json_frame(&Success {
        tag: "success",
        id,
        msg,
    })
}

/// `[object]` for a reply whose encoding cannot fail (strings, numbers, bools, `Value`s).
pub(super) fn json_frame<T: Serialize>(object: &T) -> Output {
    let mut frame = Vec::with_capacity(128);
    frame.push(b'[');
    if let Err(error) = serde_json::to_writer(&mut frame, object) {
        tracing::error!(%error, "could not encode a server message");
        return error_frame(
            None,
            ErrorCode::StreamInternal,
            "internal error encoding a reply",
        );
    }
    frame.push(b']');
    Output::Frame(Bytes::from(frame))
}
