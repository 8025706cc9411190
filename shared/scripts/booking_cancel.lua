#!lua
-- booking_cancel: cancel one customer's booking and free its slots, atomically. Only the
-- booking's own customer can cancel it. Repeating a cancel changes nothing.
-- Returns {"cancelled"} | {"exists"} (already cancelled by this customer) | {"not_found"}.
local day_key = KEYS[1]
local booking_key = KEYS[2]
local customer_key = KEYS[3]
local hooks_due = KEYS[4]
local hooks_body = KEYS[5]
local booking_id = ARGV[1]
local customer = ARGV[2]
local now_ms = tonumber(ARGV[3])
local hook_id = ARGV[4]
local hook_body = ARGV[5]

if redis.call('HGET', booking_key, 'customer') ~= customer then
  return {'not_found'}
end
local status = redis.call('HGET', booking_key, 'status')
if status == 'cancelled' then
  return {'exists'}
end
if status ~= 'booked' then
  return {'not_found'}
end
local steps = redis.call('HGET', booking_key, 'steps') or ''
for step in string.gmatch(steps, '[^,]+') do
  if redis.call('HGET', day_key, step) == booking_id then
    redis.call('HDEL', day_key, step)
  end
end
redis.call('HSET', booking_key, 'status', 'cancelled', 'updated_at', now_ms)
redis.call('ZREM', customer_key, booking_id)
if hook_id ~= '' then
  redis.call('HSET', hooks_body, hook_id, hook_body)
  redis.call('ZADD', hooks_due, 'NX', now_ms, hook_id)
end
return {'cancelled'}
