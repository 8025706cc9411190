#!lua
-- promote_delayed: a conversation whose retry backoff is over goes to the FRONT of the ready
-- list (its failed message is still its head and has already waited its turn).
-- Returns 1 promoted; 0 not due, or promoted already by another reaper.
local delayed_key = KEYS[1]    -- the shard's conversation -> retry time (ms)
local meta_key = KEYS[2]       -- the conversation's state
local messages_key = KEYS[3]   -- its message ids
local ready_key = KEYS[4]      -- the shard's claimable conversations (front at the right)
local token = ARGV[1]
--#include clock
--#include turn_end

local due = redis.call('ZSCORE', delayed_key, token)
local now_ms = redis_now_ms()
if not due or tonumber(due) > now_ms then
  return 0
end
redis.call('ZREM', delayed_key, token)
if redis.call('HGET', meta_key, 'state') ~= 'delayed' then
  return 0
end
-- At the front; idle, no meta (fences live in the shard's counter, see lib/fence.lua).
ready_or_idle(meta_key, messages_key, ready_key, token, true)
return 1
