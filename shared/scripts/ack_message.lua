#!lua
-- ack_message: the lease holder's commit of one handled message. Refused unless the caller's
-- fence is current and its lease has not run out; then applies the handler's writes and
-- removes the message, all in this one atomic step.
-- Returns ack_head's code (lib/ack.lua): 1 acked; 2 already acked (a retry whose first answer
-- was lost), lease still good; 3 already acked, but the lease has run out or been taken back
-- since (the work stands; the turn must end); 0 fenced out (the lease was taken away); -1 lease
-- expired; -2 the message is not the conversation's head.
-- KEYS[1..6]: the conversation's queue keys (ack_queue in lib/ack.lua).
-- KEYS[7..]: the keys the handler's writes touch (same hash tag, validated by the caller).
local fence = ARGV[1]
local message_id = ARGV[2]
-- ARGV[3..]: the writes, each as <command> <key index into KEYS> <argc> <arg>...

local FIRST_WRITE_KEY = 7
--#include clock
--#include ack
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

local function apply_writes()
  for _, write in ipairs(writes) do
    redis.call(write[1], write[2], unpack(ARGV, write[3], write[4]))
  end
end

return ack_head(ack_queue(), fence, message_id, redis_now_ms(), apply_writes)
