#!lua
-- booking_hook_dead: move a booking webhook event that will never be delivered to the dead
-- letters, only if its body is still pending. An erase (LGPD) removes the customer's pending
-- bodies: a delivery that was in flight meanwhile must not write the customer's name and
-- phone back into the dead letters afterwards. Returns 1 when dead-lettered, 0 when the body
-- was gone (its due time and attempts are dropped either way).
local hooks_body = KEYS[1]
local hooks_dead = KEYS[2]
local hooks_due = KEYS[3]
local hooks_attempts = KEYS[4]
local event_id = ARGV[1]
local record = ARGV[2]

local pending = redis.call('HEXISTS', hooks_body, event_id) == 1
redis.call('ZREM', hooks_due, event_id)
redis.call('HDEL', hooks_attempts, event_id)
if not pending then
  return 0
end
redis.call('HDEL', hooks_body, event_id)
redis.call('RPUSH', hooks_dead, record)
return 1
