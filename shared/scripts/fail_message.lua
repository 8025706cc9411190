#!lua
-- fail_message: the holder's handler failed on the conversation's head message. Counts the
-- attempt; at the limit (or when the record can never be handled) the message moves to the
-- shard's dead-letter list and the conversation goes on with its next message; otherwise the
-- conversation waits in `delayed` for an exponential backoff. Either way the turn ends.
-- A failure that was Redis's, not the message's (connection lost, timeout, cluster down) only
-- counts a strike: below `strike_cap` strikes in a row on the same message the conversation goes
-- back to the front of the line with no attempt counted; the strike that reaches the cap counts
-- one attempt (and starts a new series), so a message that deterministically breaks the
-- connection still ends in the dead letters instead of being requeued forever.
-- Returns {1, attempts, due_ms} retried later; {2, attempts} dead-lettered; {3, strikes}
-- requeued at the front, nothing counted; {0} fenced out or already failed by a retried call;
-- {-1} lease expired (the reaper counts that attempt); {-2} the message is not the head.
local meta_key = KEYS[1]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[2]   -- its message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local stats_key = KEYS[5]      -- the shard's counters
local leases_key = KEYS[6]     -- the shard's conversation -> lease deadline
local ready_key = KEYS[7]      -- the shard's claimable conversations
local delayed_key = KEYS[8]    -- the shard's conversation -> retry time
local dlq_key = KEYS[9]        -- the shard's dead letters
local fence_key = KEYS[10]     -- the shard's fencing counter
local token = ARGV[1]
local fence = ARGV[2]
local message_id = ARGV[3]
local error_text = ARGV[4]
local max_attempts = tonumber(ARGV[5])
local backoff_ms = tonumber(ARGV[6])
local backoff_max_ms = tonumber(ARGV[7])
local dead_now = ARGV[8] == '1'   -- terminal failure (an undecodable record): no retries
local strike_cap = tonumber(ARGV[9]) or 0   -- > 0: Redis's failure, not the message's
-- Dead letters kept per shard (newest first) and their longest age; the defaults are the
-- settings' (WSM_DEAD_LETTERS_MAX, WSM_DEAD_LETTER_DAYS).
local dlq_max = tonumber(ARGV[10]) or 10000
local dlq_max_age_ms = tonumber(ARGV[11]) or 30 * 86400000
--#include clock
--#include fence
--#include turn_end
--#include dead_letters

local meta = leased_meta(meta_key, fence, 'lease_until', 'strike', 'strikes')
if not meta then
  return {0}
end
local now_ms = redis_now_ms()
if tonumber(meta[3]) < now_ms then
  return {-1}
end
if redis.call('LINDEX', messages_key, -1) ~= message_id then
  return {-2}
end

redis.call('ZREM', leases_key, token)
redis.call('HDEL', meta_key, 'owner', 'lease_until')

if strike_cap > 0 and not dead_now then
  local strikes = 1
  if meta[4] == message_id then
    strikes = (tonumber(meta[5]) or 0) + 1
  end
  if strikes < strike_cap then
    redis.call('HSET', meta_key, 'state', 'ready', 'strike', message_id, 'strikes', strikes)
    redis.call('RPUSH', ready_key, token)
    return {3, strikes}
  end
  error_text = error_text .. ' (' .. strikes .. ' Redis errors in a row on this message)'
end
redis.call('HDEL', meta_key, 'strike', 'strikes')

local attempts = redis.call('HINCRBY', attempts_key, message_id, 1)

if dead_now or attempts >= max_attempts then
  local queue = {
    messages = messages_key, bodies = bodies_key, attempts = attempts_key, stats = stats_key,
    dlq = dlq_key, dlq_max = dlq_max, dlq_max_age_ms = dlq_max_age_ms,
  }
  bury_head(queue, token, message_id, error_text, attempts,
    dead_now and 'invalid' or 'failed', now_ms)
  -- The conversation goes on with its next message, at the back of the line.
  ready_or_idle(meta_key, messages_key, ready_key, token, false, fence_key, fence)
  return {2, attempts}
end

local delay = math.min(backoff_ms * 2 ^ (attempts - 1), backoff_max_ms)
local due = now_ms + math.floor(delay)
redis.call('HSET', meta_key, 'state', 'delayed')
redis.call('ZADD', delayed_key, due, token)
return {1, attempts, due}
