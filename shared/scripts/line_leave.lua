#!lua
-- line_leave: take a conversation out of its session's waiting line (it wrote "sair", timed
-- out, was closed). Everyone behind it moves up by one.
-- Returns the position it had (1 = front), or 0 when it was not in the line (a repeat).
local waiting_key = KEYS[1]
local token = ARGV[1]

local rank = redis.call('ZRANK', waiting_key, token)
if not rank then
  return 0
end
redis.call('ZREM', waiting_key, token)
return rank + 1
