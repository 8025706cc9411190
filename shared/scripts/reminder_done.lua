#!lua
-- reminder_done: forget a booking's reminder timer once it is queued (or found stale), but only
-- if it is still the timer the caller saw: a booking moved meanwhile has a new due time, and
-- that one must stay. Returns 1 when removed.
local reminders_key = KEYS[1]  -- ZSET booking id -> due ms
local booking_id = ARGV[1]
local due = ARGV[2]
local score = redis.call('ZSCORE', reminders_key, booking_id)
if score and tonumber(score) == tonumber(due) then
  return redis.call('ZREM', reminders_key, booking_id)
end
return 0
