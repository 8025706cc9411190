#!lua
-- fail_message: the holder's handler failed on the conversation's head message. Counts the
-- attempt; at the limit (or when the record can never be handled) the message moves to the
-- shard's dead-letter list and the conversation goes on with its next message; otherwise the
-- conversation waits in `delayed` for an exponential backoff. Either way the turn ends.
-- Returns {1, attempts, due_ms} retried later; {2, attempts} dead-lettered; {0} fenced out or
-- already failed by a retried call; {-1} lease expired (the reaper counts that attempt);
-- {-2} the message is not the head.
local meta_key = KEYS[1]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[2]   -- its message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local stats_key = KEYS[5]      -- the shard's counters
local leases_key = KEYS[6]     -- the shard's conversation -> lease deadline
local ready_key = KEYS[7]      -- the shard's claimable conversations
local delayed_key = KEYS[8]    -- the shard's conversation -> retry time
local dlq_key = KEYS[9]        -- the shard's dead letters
local token = ARGV[1]
local fence = ARGV[2]
local message_id = ARGV[3]
local error_text = ARGV[4]
local max_attempts = tonumber(ARGV[5])
local backoff_ms = tonumber(ARGV[6])
local backoff_max_ms = tonumber(ARGV[7])
local dead_now = ARGV[8] == '1'   -- terminal failure (an undecodable record): no retries

local meta = redis.call('HMGET', meta_key, 'fence', 'state', 'lease_until')
if meta[1] ~= fence or meta[2] ~= 'leased' then
  return {0}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(meta[3]) < now_ms then
  return {-1}
end
if redis.call('LINDEX', messages_key, -1) ~= message_id then
  return {-2}
end

local attempts = redis.call('HINCRBY', attempts_key, message_id, 1)
redis.call('ZREM', leases_key, token)
redis.call('HDEL', meta_key, 'owner', 'lease_until')

if dead_now or attempts >= max_attempts then
  -- A dead letter is one JSON line (what happened) then the record byte for byte, like the
  -- queued record itself: the raw WAHA body never goes through a JSON encoder.
  local header = cjson.encode({
    v = 1, id = message_id, conversation = token, error = error_text,
    attempts = attempts, at = now_ms, reason = dead_now and 'invalid' or 'failed',
  })
  local record = redis.call('HGET', bodies_key, message_id) or ''
  redis.call('LPUSH', dlq_key, header .. '\n' .. record)
  redis.call('RPOP', messages_key)
  redis.call('HDEL', bodies_key, message_id)
  redis.call('HDEL', attempts_key, message_id)
  redis.call('HINCRBY', stats_key, 'waiting', -1)
  if redis.call('LLEN', messages_key) > 0 then
    redis.call('HSET', meta_key, 'state', 'ready')
    redis.call('LPUSH', ready_key, token)
  else
    redis.call('HSET', meta_key, 'state', 'idle')
  end
  return {2, attempts}
end

local delay = math.min(backoff_ms * 2 ^ (attempts - 1), backoff_max_ms)
local due = now_ms + math.floor(delay)
redis.call('HSET', meta_key, 'state', 'delayed')
redis.call('ZADD', delayed_key, due, token)
return {1, attempts, due}
