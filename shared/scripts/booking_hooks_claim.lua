#!lua
-- booking_hooks_claim: take up to `limit` due webhook events for delivery. Claiming pushes
-- each event's due time `visibility_ms` ahead instead of removing it, so an event whose
-- deliverer dies is delivered again once that time passes (at least once; receivers dedupe
-- on the event id). Returns the claimed event ids.
local hooks_due = KEYS[1]
local now_ms = tonumber(ARGV[1])
local visibility_ms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])

local ids = redis.call('ZRANGEBYSCORE', hooks_due, '-inf', now_ms, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZADD', hooks_due, now_ms + visibility_ms, id)
end
return ids
