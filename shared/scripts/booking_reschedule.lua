#!lua
-- booking_reschedule: move one customer's booking to a new start, atomically: the new slots
-- are taken and the old ones freed in one step, or nothing changes. Only the booking's own
-- customer can move it, and only from the start the caller saw (a concurrent change wins).
-- Returns {"moved"} | {"exists"} (already at that start: a repeat) | {"taken"} |
--         {"not_found"} (absent, cancelled, or someone else's: never told apart) | {"changed"}.
local old_day_key = KEYS[1]    -- HASH of the booking's current day
local new_day_key = KEYS[2]    -- HASH of the new day (may be the same key)
local booking_key = KEYS[3]
local customer_key = KEYS[4]
local everything_key = KEYS[5]
local hooks_due = KEYS[6]
local hooks_body = KEYS[7]
local reminders_key = KEYS[8]  -- ZSET booking id -> reminder due ms (optional)
local booking_id = ARGV[1]
local customer = ARGV[2]
local expected_start = ARGV[3]
local new_start = ARGV[4]
local new_start_ms = tonumber(ARGV[5])
local now_ms = tonumber(ARGV[6])
local expire_at = tonumber(ARGV[7])
local hook_id = ARGV[8]
local hook_body = ARGV[9]
local new_day = ARGV[10]
local old_count = tonumber(ARGV[11])
local old_steps = {}
for i = 1, old_count do old_steps[i] = ARGV[11 + i] end
local new_count = tonumber(ARGV[12 + old_count])
local new_steps = {}
for i = 1, new_count do new_steps[i] = ARGV[12 + old_count + i] end
-- After the new steps: when the moved booking's reminder is due (0: none, inside the lead).
local reminder_at = tonumber(ARGV[13 + old_count + new_count]) or 0
--#include bookings

local owner = redis.call('HGET', booking_key, 'customer')
local status = redis.call('HGET', booking_key, 'status')
if owner ~= customer or status ~= 'booked' then
  return {'not_found'}
end
local current = redis.call('HGET', booking_key, 'start')
if current == new_start then
  return {'exists'}
end
if current ~= expected_start then
  return {'changed'}
end
local _, taken = slots_held(new_day_key, new_steps, booking_id)
if taken then
  return {'taken'}
end

free_slots(old_day_key, old_steps, booking_id)
for i = 1, new_count do
  redis.call('HSET', new_day_key, new_steps[i], booking_id)
end
redis.call('HSET', booking_key, 'start', new_start, 'start_ms', new_start_ms, 'day', new_day,
  'steps', table.concat(new_steps, ','), 'updated_at', now_ms)
index_booking(booking_id, new_start_ms, expire_at, new_day_key, booking_key, customer_key,
  everything_key)
queue_hook(hooks_body, hooks_due, hook_id, hook_body, now_ms)
if reminders_key then
  -- The reminder moves with the booking (or goes, when the new start is inside the lead).
  redis.call('HSET', booking_key, 'reminder_at', reminder_at)
  if reminder_at > 0 then
    redis.call('ZADD', reminders_key, reminder_at, booking_id)
  else
    redis.call('ZREM', reminders_key, booking_id)
  end
end
return {'moved'}
