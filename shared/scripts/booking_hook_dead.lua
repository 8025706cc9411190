#!lua
-- booking_hook_dead: move a booking webhook event that will never be delivered to the dead
-- letters, only if its body is still pending. An erase (LGPD) removes the customer's pending
-- bodies: a delivery that was in flight meanwhile must not write the customer's name and
-- phone back into the dead letters afterwards. The list keeps the same limits as the queue's
-- and the outbox's dead letters (WSM_DEAD_LETTERS_MAX, WSM_DEAD_LETTER_DAYS; the newest at the
-- RIGHT): a business webhook that stays down must not fill Redis.
-- What the cap and the age drop is counted in `hooks_dropped`, as the queue's and the outbox's
-- drops are in their shards' stats, so `wsm dlq booking-webhook list` can say how many went.
-- Returns {moved, dropped}: moved 1 when dead-lettered, 0 when the body was gone (its due time
-- and attempts are dropped either way); dropped, the older dead letters the cap and age took.
local hooks_body = KEYS[1]
local hooks_dead = KEYS[2]
local hooks_due = KEYS[3]
local hooks_attempts = KEYS[4]
local hooks_dropped = KEYS[5]  -- the count of dead letters dropped (absent from older callers)
local event_id = ARGV[1]
local record = ARGV[2]        -- one line of JSON with the time it died (`at`, ms)
local now_ms = tonumber(ARGV[3])
local dlq_max = tonumber(ARGV[4])
local dlq_max_age_ms = tonumber(ARGV[5])
--#include dead_letters

local pending = redis.call('HEXISTS', hooks_body, event_id) == 1
redis.call('ZREM', hooks_due, event_id)
redis.call('HDEL', hooks_attempts, event_id)
if not pending then
  return {0, 0}
end
redis.call('HDEL', hooks_body, event_id)
local dropped = push_dead_letter(hooks_dead, record, 'right', dlq_max, dlq_max_age_ms, now_ms)
if dropped > 0 and hooks_dropped then
  redis.call('INCRBY', hooks_dropped, dropped)
end
return {1, dropped}
