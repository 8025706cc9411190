#!lua
-- claim_conversation: take the lease on a conversation the caller has just moved from its
-- shard's `ready` list to `claimed` (BLMOVE/LMOVE, outside any script: a script cannot block),
-- and read its oldest messages.
-- Returns nil when the conversation is not ours to lease (the reaper handed the token back
-- before we got here); {} when it has no messages (it becomes idle: its meta is deleted); else
-- {fence, lease_until_ms, id1, record1, attempts1, id2, ...}, oldest message first.
local claimed_key = KEYS[1]    -- the shard's popped-but-not-leased tokens
local leases_key = KEYS[2]     -- the shard's conversation -> lease deadline
local meta_key = KEYS[3]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[4]   -- its message ids, oldest at the right
local bodies_key = KEYS[5]     -- message id -> record
local attempts_key = KEYS[6]   -- message id -> attempts so far
local fence_key = KEYS[7]      -- the shard's fencing counter
local token = ARGV[1]          -- the conversation token
local owner = ARGV[2]          -- unique per claim attempt (a retried call recognises itself)
local lease_ms = tonumber(ARGV[3])
local max_messages = tonumber(ARGV[4])
--#include clock
--#include fence

local function read_head(fence, lease_until)
  local ids = redis.call('LRANGE', messages_key, -max_messages, -1)
  local reply = {fence, lease_until}
  if #ids == 0 then
    return reply
  end
  local records = redis.call('HMGET', bodies_key, unpack(ids))
  local attempts = redis.call('HMGET', attempts_key, unpack(ids))
  -- LRANGE lists newest..oldest; hand them out oldest first.
  for i = #ids, 1, -1 do
    reply[#reply + 1] = ids[i]
    reply[#reply + 1] = records[i]
    reply[#reply + 1] = attempts[i] or '0'
  end
  return reply
end

if redis.call('LREM', claimed_key, 1, token) == 0 then
  -- Gone from `claimed`: either the reaper took it back (someone else may lease it now), or
  -- this is a retry of our own call whose answer was lost, and the lease is already ours.
  local state, current_owner, fence, lease_until =
    unpack(redis.call('HMGET', meta_key, 'state', 'owner', 'fence', 'lease_until'))
  if state == 'leased' and current_owner == owner then
    return read_head(fence, lease_until)
  end
  return nil
end

-- Never two leases: a token in `claimed` is never leased, but refuse rather than trust it.
if redis.call('HGET', meta_key, 'state') == 'leased' then
  return nil
end
if redis.call('LLEN', messages_key) == 0 then
  -- Idle: a conversation with nothing queued and no lease keeps no meta. Deleting it is safe
  -- because fences come from the shard's counter, which a deleted meta cannot lower; a fence
  -- written by an older version is carried into the counter first.
  keep_fence(fence_key, redis.call('HGET', meta_key, 'fence'))
  redis.call('DEL', meta_key)
  return {}
end

-- A new fence for every lease (lib/fence.lua), never below the meta's own.
local fence = draw_fence(fence_key, redis.call('HGET', meta_key, 'fence'))
redis.call('HSET', meta_key, 'fence', fence)
local lease_until = redis_now_ms() + lease_ms
redis.call('HSET', meta_key, 'state', 'leased', 'owner', owner, 'lease_until', lease_until)
redis.call('ZADD', leases_key, lease_until, token)
return read_head(fence, lease_until)
