#!lua
-- erase_session: the LGPD erase's step on the WAHA session's hash tag: the marker of a send
-- under way to the chat, and the cached lid -> phone lookups of this customer (the lid that is
-- the chat itself, and every lid the cache maps to the customer's phone number).
-- Each lid key (found by the caller's scan) is checked here again: deleted only when it is the
-- chat's own or maps to exactly this phone number, never on a partial match.
-- Returns how many keys went.
local inflight_key = KEYS[1]
-- KEYS[2..]: candidate lid keys.
local phone = ARGV[1]         -- the customer's digits ('' when unknown)
local own_lid_key = ARGV[2]   -- the chat's own lid key ('' when the chat is not a lid)

local removed = redis.call('DEL', inflight_key)
for i = 2, #KEYS do
  local key = KEYS[i]
  if key == own_lid_key or (phone ~= '' and redis.call('GET', key) == phone) then
    removed = removed + redis.call('DEL', key)
  end
end
return removed
