#!lua
-- booking_book: take every grid slot of a service at one start for one customer, atomically.
-- Two customers booking the same slot at the same moment: the first script to run takes it,
-- the second finds it taken. Repeating a booking (a message redelivered after a crash) finds
-- the slots held by the same booking id and changes nothing.
-- Returns {"booked"} | {"exists"} | {"taken"} | {"limit", active}.
local day_key = KEYS[1]        -- HASH "HH:MM" -> booking id, for the slot's day
local booking_key = KEYS[2]    -- HASH the booking
local customer_key = KEYS[3]   -- ZSET the customer's booked appointments: id -> start ms
local everything_key = KEYS[4] -- ZSET every booking of the customer (found again to erase)
local hooks_due = KEYS[5]      -- ZSET webhook event id -> due ms
local hooks_body = KEYS[6]     -- HASH webhook event id -> body
local reminders_key = KEYS[7]  -- ZSET booking id -> reminder due ms (optional; the booking's
                               -- `reminder_at` field, 0 for none, says when)
local booking_id = ARGV[1]
local now_ms = tonumber(ARGV[2])
local start_ms = tonumber(ARGV[3])
local max_active = tonumber(ARGV[4])
local expire_at = tonumber(ARGV[5])    -- unix seconds: a retention after the slot's day
local keep_from_ms = tonumber(ARGV[6]) -- customer index entries older than this are dropped
local hook_id = ARGV[7]                -- "" when no webhook is configured
local hook_body = ARGV[8]
local step_count = tonumber(ARGV[9])
local steps = {}
for i = 1, step_count do steps[i] = ARGV[9 + i] end
local fields_at = 10 + step_count      -- the booking's field/value pairs follow
--#include bookings

local mine, taken = slots_held(day_key, steps, booking_id)
if taken then
  return {'taken'}
end
if mine == step_count then
  return {'exists'}
end

redis.call('ZREMRANGEBYSCORE', customer_key, '-inf', '(' .. keep_from_ms)
redis.call('ZREMRANGEBYSCORE', everything_key, '-inf', '(' .. keep_from_ms)
local active = redis.call('ZCOUNT', customer_key, now_ms, '+inf')
if active >= max_active then
  return {'limit', active}
end

for i = 1, step_count do
  redis.call('HSET', day_key, steps[i], booking_id)
end
for i = fields_at, #ARGV, 2 do
  redis.call('HSET', booking_key, ARGV[i], ARGV[i + 1])
end
index_booking(booking_id, start_ms, expire_at, day_key, booking_key, customer_key, everything_key)
queue_hook(hooks_body, hooks_due, hook_id, hook_body, now_ms)
if reminders_key then
  local reminder_at = tonumber(redis.call('HGET', booking_key, 'reminder_at')) or 0
  if reminder_at > 0 then
    redis.call('ZADD', reminders_key, reminder_at, booking_id)
  end
end
return {'booked'}
