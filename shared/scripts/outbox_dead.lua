#!lua
-- outbox_dead: WAHA refused a reply for good (a 4xx other than 422), or it ran out of attempts.
-- Moves it from the head of the outbox to the shard's outbox dead-letter list with WAHA's
-- answer, and marks it failed in the history. The conversation's next reply goes on.
-- Returns 1 moved; 0 the head is another reply (a repeat).
local outbox_key = KEYS[1]
local dlq_key = KEYS[2]
local meta_key = KEYS[3]
local pending_key = KEYS[4]
local mid = ARGV[1]
local token = ARGV[2]
local reason = ARGV[3]        -- JSON: {status, answer, error}
local now_ms = tonumber(ARGV[4])

local head = redis.call('LINDEX', outbox_key, 0)
if not head or cjson.decode(head)['mid'] ~= mid then
  return 0
end
redis.call('LPOP', outbox_key)
redis.call('RPUSH', dlq_key, cjson.encode({
  conversation = token, entry = cjson.decode(head), reason = cjson.decode(reason), at = now_ms,
}))
redis.call('HSET', meta_key, mid .. ':status', 'failed')
if redis.call('LLEN', outbox_key) == 0 then
  redis.call('ZREM', pending_key, token)
end
return 1
