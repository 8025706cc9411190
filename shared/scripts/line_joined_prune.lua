#!lua
-- line_joined_prune: drop the join stamps (`joined`) of conversations that are in none of the
-- given agents' sets, so the stamps stay as many as the agents' conversations. Atomic with the
-- sets: a conversation that joins a set stamps it in the same script (line_take, line_attach).
-- Returns how many stamps were dropped.
local joined_key = KEYS[1]
-- KEYS[2..]: every agent's set of conversations

local stamps = redis.call('HKEYS', joined_key)
local dropped = 0
for _, token in ipairs(stamps) do
  local held = false
  for i = 2, #KEYS do
    if redis.call('SISMEMBER', KEYS[i], token) == 1 then
      held = true
      break
    end
  end
  if not held then
    redis.call('HDEL', joined_key, token)
    dropped = dropped + 1
  end
end
return dropped
