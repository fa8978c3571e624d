//! The command stream in Redis: key and channel names, `XADD` of a command, the consumer
//! group the exchange reads with (`XREADGROUP`, `XAUTOCLAIM` of a dead predecessor's pending
//! commands, `XACK`), and the parsing of their replies.

use redis::Value;

use super::super::node::ClusterError;
use crate::trading::command::TradingCommand;

/// The stream every node appends commands to.
pub(super) fn commands_key() -> String {
    "tickgate:trading:commands".into()
}

/// The consumer group of the exchange (one group; its consumer is the node holding the lease).
pub(super) const GROUP: &str = "exchange";

/// Announcements and the exchange's heartbeat, for every node.
pub(super) fn events_channel() -> String {
    "tickgate:trading:events".into()
}

/// Replies for the commands one node sent.
pub(super) fn reply_channel(node: &str) -> String {
    format!("tickgate:trading:reply:{node}")
}

/// Commands kept in the stream (approximately): far more than are ever waiting, since every
/// command is acknowledged or expired within its timeout.
const STREAM_LENGTH: usize = 100_000;

/// The field of a stream entry that holds the command's JSON.
const FIELD: &str = "c";

/// `XADD` of one command.
pub(super) fn add(command: &TradingCommand) -> Result<redis::Cmd, ClusterError> {
    let json = serde_json::to_string(command)
        .map_err(|error| ClusterError::Reply(format!("command not encodable: {error}")))?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(commands_key())
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_LENGTH)
        .arg("*")
        .arg(FIELD)
        .arg(json);
    Ok(cmd)
}

/// `XGROUP CREATE … 0 MKSTREAM`: from the start of the stream, so a command added before the
/// group existed is not skipped (it is expired or answered like any other).
pub(super) fn create_group() -> redis::Cmd {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(commands_key())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM");
    cmd
}

/// `XREADGROUP` of new commands for `consumer`, waiting up to `block_ms`.
pub(super) fn read_new(consumer: &str, count: usize, block_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block_ms)
        .arg("STREAMS")
        .arg(commands_key())
        .arg(">");
    cmd
}

/// `XAUTOCLAIM` of the pending commands (of any consumer) idle for `min_idle_ms` at least,
/// from `cursor` on, to `consumer`.
pub(super) fn claim(consumer: &str, min_idle_ms: u64, cursor: &str, count: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("XAUTOCLAIM");
    cmd.arg(commands_key())
        .arg(GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count);
    cmd
}

/// `XACK` of handled entries.
pub(super) fn ack(ids: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("XACK");
    cmd.arg(commands_key()).arg(GROUP).arg(ids);
    cmd
}

/// One entry read from the stream: its id and the command, or why it could not be read.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) command: Result<TradingCommand, String>,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// The entries of `[[id, [field, value, …]], …]`. An entry whose fields were deleted (trimmed
/// while pending) has no command.
pub(super) fn entries(value: &Value) -> Result<Vec<Entry>, ClusterError> {
    let bad = |what: &str| ClusterError::Reply(format!("command stream: {what}"));
    let Value::Array(items) = value else {
        return Err(bad("entries are not an array"));
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return Err(bad("an entry is not an array"));
        };
        let id = pair
            .first()
            .and_then(text)
            .ok_or_else(|| bad("an entry has no id"))?;
        let fields = match pair.get(1) {
            Some(Value::Array(fields)) => fields.as_slice(),
            _ => &[],
        };
        // Decoded from the reply's own bytes (not a copy of them).
        let json = fields
            .chunks(2)
            .find(|chunk| chunk.first().and_then(bytes) == Some(FIELD.as_bytes()))
            .and_then(|chunk| chunk.get(1))
            .and_then(bytes);
        let command = match json {
            Some(json) => serde_json::from_slice(json).map_err(|error| error.to_string()),
            None => Err("the entry has no command".into()),
        };
        entries.push(Entry { id, command });
    }
    Ok(entries)
}

/// The entries of an `XREADGROUP` reply (`nil` when nothing came in time).
pub(super) fn read_reply(value: &Value) -> Result<Vec<Entry>, ClusterError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut all = Vec::new();
            for stream in streams {
                if let Value::Array(parts) = stream
                    && let Some(items) = parts.get(1)
                {
                    all.extend(entries(items)?);
                }
            }
            Ok(all)
        }
        Value::Map(streams) => {
            let mut all = Vec::new();
            for (_, items) in streams {
                all.extend(entries(items)?);
            }
            Ok(all)
        }
        _ => Err(ClusterError::Reply(
            "command stream: unexpected XREADGROUP reply".into(),
        )),
    }
}

/// The next cursor and the entries of an `XAUTOCLAIM` reply (`0-0`: the scan is complete).
pub(super) fn claim_reply(value: &Value) -> Result<(String, Vec<Entry>), ClusterError> {
    let bad = || ClusterError::Reply("command stream: unexpected XAUTOCLAIM reply".into());
    let Value::Array(parts) = value else {
        return Err(bad());
    };
    let cursor = parts.first().and_then(text).ok_or_else(bad)?;
    let claimed = entries(parts.get(1).ok_or_else(bad)?)?;
    Ok((cursor, claimed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trading::command::TradingRequest;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn command_json() -> String {
        serde_json::to_string(&TradingCommand {
            id: "n1-1".into(),
            user: "alice".into(),
            node: "n1".into(),
            deadline_ms: 5,
            request: TradingRequest::Portfolio,
        })
        .expect("encodes")
    }

    #[test]
    fn a_read_reply_yields_each_entry_with_its_command_and_nil_yields_none() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("tickgate:trading:commands"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("c"), bulk(&command_json())]),
                ]),
                Value::Array(vec![
                    bulk("2-0"),
                    Value::Array(vec![bulk("c"), bulk("{not json")]),
                ]),
            ]),
        ])]);
        let read = read_reply(&reply).expect("parses");
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].id, "1-0");
        assert_eq!(read[0].command.as_ref().expect("a command").user, "alice");
        assert_eq!(read[1].id, "2-0");
        assert!(read[1].command.is_err());
        assert!(read_reply(&Value::Nil).expect("nil").is_empty());
    }

    #[test]
    fn a_claim_reply_gives_the_cursor_and_treats_a_trimmed_entry_as_unreadable() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk("c"), bulk(&command_json())]),
                ]),
                Value::Array(vec![bulk("4-0"), Value::Nil]),
            ]),
            Value::Array(vec![]),
        ]);
        let (cursor, claimed) = claim_reply(&reply).expect("parses");
        assert_eq!(cursor, "0-0");
        assert!(claimed[0].command.is_ok());
        assert!(claimed[1].command.is_err());
    }
}
