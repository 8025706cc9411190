#!lua
-- erase_calendar: the LGPD erase's step on the calendar's hash tag for what BookingStore's
-- erase does not cover: booking-webhook events that failed every attempt (`hooks:dead`) keep
-- the customer's name and phone in their body. An entry goes when its customer is exactly
-- this (session, chat id).
-- Returns how many entries went.
local dead_key = KEYS[1]
local session = ARGV[1]
local chat_id = ARGV[2]

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
return removed
