#!lua
-- reap_expired_lease: take back a conversation whose holder let its lease run out (crashed,
-- paused, partitioned). Bumps the fence so the old holder can no longer ack, commit, extend or
-- release; counts an attempt on the head message (a message that kills its workers ends in the
-- dead-letter list); puts the conversation at the FRONT of the ready list, so its message is
-- handled again first, within a lease plus a reaper interval of the crash.
-- Safe under concurrent reapers: only the one that still finds the deadline past acts.
-- Returns {1, dead} reaped (dead = 1 when the head went to the dead letters); {0} nothing to do.
local leases_key = KEYS[1]     -- the shard's conversation -> lease deadline
local meta_key = KEYS[2]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[3]   -- its message ids, oldest at the right
local bodies_key = KEYS[4]     -- message id -> record
local attempts_key = KEYS[5]   -- message id -> attempts so far
local stats_key = KEYS[6]      -- the shard's counters
local ready_key = KEYS[7]      -- the shard's claimable conversations (front at the right)
local dlq_key = KEYS[8]        -- the shard's dead letters
local token = ARGV[1]
local max_attempts = tonumber(ARGV[2])

local deadline = redis.call('ZSCORE', leases_key, token)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if not deadline or tonumber(deadline) >= now_ms then
  return {0}
end
redis.call('ZREM', leases_key, token)
if redis.call('HGET', meta_key, 'state') ~= 'leased' then
  return {0}
end
redis.call('HINCRBY', meta_key, 'fence', 1)
redis.call('HDEL', meta_key, 'owner', 'lease_until')
redis.call('HINCRBY', stats_key, 'redeliveries', 1)

local dead = 0
local head = redis.call('LINDEX', messages_key, -1)
if head then
  local attempts = redis.call('HINCRBY', attempts_key, head, 1)
  if attempts >= max_attempts then
    local header = cjson.encode({
      v = 1, id = head, conversation = token,
      error = 'lease expired ' .. attempts .. ' times: the worker died or stalled on it',
      attempts = attempts, at = now_ms, reason = 'lease_expired',
    })
    local record = redis.call('HGET', bodies_key, head) or ''
    redis.call('LPUSH', dlq_key, header .. '\n' .. record)
    redis.call('RPOP', messages_key)
    redis.call('HDEL', bodies_key, head)
    redis.call('HDEL', attempts_key, head)
    redis.call('HINCRBY', stats_key, 'waiting', -1)
    dead = 1
  end
end
if redis.call('LLEN', messages_key) > 0 then
  redis.call('HSET', meta_key, 'state', 'ready')
  redis.call('RPUSH', ready_key, token)
else
  redis.call('HSET', meta_key, 'state', 'idle')
end
return {1, dead}
