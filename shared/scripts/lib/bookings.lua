-- lib/bookings: a booking holds every grid slot of its service at its start (a day's HASH
-- "HH:MM" -> booking id) and is listed in the customer's indexes (ZSET id -> start ms).

-- slots_held(day_key, steps, booking_id): how many of `steps` this booking holds already, and
-- whether another booking holds one of them.
local function slots_held(day_key, steps, booking_id)
  local mine = 0
  for i = 1, #steps do
    local holder = redis.call('HGET', day_key, steps[i])
    if holder == booking_id then
      mine = mine + 1
    elseif holder then
      return mine, true
    end
  end
  return mine, false
end

-- free_slots(day_key, steps, booking_id): let go of the slots among `steps` this booking holds.
local function free_slots(day_key, steps, booking_id)
  for _, step in ipairs(steps) do
    if redis.call('HGET', day_key, step) == booking_id then
      redis.call('HDEL', day_key, step)
    end
  end
end

-- index_booking(booking_id, start_ms, expire_at, day_key, booking_key, customer_key,
-- everything_key): list the booking at its start in the customer's indexes; a day's keys all
-- expire a retention after that day (`expire_at`, unix seconds): the same time for every
-- booking in it. GT never shortens an index's life for an earlier booking; a key without a TTL
-- counts as infinite for GT, so a new index gets its first TTL without it.
local function index_booking(booking_id, start_ms, expire_at, day_key, booking_key, customer_key,
                             everything_key)
  redis.call('ZADD', customer_key, start_ms, booking_id)
  redis.call('ZADD', everything_key, start_ms, booking_id)
  redis.call('EXPIREAT', day_key, expire_at)
  redis.call('EXPIREAT', booking_key, expire_at)
  for _, index_key in ipairs({customer_key, everything_key}) do
    if redis.call('TTL', index_key) < 0 then
      redis.call('EXPIREAT', index_key, expire_at)
    else
      redis.call('EXPIREAT', index_key, expire_at, 'GT')
    end
  end
end

-- queue_hook(hooks_body, hooks_due, hook_id, hook_body, now_ms): queue the business's webhook
-- event for this change, once (hook_id is "" when no webhook is configured).
local function queue_hook(hooks_body, hooks_due, hook_id, hook_body, now_ms)
  if hook_id ~= '' then
    redis.call('HSET', hooks_body, hook_id, hook_body)
    redis.call('ZADD', hooks_due, 'NX', now_ms, hook_id)
  end
end
