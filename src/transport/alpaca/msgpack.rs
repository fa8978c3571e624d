//! MessagePack on the Alpaca market-data stream, beyond the market events the hub encodes
//! (`hub::msgpack`): control messages (`success`, `subscription`, `error`) encoded from their
//! JSON form, and client messages decoded into the JSON values the session already parses.

/// A control message (`success`, `subscription`, `error`) from its JSON form.
pub fn encode_value(value: &serde_json::Value) -> Vec<u8> {
    // serde_json values hold only maps, arrays, strings, numbers, booleans and nulls, all of
    // which MessagePack represents; the encoder cannot fail on them.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Why a client's binary message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid MessagePack: {0}")]
pub struct DecodeError(String);

/// A client message (`auth`, `subscribe`, `unsubscribe`) as the JSON value the session
/// parses. Binary strings and extension types are refused: no client message has them.
pub fn decode_message(bytes: &[u8]) -> Result<serde_json::Value, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::msgpack::{put_array_header, put_timestamp};

    fn decode(bytes: &[u8]) -> rmpv::Value {
        rmpv::decode::read_value(&mut &bytes[..]).expect("valid MessagePack")
    }

    #[test]
    fn a_frame_is_an_array_of_maps_and_client_messages_decode_to_json() {
        let mut frame = Vec::new();
        put_array_header(&mut frame, 2);
        frame.extend(encode_value(
            &serde_json::json!({"T": "success", "msg": "connected"}),
        ));
        frame.extend(encode_value(
            &serde_json::json!({"T": "error", "code": 400}),
        ));
        let value = decode(&frame);
        assert_eq!(value.as_array().map(Vec::len), Some(2));
        let message = rmp_serde::to_vec_named(&serde_json::json!({
            "action": "subscribe", "trades": ["AAPL"], "statuses": ["*"]
        }))
        .expect("encode");
        let decoded = decode_message(&message).expect("decode");
        assert_eq!(decoded["trades"][0], "AAPL");
        assert!(decode_message(&[0xc1]).is_err(), "0xc1 is never used");
        let mut ext = Vec::new();
        put_timestamp(&mut ext, chrono::Utc::now());
        assert!(decode_message(&ext).is_err(), "extensions are refused");
    }
}
