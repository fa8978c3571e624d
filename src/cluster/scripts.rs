//! The Lua scripts run in Redis. Each is one atomic step, so no other client sees a sequence
//! number without its stream entry, or a lease without its fencing token.
//!
//! Layout (see `wire` for the names): a global epoch key; per feed a metadata hash (`e`: the
//! epoch the feed's log belongs to, `s`: its newest sequence number), a stream whose entry
//! ids are `<seq>-0` with the event's JSON in field `d`, and a pub/sub channel; a hash of the
//! latest trade, quote and bar per symbol (`<time key>:<seq>:<json>`); per source a lease key
//! (`<node>:<token>`) and one fencing counter for all leases.

/// Makes sure the epoch exists (a Redis that lost its data gets the caller's new one) and that
/// the feed's log belongs to it; a log of another epoch is dropped and starts again at 0.
/// KEYS[1] epoch, KEYS[2] feed metadata, KEYS[3] feed stream; ARGV[1] new epoch if missing.
const ENSURE_LOG: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
if redis.call('HGET', KEYS[2], 'e') ~= epoch then
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
";

/// Publishes one event. KEYS[4] latest-values hash, KEYS[5] the publisher's lease key;
/// ARGV[2] stream length (the replay window), ARGV[3] channel, ARGV[4] lease value (empty:
/// no lease, the publish API), ARGV[5] latest-values field (empty: none), ARGV[6] the event's
/// fixed-width time key, ARGV[7] the event's JSON. Returns `{epoch, seq}` or an error whose
/// first word is `FENCED` (the lease is not held) or `BACKWARDS` (time went backwards).
pub fn publish_source() -> String {
    format!(
        r"
if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[4] then
  return redis.error_reply('FENCED the lease of this source is not held')
end
{ENSURE_LOG}
if ARGV[5] ~= '' then
  local previous = redis.call('HGET', KEYS[4], ARGV[5])
  if previous and string.sub(previous, 1, #ARGV[6]) > ARGV[6] then
    return redis.error_reply('BACKWARDS time went backwards for this symbol')
  end
end
local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], seq .. '-0', 'd', ARGV[7])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6] .. ':' .. seq .. ':' .. ARGV[7])
end
redis.call('PUBLISH', ARGV[3], epoch .. ':' .. seq .. ':' .. ARGV[7])
return {{epoch, seq}}
"
    )
}

/// Reads a feed's log from a sequence number on. KEYS[4] latest-values hash; ARGV[2] first
/// sequence wanted, ARGV[3] `1` to include the latest values, ARGV[4] and ARGV[5] the
/// newest sequence the reader already applied and its epoch (`0` and empty: none). Returns `{epoch, top, entries, latest}`, all from one instant.
///
/// A log whose newest sequence is below what a reader applied went back in time (Redis came
/// back from a snapshot or an append-only file older than what it had served, or a replica
/// that lagged was promoted): its numbers would be issued again for other events. The epoch
/// is then replaced, so every node and client sees an explicit reset instead.
pub fn read_source() -> String {
    format!(
        r"
{ENSURE_LOG}
if epoch == ARGV[5] and tonumber(redis.call('HGET', KEYS[2], 's')) < tonumber(ARGV[4]) then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
local top = redis.call('HGET', KEYS[2], 's')
local entries = redis.call('XRANGE', KEYS[3], ARGV[2] .. '-0', '+')
local latest = {{}}
if ARGV[3] == '1' then
  latest = redis.call('HGETALL', KEYS[4])
end
return {{epoch, top, entries, latest}}
"
    )
}

/// Takes a free lease. KEYS[1] lease, KEYS[2] fencing counter; ARGV[1] node id, ARGV[2] time
/// to live in ms, ARGV[3] the smallest token to hand out (the time in ms, so tokens keep
/// rising even after Redis lost the counter). Returns `<node>:<token>`, or nil when taken.
pub const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if token < floor then
  token = floor
  redis.call('SET', KEYS[2], string.format('%d', token))
end
local value = ARGV[1] .. ':' .. string.format('%d', token)
redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2])
return value
";

/// Extends a lease still held with the same value. Returns 1, or 0 when it was lost.
pub const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Gives a lease up if it is still ours. Returns 1, or 0 when it was not held.
pub const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";
