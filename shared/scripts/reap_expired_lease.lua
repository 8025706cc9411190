#!lua
-- reap_expired_lease: take back a conversation whose holder let its lease run out (crashed,
-- paused, partitioned). Bumps the fence so the old holder can no longer ack, commit, extend or
-- release; counts an attempt on the head message (a message that kills its workers ends in the
-- dead-letter list); puts the conversation at the FRONT of the ready list, so its message is
-- handled again first, within a lease plus a reaper interval of the crash.
-- No attempt is counted when the holder acked a message under this very lease: the head is
-- then a message it may never have started (its ack's answer was lost, or it died between two
-- messages), and charging it would be charging an attempt it never had. A message that does
-- kill its worker is the first of its next lease, and is charged from then on. That last ack
-- is kept apart for a while (KEYS[10]): the holder may retry it, its answer lost, after the meta
-- that recorded it is gone (lib/ack.lua).
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
local fence_key = KEYS[9]      -- the shard's fencing counter
local reaped_key = KEYS[10]    -- the conversation's last ack under the lease taken back
local token = ARGV[1]
local max_attempts = tonumber(ARGV[2])
-- Dead letters kept per shard (newest first) and their longest age; the defaults are the
-- settings' (WSM_DEAD_LETTERS_MAX, WSM_DEAD_LETTER_DAYS).
local dlq_max = tonumber(ARGV[3]) or 10000
local dlq_max_age_ms = tonumber(ARGV[4]) or 30 * 86400000
-- How long that last ack is kept for the old holder's retry (QueueReaper.REAPED_ACK_MS).
local reaped_ack_ms = tonumber(ARGV[5]) or 600000
--#include clock
--#include fence
--#include turn_end
--#include dead_letters

local deadline = redis.call('ZSCORE', leases_key, token)
local now_ms = redis_now_ms()
if not deadline or tonumber(deadline) >= now_ms then
  return {0}
end
redis.call('ZREM', leases_key, token)
local meta = redis.call('HMGET', meta_key, 'state', 'fence', 'last_ack')
if meta[1] ~= 'leased' then
  return {0}
end
local old_fence = meta[2] or '0'
local between_messages = meta[3] ~= false
  and string.sub(meta[3], 1, #old_fence + 1) == old_fence .. ':'
-- The new fence comes from the shard's counter (never below the old one), like a claim's.
if between_messages then
  -- The old holder may still be retrying that ack, its answer lost; the meta that records it
  -- is deleted below when no message is left, and overwritten by the next holder's acks.
  redis.call('SET', reaped_key, meta[3], 'PX', reaped_ack_ms)
end
local fence = draw_fence(fence_key, old_fence)
redis.call('HSET', meta_key, 'fence', fence)
redis.call('HDEL', meta_key, 'owner', 'lease_until')
redis.call('HINCRBY', stats_key, 'redeliveries', 1)

local dead = 0
local head = redis.call('LINDEX', messages_key, -1)
if head and not between_messages then
  local attempts = redis.call('HINCRBY', attempts_key, head, 1)
  if attempts >= max_attempts then
    local queue = {
      messages = messages_key, bodies = bodies_key, attempts = attempts_key, stats = stats_key,
      dlq = dlq_key, dlq_max = dlq_max, dlq_max_age_ms = dlq_max_age_ms,
    }
    bury_head(queue, token, head,
      'lease expired ' .. attempts .. ' times: the worker died or stalled on it',
      attempts, 'lease_expired', now_ms)
    dead = 1
  end
end
-- At the front; idle, the fence just drawn is in the counter already.
ready_or_idle(meta_key, messages_key, ready_key, token, true)
return {1, dead}
