#!lua
-- ack_message: the lease holder's commit of one handled message. Refused unless the caller's
-- fence is current and its lease has not run out; then applies the handler's writes and
-- removes the message, all in this one atomic step.
-- Returns 1 acked; 2 already acked (a retry whose first answer was lost); 0 fenced out (the
-- lease was taken away); -1 lease expired; -2 the message is not the conversation's head.
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

local meta = redis.call('HMGET', meta_key, 'fence', 'state', 'lease_until')
if meta[1] ~= fence or meta[2] ~= 'leased' then
  return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(meta[3]) < now_ms then
  return -1
end
if redis.call('LINDEX', messages_key, -1) ~= message_id then
  -- Only the lease holder removes messages, so a missing body under our own fence means our
  -- earlier call went through and its answer was lost.
  if redis.call('HEXISTS', bodies_key, message_id) == 0 then
    return 2
  end
  return -2
end

for _, write in ipairs(writes) do
  redis.call(write[1], write[2], unpack(ARGV, write[3], write[4]))
end
redis.call('RPOP', messages_key)
redis.call('HDEL', bodies_key, message_id)
redis.call('HDEL', attempts_key, message_id)
redis.call('HINCRBY', stats_key, 'waiting', -1)
return 1
