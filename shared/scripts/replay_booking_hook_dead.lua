#!lua
-- replay_booking_hook_dead: put booking webhook events back from the dead letters
-- (booking_hook_dead.lua) among the pending events, due now, in the order given (oldest
-- first), with fresh attempts: the workers' deliverer (engine/agent/booking_webhook.py) sends
-- each as it sends any event, under its own id (receivers deduplicate on it). In the same step
-- each dead letter leaves the list, so a repeated replay finds it gone and stores nothing: an
-- event is never put back twice.
-- A letter is refused (it stays, nothing of it is stored) when:
--   no_booking  its booking is no longer kept: its customer was erased (the erase deletes the
--               bookings before the dead letters, so a replay between the two would bring the
--               customer's name and phone back), or it expired past the bookings' retention;
--   pending     an event of that id is pending already (or the same event is given twice);
--   invalid     the entry cannot be read.
-- Returns, for each letter given, in order: 'replayed', 'gone' (no longer in the list:
-- replayed, dropped or erased meanwhile, or given twice) or the refusal's code above.
local dead_key = KEYS[1]      -- the dead letters (JSON, oldest at the left)
local body_key = KEYS[2]      -- pending event id -> the body to send
local due_key = KEYS[3]       -- pending event id -> when to (re)deliver (ms)
local attempts_key = KEYS[4]  -- pending event id -> deliveries tried
-- KEYS[5..]: each letter's booking, in the letters' order.
local now_ms = tonumber(ARGV[1])  -- the deliverers' clock
-- ARGV[2..]: for each letter, its entry exactly as stored then the body to send (its `body`,
-- encoded as it was sent: cjson would reorder it).

local function verdict_of(letter, booking_key)
  if type(letter) ~= 'table' or type(letter['id']) ~= 'string' or letter['id'] == ''
      or type(letter['body']) ~= 'table' or type(letter['body']['booking']) ~= 'table'
      or type(letter['body']['booking']['id']) ~= 'string' then
    return 'invalid'
  end
  if redis.call('EXISTS', booking_key) == 0 then
    return 'no_booking'
  end
  if redis.call('HEXISTS', body_key, letter['id']) == 1 then
    return 'pending'
  end
  return 'replayed'
end

local results = {}
local replayed = {}
local given = {}     -- entries looked at already: one given twice goes back once
local accepted = {}  -- event ids going back: two letters of one event put it back once
for n = 1, (#ARGV - 1) / 2 do
  local raw = ARGV[2 * n]
  local verdict = 'gone'
  if not given[raw] and redis.call('LPOS', dead_key, raw) then
    local ok, letter = pcall(cjson.decode, raw)
    verdict = verdict_of(ok and letter or nil, KEYS[4 + n])
    if verdict == 'replayed' then
      if accepted[letter['id']] then
        verdict = 'pending'  -- what it is about to be
      end
      accepted[letter['id']] = true
    end
    if verdict == 'replayed' then
      replayed[#replayed + 1] = {raw, letter['id'], ARGV[2 * n + 1]}
    end
  end
  given[raw] = true
  results[#results + 1] = verdict
end

-- Nothing is written before every letter was looked at.
for _, event in ipairs(replayed) do
  redis.call('LREM', dead_key, 1, event[1])
  redis.call('HSET', body_key, event[2], event[3])
  redis.call('HDEL', attempts_key, event[2])
  -- Due now, never later than it was (LT adds an absent member).
  redis.call('ZADD', due_key, 'LT', now_ms, event[2])
end
return results
