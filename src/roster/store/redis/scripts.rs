//! The Lua scripts of the Redis roster store: each change or consistent read of a channel is
//! one script, so Redis runs it atomically. Key and argument layouts are documented on each
//! script; the key names themselves are built by `Keys` in the parent module.

/// Compare-and-set of a channel.
///
/// KEYS: 1 summary hash (`v` value, `r` revision), 2 members hash (uuid → value), 3 present
/// zset (uuids, score 0), 4 channel index zset (raw names, score 0), 5 revision counter.
/// ARGV: 1 expected revision (`0`: no summary), 2 raw channel name, 3 `w` (write the summary
/// in 4) or `r` (remove the channel), then one `op, uuid, value` triple per member write, op
/// `p` (present), `a` (absent: tombstone) or `d` (delete; value unused).
///
/// Returns `-1` on a conflict, `0` when the channel was removed, else the new revision, taken
/// from the store-wide counter (never deleted, so a re-created channel keeps climbing).
pub const COMMIT: &str = r"
local current = redis.call('HGET', KEYS[1], 'r') or '0'
if current ~= ARGV[1] then
  return -1
end
if ARGV[3] == 'r' then
  redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[2])
  return 0
end
local rev = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], 'v', ARGV[4], 'r', rev)
if current == '0' then
  redis.call('ZADD', KEYS[4], 0, ARGV[2])
end
for i = 5, #ARGV, 3 do
  local op, uuid = ARGV[i], ARGV[i + 1]
  if op == 'p' then
    redis.call('HSET', KEYS[2], uuid, ARGV[i + 2])
    redis.call('ZADD', KEYS[3], 0, uuid)
  elseif op == 'a' then
    redis.call('HSET', KEYS[2], uuid, ARGV[i + 2])
    redis.call('ZREM', KEYS[3], uuid)
  else
    redis.call('HDEL', KEYS[2], uuid)
    redis.call('ZREM', KEYS[3], uuid)
  end
end
return rev";

/// The summary and the asked members.
///
/// KEYS: 1 summary hash, 2 members hash. ARGV: the uuids.
/// Returns nil when there is no summary, else `{value, revision, {value or nil per uuid}}`.
pub const READ: &str = r"
local s = redis.call('HMGET', KEYS[1], 'v', 'r')
if not s[1] then
  return false
end
local values = {}
for i = 1, #ARGV do
  values[i] = redis.call('HGET', KEYS[2], ARGV[i])
end
return {s[1], s[2], values}";

/// The summary and every member, present or tombstoned.
///
/// KEYS: 1 summary hash, 2 members hash.
/// Returns nil when there is no summary, else `{value, revision, {uuid, value, …}}`.
pub const READ_ALL: &str = r"
local s = redis.call('HMGET', KEYS[1], 'v', 'r')
if not s[1] then
  return false
end
return {s[1], s[2], redis.call('HGETALL', KEYS[2])}";

/// One page of present members, by uuid.
///
/// KEYS: 1 summary hash, 2 present zset, 3 members hash. ARGV: 1 lower lex bound (`-` or
/// `(after`), 2 how many uuids to list (the page and one more, to know whether more follow),
/// 3 how many of them to fetch values for (the page).
/// Returns nil when there is no summary, else `{summary value, {uuid…}, {value…}}`.
pub const PAGE: &str = r"
local s = redis.call('HGET', KEYS[1], 'v')
if not s then
  return false
end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, ARGV[2])
local values = {}
for i = 1, math.min(#ids, tonumber(ARGV[3])) do
  values[i] = redis.call('HGET', KEYS[3], ids[i])
end
return {s, ids, values}";

/// The epoch, set to ARGV[1] first when missing. KEYS: 1 the epoch key.
pub const EPOCH: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]";
