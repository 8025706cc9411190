#!lua
-- ack_messages: the lease holder's acks of several handled messages that committed nothing,
-- oldest first, in one call (QueueConsumer.ack_later). Each message is acked exactly as
-- ack_message.lua acks one without writes: fenced, within the lease, only as the head, and
-- "already acked" first, so repeating a call whose answer was lost is safe.
-- Returns one code per message id, in order, with ack_message.lua's meanings (1 acked; 2 or 3
-- already acked; 0 fenced out; -1 lease expired; -2 not the head); it stops at the first
-- refusal (0, -1, -2), which is then the last code: the messages after it stay queued.
local meta_key = KEYS[1]       -- the conversation's state, fence, lease_until
local messages_key = KEYS[2]   -- its message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local stats_key = KEYS[5]      -- the shard's counters
local fence = ARGV[1]
-- ARGV[2..]: the message ids, oldest first.
--#include clock

local now_ms = redis_now_ms()
local codes = {}
for i = 2, #ARGV do
  local message_id = ARGV[i]
  local meta = redis.call('HMGET', meta_key, 'fence', 'state', 'lease_until', 'last_ack')
  local live = meta[1] == fence and meta[2] == 'leased' and (tonumber(meta[3]) or 0) >= now_ms
  local acked = meta[4] == fence .. ':' .. message_id
  if not acked and meta[1] == fence and meta[2] == 'leased'
      and redis.call('LINDEX', messages_key, -1) ~= message_id
      and redis.call('HEXISTS', bodies_key, message_id) == 0 then
    -- Gone from under our own lease: an earlier call of ours removed it (see ack_message.lua).
    acked = true
  end
  local code
  if acked then
    code = live and 2 or 3
  elseif meta[1] ~= fence or meta[2] ~= 'leased' then
    code = 0
  elseif not live then
    code = -1
  elseif redis.call('LINDEX', messages_key, -1) ~= message_id then
    code = -2
  else
    redis.call('RPOP', messages_key)
    redis.call('HDEL', bodies_key, message_id)
    redis.call('HDEL', attempts_key, message_id)
    redis.call('HINCRBY', stats_key, 'waiting', -1)
    redis.call('HSET', meta_key, 'last_ack', fence .. ':' .. message_id)
    code = 1
  end
  codes[#codes + 1] = code
  if code <= 0 then
    break
  end
end
return codes
