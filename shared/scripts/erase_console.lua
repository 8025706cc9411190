#!lua
-- erase_console: the LGPD erase's step on the attendants' console's hash tag: the
-- conversation's audit trail, its place among the conversations a page shows, the agents'
-- read marks and lists of handled conversations, and the live channel's events about it.
-- Matched exactly: a member or field equal to the conversation token, an event with a field
-- equal to it.
-- Returns how many keys/entries went.
local audit_key = KEYS[1]     -- the conversation's audit stream (deleted)
local viewed_key = KEYS[2]    -- conversation -> until when a page shows it
local events_key = KEYS[3]    -- the live channel's events (a capped stream)
-- KEYS[4..]: agents' read marks (HASH conversation -> id) and handled lists (ZSET), found by
-- the caller's scan.
local token = ARGV[1]

local removed = redis.call('DEL', audit_key) + redis.call('ZREM', viewed_key, token)
for i = 4, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind == 'hash' then
    removed = removed + redis.call('HDEL', KEYS[i], token)
  elseif kind == 'zset' then
    removed = removed + redis.call('ZREM', KEYS[i], token)
  end
end
for _, entry in ipairs(redis.call('XRANGE', events_key, '-', '+')) do
  local fields = entry[2]
  for j = 2, #fields, 2 do
    if fields[j] == token then
      removed = removed + redis.call('XDEL', events_key, entry[1])
      break
    end
  end
end
return removed
