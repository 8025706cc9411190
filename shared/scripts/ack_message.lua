#!lua
-- ack_message: the lease holder's commit of one handled message. Refused unless the caller's
-- fence is current and its lease has not run out; then applies the handler's writes and
-- removes the message, all in this one atomic step.
-- Returns 1 acked; 2 already acked (a retry whose first answer was lost), lease still good;
-- 3 already acked, but the lease has run out or been taken back since (the work stands; the
-- turn must end); 0 fenced out (the lease was taken away); -1 lease expired; -2 the message is
-- not the conversation's head.
-- Each ack leaves `last_ack` = "<fence>:<message id>" in the meta: it is how a retry knows its
-- work was committed whatever happened to the lease since, and how the reaper knows the holder
-- was between messages (see reap_expired_lease.lua).
local meta_key = KEYS[1]       -- the conversation's state, fence, lease_until
local messages_key = KEYS[2]   -- its message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local stats_key = KEYS[5]      -- the shard's counters
-- KEYS[6..]: the keys the handler's writes touch (same hash tag, validated by the caller).
local fence = ARGV[1]
local message_id = ARGV[2]
-- ARGV[3..]: the writes, each as <command> <key index into KEYS> <argc> <arg>...

local FIRST_WRITE_KEY = 6
--#include clock
-- Plain single-key writes only: nothing that reads another key, blocks, or scripts.
local allowed = {
  SET = true, DEL = true, UNLINK = true, EXPIRE = true, PEXPIRE = true, PERSIST = true,
  INCR = true, INCRBY = true, DECR = true, DECRBY = true,
  HSET = true, HSETNX = true, HDEL = true, HINCRBY = true, HINCRBYFLOAT = true,
  LPUSH = true, RPUSH = true, LTRIM = true, LREM = true, LSET = true,
  SADD = true, SREM = true,
  ZADD = true, ZREM = true, ZINCRBY = true, ZREMRANGEBYSCORE = true,
  XADD = true, XTRIM = true, XDEL = true,
}

-- Check every write before touching anything: Redis does not roll back a script that fails
-- halfway, so a malformed write must stop the commit before its first effect.
local writes = {}
local i = 3
while i <= #ARGV do
  local command = ARGV[i]
  local key_index = tonumber(ARGV[i + 1])
  local argc = tonumber(ARGV[i + 2])
  if not allowed[command] or not key_index or key_index < FIRST_WRITE_KEY
      or key_index > #KEYS or not argc or argc < 0 or i + 2 + argc > #ARGV then
    return redis.error_reply('ERR wsm: invalid commit write at ARGV[' .. i .. ']')
  end
  writes[#writes + 1] = {command, KEYS[key_index], i + 3, i + 2 + argc}
  i = i + 3 + argc
end

local meta = redis.call('HMGET', meta_key, 'fence', 'state', 'lease_until', 'last_ack')
local now_ms = redis_now_ms()
local live = meta[1] == fence and meta[2] == 'leased' and (tonumber(meta[3]) or 0) >= now_ms

-- "Already acked" comes first: a retry whose first answer was lost must learn that its work
-- is committed even when the lease ran out (or was reaped) meanwhile. Reporting LeaseLost
-- there would drop committed work as lost and leave the lease to the reaper.
local acked = meta[4] == fence .. ':' .. message_id
if not acked and meta[1] == fence and meta[2] == 'leased'
    and redis.call('LINDEX', messages_key, -1) ~= message_id
    and redis.call('HEXISTS', bodies_key, message_id) == 0 then
  -- No marker (an ack by an older version): only the lease holder removes messages, so a
  -- missing body under our own lease means our earlier call went through.
  acked = true
end
if acked then
  return live and 2 or 3
end

if meta[1] ~= fence or meta[2] ~= 'leased' then
  return 0
end
if not live then
  return -1
end
if redis.call('LINDEX', messages_key, -1) ~= message_id then
  return -2
end

for _, write in ipairs(writes) do
  redis.call(write[1], write[2], unpack(ARGV, write[3], write[4]))
end
redis.call('RPOP', messages_key)
redis.call('HDEL', bodies_key, message_id)
redis.call('HDEL', attempts_key, message_id)
redis.call('HINCRBY', stats_key, 'waiting', -1)
redis.call('HSET', meta_key, 'last_ack', fence .. ':' .. message_id)
return 1
