#!lua
-- erase_calendar: the LGPD erase's step on the calendar's hash tag for what BookingStore's
-- erase does not cover: booking-webhook events that failed every attempt (`hooks:dead`) keep
-- the customer's name and phone in their body, and the records of freed slots offered to the
-- customer (`freed_offers:<booking id>`, engine/agent/freed_slots.py) name them by a digest of
-- their conversation token (a pseudonym: trying phone numbers finds them again).
-- A dead letter goes when its customer is exactly this (session, chat id); a record loses
-- exactly the field that is this customer's digest (its other offers and `done` stay).
-- Returns how many entries went.
local dead_key = KEYS[1]
-- KEYS[2..]: the records of freed slots' offers, found by the caller's scan.
local session = ARGV[1]
local chat_id = ARGV[2]
local mark = ARGV[3]          -- the customer's digest in those records

local removed = 0
for _, entry in ipairs(redis.call('LRANGE', dead_key, 0, -1)) do
  local ok, value = pcall(cjson.decode, entry)
  local customer = ok and type(value) == 'table' and type(value['body']) == 'table'
    and value['body']['customer']
  if type(customer) == 'table' and customer['session'] == session
      and customer['chat_id'] == chat_id then
    removed = removed + redis.call('LREM', dead_key, 0, entry)
  end
end
for i = 2, #KEYS do
  removed = removed + redis.call('HDEL', KEYS[i], mark)
end
return removed
