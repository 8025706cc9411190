#!lua
-- erase_index: the LGPD erase's step on the engine index's hash tag: the conversation leaves
-- the conversations index, the inactivity timers and every per-state set.
-- Returns how many entries went.
-- KEYS[1..2]: sorted sets by conversation (convs, timers); KEYS[3..]: the per-state sets.
local token = ARGV[1]
local removed = redis.call('ZREM', KEYS[1], token) + redis.call('ZREM', KEYS[2], token)
for i = 3, #KEYS do
  removed = removed + redis.call('SREM', KEYS[i], token)
end
return removed
