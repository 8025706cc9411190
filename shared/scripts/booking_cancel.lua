#!lua
-- booking_cancel: cancel one customer's booking and free its slots, atomically. Only the
-- booking's own customer can cancel it. Repeating a cancel changes nothing.
-- Returns {"cancelled"} | {"exists"} (already cancelled by this customer) | {"not_found"}.
local day_key = KEYS[1]
local booking_key = KEYS[2]
local customer_key = KEYS[3]
local hooks_due = KEYS[4]
local hooks_body = KEYS[5]
local reminders_key = KEYS[6]  -- ZSET booking id -> reminder due ms (optional)
local booking_id = ARGV[1]
local customer = ARGV[2]
local now_ms = tonumber(ARGV[3])
local hook_id = ARGV[4]
local hook_body = ARGV[5]
--#include bookings

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
local steps = {}
for step in string.gmatch(redis.call('HGET', booking_key, 'steps') or '', '[^,]+') do
  steps[#steps + 1] = step
end
free_slots(day_key, steps, booking_id)
redis.call('HSET', booking_key, 'status', 'cancelled', 'updated_at', now_ms)
redis.call('ZREM', customer_key, booking_id)
queue_hook(hooks_body, hooks_due, hook_id, hook_body, now_ms)
if reminders_key then
  redis.call('ZREM', reminders_key, booking_id)
end
return {'cancelled'}
