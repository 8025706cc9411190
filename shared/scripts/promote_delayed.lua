#!lua
-- promote_delayed: a conversation whose retry backoff is over goes to the FRONT of the ready
-- list (its failed message is still its head and has already waited its turn).
-- Returns 1 promoted; 0 not due, or promoted already by another reaper.
local delayed_key = KEYS[1]    -- the shard's conversation -> retry time (ms)
local meta_key = KEYS[2]       -- the conversation's state
local messages_key = KEYS[3]   -- its message ids
local ready_key = KEYS[4]      -- the shard's claimable conversations (front at the right)
local token = ARGV[1]

local due = redis.call('ZSCORE', delayed_key, token)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if not due or tonumber(due) > now_ms then
  return 0
end
redis.call('ZREM', delayed_key, token)
if redis.call('HGET', meta_key, 'state') ~= 'delayed' then
  return 0
end
if redis.call('LLEN', messages_key) > 0 then
  redis.call('HSET', meta_key, 'state', 'ready')
  redis.call('RPUSH', ready_key, token)
else
  -- Idle: no meta (fences live in the shard's counter, see claim_conversation.lua).
  redis.call('DEL', meta_key)
end
return 1
