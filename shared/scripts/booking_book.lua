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

local mine = 0
for i = 1, step_count do
  local holder = redis.call('HGET', day_key, steps[i])
  if holder == booking_id then
    mine = mine + 1
  elseif holder then
    return {'taken'}
  end
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
redis.call('ZADD', customer_key, start_ms, booking_id)
redis.call('ZADD', everything_key, start_ms, booking_id)
redis.call('EXPIREAT', day_key, expire_at)
redis.call('EXPIREAT', booking_key, expire_at)
-- GT never shortens an index's life for an earlier booking; a key without a TTL counts as
-- infinite for GT, so a new index gets its first TTL without it.
for _, index_key in ipairs({customer_key, everything_key}) do
  if redis.call('TTL', index_key) < 0 then
    redis.call('EXPIREAT', index_key, expire_at)
  else
    redis.call('EXPIREAT', index_key, expire_at, 'GT')
  end
end
if hook_id ~= '' then
  redis.call('HSET', hooks_body, hook_id, hook_body)
  redis.call('ZADD', hooks_due, 'NX', now_ms, hook_id)
end
return {'booked'}
