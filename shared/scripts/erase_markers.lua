#!lua
-- erase_markers: the LGPD erase deletes the conversation's dedupe markers (their WhatsApp ids
-- name the chat), found by the caller's scan while the erase holds the conversation's lease.
-- The caller leaves out the markers of messages queued during the erase: those are new
-- messages, and their markers keep a repeat of them from being queued twice.
-- Returns how many went, or -1 when the lease is not the erase's any more (reaped): nothing
-- is deleted then, the erase must be repeated.
local meta_key = KEYS[1]
-- KEYS[2..]: the markers.
local fence = ARGV[1]

local meta = redis.call('HMGET', meta_key, 'fence', 'state')
if meta[1] ~= fence or meta[2] ~= 'leased' then
  return -1
end
local removed = 0
for i = 2, #KEYS do
  removed = removed + redis.call('DEL', KEYS[i])
end
return removed
