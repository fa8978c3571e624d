//! Key names in Redis and the encoding of events there: the pub/sub payload
//! `<epoch>:<seq>:<json>`, stream ids `<seq>-0`, latest values `<time key>:<seq>:<json>`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::hub::Feed;
use crate::market::{EventKind, MarketEvent};

/// Every key tickgate uses starts with this, so a shared Redis can tell them apart.
const PREFIX: &str = "tickgate";

pub fn epoch_key() -> String {
    format!("{PREFIX}:epoch")
}

pub fn meta_key(feed: Feed) -> String {
    format!("{PREFIX}:feed:{}:meta", feed.name())
}

pub fn stream_key(feed: Feed) -> String {
    format!("{PREFIX}:feed:{}:stream", feed.name())
}

pub fn channel(feed: Feed) -> String {
    format!("{PREFIX}:feed:{}", feed.name())
}

pub fn feed_of_channel(name: &str) -> Option<Feed> {
    Feed::ALL.into_iter().find(|feed| channel(*feed) == name)
}

pub fn latest_key() -> String {
    format!("{PREFIX}:latest")
}

pub fn lease_key(source: &str) -> String {
    format!("{PREFIX}:lease:{source}")
}

pub fn fence_key() -> String {
    format!("{PREFIX}:fence")
}

/// A time as a fixed-width decimal string whose byte order is time order (Lua compares the
/// strings): seconds shifted to be positive, then nanoseconds.
pub fn time_key(time: DateTime<Utc>) -> String {
    const SHIFT: i64 = 10_000_000_000_000;
    format!(
        "{:014}{:09}",
        time.timestamp().saturating_add(SHIFT).max(0),
        time.timestamp_subsec_nanos()
    )
}

/// The latest-values field of an event (`t:`, `q:` or `b:` and the symbol); `None` for kinds
/// without a per-symbol latest value.
pub fn latest_field(event: &MarketEvent) -> Option<String> {
    let tag = match event.kind() {
        EventKind::Trade => 't',
        EventKind::Quote => 'q',
        EventKind::Bar => 'b',
        _ => return None,
    };
    event.symbol().map(|symbol| format!("{tag}:{symbol}"))
}

/// The latest-values field of `symbol`'s latest quote (see [`latest_field`]).
pub fn latest_quote_field(symbol: &str) -> String {
    format!("q:{symbol}")
}

/// Splits a pub/sub payload into epoch, sequence and JSON.
pub fn decode_message(payload: &[u8]) -> Option<(u64, u64, Bytes)> {
    let (epoch, rest) = split_number(payload)?;
    let (seq, json) = split_number(rest)?;
    Some((epoch, seq, Bytes::copy_from_slice(json)))
}

/// Splits a latest value into its sequence and JSON (the time key is skipped).
pub fn decode_latest(value: &[u8]) -> Option<(u64, Bytes)> {
    let colon = value.iter().position(|b| *b == b':')?;
    let (seq, json) = split_number(&value[colon + 1..])?;
    Some((seq, Bytes::copy_from_slice(json)))
}

/// The sequence number of a stream entry id `<seq>-0`.
pub fn seq_of_stream_id(id: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(id).ok()?;
    let (seq, _) = text.split_once('-')?;
    seq.parse().ok()
}

/// `<digits>:<rest>` into the number and the rest.
fn split_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let colon = bytes.iter().position(|b| *b == b':')?;
    let number = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
    Some((number, &bytes[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_as_their_times_do_across_second_and_sign_boundaries() {
        let times = [
            DateTime::from_timestamp(-5, 999_999_999),
            DateTime::from_timestamp(0, 0),
            DateTime::from_timestamp(1_700_000_000, 1),
            DateTime::from_timestamp(1_700_000_000, 999_999_999),
            DateTime::from_timestamp(1_700_000_001, 0),
        ];
        let keys: Vec<String> = times.iter().flatten().map(|t| time_key(*t)).collect();
        assert_eq!(keys.len(), times.len());
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");
        assert!(keys.iter().all(|key| key.len() == 23));
    }

    #[test]
    fn payloads_decode_to_epoch_sequence_and_json_and_reject_garbage() {
        let (epoch, seq, json) = decode_message(b"17:42:{\"a\":\"x:y\"}").expect("valid");
        assert_eq!((epoch, seq), (17, 42));
        assert_eq!(json.as_ref(), b"{\"a\":\"x:y\"}");
        assert_eq!(decode_message(b"17-42:{}"), None);
        assert_eq!(decode_message(b"x:1:{}"), None);
        let (seq, json) = decode_latest(b"00000000000001:9:{}").expect("valid");
        assert_eq!((seq, json.as_ref()), (9, b"{}".as_ref()));
        assert_eq!(seq_of_stream_id(b"12-0"), Some(12));
        assert_eq!(seq_of_stream_id(b"12"), None);
        assert_eq!(feed_of_channel(&channel(Feed::News)), Some(Feed::News));
        assert_eq!(feed_of_channel("tickgate:feed:other"), None);
    }
}
