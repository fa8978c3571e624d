//! The Alpaca dialects of tickgate's WebSocket session. The session itself speaks tickgate's
//! protocol (JSON arrays of `T`-tagged objects, PROTOCOL.md §3); a dialect sits between it and
//! the socket and rewrites what differs:
//!
//! - **Market data** (`GET /v2/{iex,sip,test}`): client messages are tickgate's already
//!   (`auth` with `key`/`secret`, `subscribe` with `trades`/`quotes`/`bars`/`statuses`), only
//!   MessagePack-encoded by default; server messages are encoded back into MessagePack and the
//!   `subscription` reply takes Alpaca's channel list. Market data itself does not pass
//!   through here: the hub encodes each event's MessagePack map once (`Entry::msgpack`).
//! - **Trading** (`GET /stream`): `authenticate` and `listen` become `auth` and a
//!   `trade_updates` subscription; replies become `{"stream":…,"data":…}` objects, one per
//!   frame, with Alpaca's order shape, and the `connected` greeting is not sent (Alpaca's
//!   trading stream has none).
//!
//! Both work on the session's finished frames, which are small and rare (replies, errors,
//! trade updates); the per-event path stays the hub's shared bytes.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::msgpack;
use crate::market::MarketEvent;
use crate::routes::alpaca::shapes;
use crate::trading::api::TradeUpdate;

/// How an Alpaca market-data connection encodes its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Alpaca's default (and what alpaca-py requires).
    MsgPack,
    /// When the upgrade asks for it with `Content-Type: application/json`.
    Json,
}

/// A frame to send: text (JSON) or binary (MessagePack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    Text(Bytes),
    Binary(Bytes),
}

/// A client message the dialect refused before the session saw it: the error to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u32,
    pub message: String,
}

fn parse_frame(frame: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(frame) {
        Ok(Value::Array(items)) => items,
        Ok(other) => vec![other],
        Err(error) => {
            tracing::error!(%error, "a session frame is not JSON");
            Vec::new()
        }
    }
}

/// Channels of Alpaca's stock stream as its `subscription` reply lists them. tickgate serves
/// trades, quotes, bars and statuses; the others are always empty.
const ALPACA_CHANNELS: [&str; 9] = [
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
];

/// The market-data dialect of one connection.
#[derive(Debug, Clone, Copy)]
pub struct DataDialect {
    pub encoding: Encoding,
}

impl DataDialect {
    /// A binary client message (MessagePack) as the JSON text the session parses.
    pub fn inbound_binary(&self, bytes: &[u8]) -> Result<String, Refused> {
        msgpack::decode_message(bytes)
            .map(|value| value.to_string())
            .map_err(|error| Refused {
                code: 400,
                message: error.to_string(),
            })
    }

    /// One session frame, rewritten and encoded for the client.
    pub fn outbound(&self, frame: &[u8]) -> WireFrame {
        let objects: Vec<Value> = parse_frame(frame)
            .into_iter()
            .map(|object| self.rewrite(object))
            .collect();
        match self.encoding {
            Encoding::Json => WireFrame::Text(Bytes::from(Value::Array(objects).to_string())),
            Encoding::MsgPack => {
                let mut out = Vec::with_capacity(frame.len());
                crate::hub::msgpack::put_array_header(&mut out, objects.len());
                for object in &objects {
                    // Market data keeps its Timestamps by going through the event encoder.
                    let event = serde_json::from_value::<MarketEvent>(object.clone()).ok();
                    match event.as_ref().and_then(crate::hub::msgpack::encode_event) {
                        Some(map) => out.extend_from_slice(&map),
                        None => out.extend(msgpack::encode_value(object)),
                    }
                }
                WireFrame::Binary(Bytes::from(out))
            }
        }
    }

    fn rewrite(&self, mut object: Value) -> Value {
        let Some(map) = object.as_object_mut() else {
            return object;
        };
        // Alpaca's messages carry no request id.
        map.remove("id");
        if map.get("T").and_then(Value::as_str) != Some("subscription") {
            return object;
        }
        let mut reply = Map::new();
        reply.insert("T".into(), Value::from("subscription"));
        for channel in ALPACA_CHANNELS {
            let value = match channel {
                "corrections" | "cancelErrors" => map.get("trades").cloned(),
                other => map.get(other).cloned(),
            };
            reply.insert(channel.into(), value.unwrap_or_else(|| json!([])));
        }
        Value::Object(reply)
    }
}

/// The trading-stream dialect of one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TradingDialect;

impl TradingDialect {
    /// An Alpaca trading-stream message as the tickgate action the session takes.
    pub fn inbound(&self, text: &[u8]) -> Result<String, Refused> {
        let refuse = |message: String| Refused { code: 400, message };
        let value: Value = serde_json::from_slice(text)
            .map_err(|error| refuse(format!("invalid JSON: {error}")))?;
        let Value::Object(map) = value else {
            return Err(refuse(
                "a message must be a JSON object with an \"action\"".into(),
            ));
        };
        let action = map
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let data = map.get("data").and_then(Value::as_object);
        let field = |name: &str| {
            data.and_then(|d| d.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match action {
            "authenticate" => {
                let (Some(key), Some(secret)) = (field("key_id"), field("secret_key")) else {
                    return Err(refuse(
                        "authenticate needs data.key_id and data.secret_key".into(),
                    ));
                };
                Ok(json!({"action": "auth", "key": key, "secret": secret}).to_string())
            }
            // The newer form, which is tickgate's own.
            "auth" => Ok(Value::Object(map).to_string()),
            "listen" => {
                let Some(streams) = data
                    .and_then(|d| d.get("streams"))
                    .and_then(Value::as_array)
                else {
                    return Err(refuse(
                        "listen needs data.streams, a list of stream names".into(),
                    ));
                };
                let wanted = streams.iter().any(|s| s == "trade_updates");
                let action = if wanted { "subscribe" } else { "unsubscribe" };
                Ok(json!({"action": action, "trade_updates": true}).to_string())
            }
            other => Err(refuse(format!(
                "unknown action {other:?}; use authenticate or listen"
            ))),
        }
    }

    /// A refusal as the client sees it.
    pub fn refused(&self, refused: &Refused) -> WireFrame {
        stream_frame(
            "error",
            json!({"code": refused.code, "message": refused.message}),
        )
    }

    /// One session frame as Alpaca's stream objects, one frame each.
    pub fn outbound(&self, frame: &[u8]) -> Vec<WireFrame> {
        let mut out = Vec::new();
        for object in parse_frame(frame) {
            let tag = object.get("T").and_then(Value::as_str).unwrap_or_default();
            match tag {
                "success" if object["msg"] == "authenticated" => out.push(stream_frame(
                    "authorization",
                    json!({"status": "authorized", "action": "authenticate"}),
                )),
                // Alpaca's trading stream has no greeting and no market data.
                "success" | "t" | "q" | "b" | "s" | "n" => {}
                "subscription" => {
                    let streams: Vec<&str> = if object["trade_updates"] == true {
                        vec!["trade_updates"]
                    } else {
                        Vec::new()
                    };
                    out.push(stream_frame("listening", json!({ "streams": streams })));
                }
                "trade_update" => match serde_json::from_value::<TradeUpdate>(object) {
                    Ok(update) => {
                        out.push(stream_frame("trade_updates", shapes::trade_update(&update)));
                    }
                    Err(error) => tracing::error!(%error, "a trade update did not parse back"),
                },
                "error" => {
                    let code = object["code"].as_u64().unwrap_or(500);
                    let message = object["msg"].as_str().unwrap_or_default().to_owned();
                    // Auth failures and the connection limit end the session; Alpaca reports
                    // them as an unauthorized authorization.
                    if code == 402 || code == 406 {
                        out.push(stream_frame(
                            "authorization",
                            json!({"status": "unauthorized", "action": "authenticate",
                                   "message": message}),
                        ));
                    } else {
                        out.push(stream_frame(
                            "error",
                            json!({"code": code, "message": message}),
                        ));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

fn stream_frame(stream: &str, data: Value) -> WireFrame {
    WireFrame::Text(Bytes::from(
        json!({"stream": stream, "data": data}).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &WireFrame) -> Value {
        match frame {
            WireFrame::Text(bytes) => serde_json::from_slice(bytes).expect("json"),
            WireFrame::Binary(_) => panic!("expected text"),
        }
    }

    fn unpack(frame: &WireFrame) -> rmpv::Value {
        match frame {
            WireFrame::Binary(bytes) => rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack"),
            WireFrame::Text(_) => panic!("expected binary"),
        }
    }

    #[test]
    fn the_subscription_reply_lists_alpacas_channels_and_no_request_id() {
        let dialect = DataDialect {
            encoding: Encoding::Json,
        };
        let native = br#"[{"T":"subscription","bars":[],"id":7,"news":[],"orderbooks":[],
            "portfolio":false,"quotes":["AAPL"],"trade_updates":false,"trades":["AAPL"],
            "statuses":["*"]}]"#;
        let reply = text(&dialect.outbound(native));
        let object = &reply[0];
        assert_eq!(object["trades"], json!(["AAPL"]));
        assert_eq!(object["statuses"], json!(["*"]));
        assert_eq!(object["updatedBars"], json!([]));
        assert_eq!(object["corrections"], json!(["AAPL"]));
        assert!(object.get("id").is_none() && object.get("portfolio").is_none());
    }

    #[test]
    fn messagepack_frames_keep_market_data_timestamps_and_encode_replies_as_maps() {
        let dialect = DataDialect {
            encoding: Encoding::MsgPack,
        };
        let frame = br#"[{"T":"success","msg":"connected"},
            {"T":"t","S":"AAPL","i":1,"x":"V","p":10.5,"s":3,"t":"2026-12-05T14:30:00.5Z","c":[]}]"#;
        let value = unpack(&dialect.outbound(frame));
        let items = value.as_array().expect("array");
        assert_eq!(items.len(), 2);
        let time = items[1]
            .as_map()
            .expect("map")
            .iter()
            .find(|(k, _)| k.as_str() == Some("t"))
            .map(|(_, v)| v.clone())
            .expect("t");
        assert!(matches!(time, rmpv::Value::Ext(-1, _)), "{time:?}");
        let message =
            rmp_serde::to_vec_named(&json!({"action": "auth", "key": "k", "secret": "s"}))
                .expect("encode");
        let native: Value =
            serde_json::from_str(&dialect.inbound_binary(&message).expect("decode")).expect("json");
        assert_eq!(native["key"], "k");
        assert!(dialect.inbound_binary(b"\xc1").is_err());
    }

    #[test]
    fn authenticate_and_listen_become_tickgate_actions() {
        let dialect = TradingDialect;
        let auth: Value = serde_json::from_str(
            &dialect
                .inbound(br#"{"action":"authenticate","data":{"key_id":"k","secret_key":"s"}}"#)
                .expect("auth"),
        )
        .expect("json");
        assert_eq!(auth, json!({"action": "auth", "key": "k", "secret": "s"}));
        let listen: Value = serde_json::from_str(
            &dialect
                .inbound(br#"{"action":"listen","data":{"streams":["trade_updates"]}}"#)
                .expect("listen"),
        )
        .expect("json");
        assert_eq!(
            listen,
            json!({"action": "subscribe", "trade_updates": true})
        );
        let stop: Value = serde_json::from_str(
            &dialect
                .inbound(br#"{"action":"listen","data":{"streams":[]}}"#)
                .expect("listen"),
        )
        .expect("json");
        assert_eq!(stop["action"], "unsubscribe");
        assert!(dialect.inbound(br#"{"action":"subscribe"}"#).is_err());
        assert!(
            dialect
                .inbound(br#"{"action":"authenticate","data":{}}"#)
                .is_err()
        );
    }

    #[test]
    fn replies_become_stream_objects_one_per_frame_without_a_greeting() {
        let dialect = TradingDialect;
        assert!(
            dialect
                .outbound(br#"[{"T":"success","msg":"connected"}]"#)
                .is_empty()
        );
        let authorized = dialect.outbound(br#"[{"T":"success","msg":"authenticated"}]"#);
        assert_eq!(
            text(&authorized[0]),
            json!({"stream": "authorization",
                   "data": {"status": "authorized", "action": "authenticate"}})
        );
        let failed = dialect.outbound(br#"[{"T":"error","code":402,"msg":"auth failed: x"}]"#);
        assert_eq!(text(&failed[0])["data"]["status"], "unauthorized");
        let listening = dialect.outbound(br#"[{"T":"subscription","trade_updates":true}]"#);
        assert_eq!(
            text(&listening[0]),
            json!({"stream": "listening", "data": {"streams": ["trade_updates"]}})
        );
        let order = json!({
            "id": "2f7c1d47-56d8-4f3e-9a53-0d1f1a8c3a11", "client_order_id": "c",
            "symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day",
            "qty": "1", "filled_qty": "0", "filled_avg_price": null, "limit_price": null,
            "stop_price": null, "status": "new", "created_at": "2026-12-05T14:30:00Z",
            "updated_at": "2026-12-05T14:30:00Z", "submitted_at": "2026-12-05T14:30:00Z",
            "filled_at": null, "canceled_at": null, "expired_at": null, "replaced_by": null,
            "replaces": null, "commission": "0"
        });
        let updates = json!([
            {"T": "trade_update", "seq": 1, "event": "new", "timestamp": "2026-12-05T14:30:00Z",
             "order": order},
            {"T": "trade_update", "seq": 2, "event": "canceled",
             "timestamp": "2026-12-05T14:30:01Z", "order": order},
        ]);
        let frames = dialect.outbound(updates.to_string().as_bytes());
        assert_eq!(frames.len(), 2, "one update per frame");
        let first = text(&frames[0]);
        assert_eq!(first["stream"], "trade_updates");
        assert_eq!(first["data"]["event"], "new");
        assert_eq!(first["data"]["order"]["extended_hours"], false);
        assert_eq!(text(&frames[1])["data"]["event"], "canceled");
    }
}
