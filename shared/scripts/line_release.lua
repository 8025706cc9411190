#!lua
-- line_release: an agent is done with a conversation (closed, handed back, or the assignment
-- found the customer gone). Frees the agent's slot and forgets the pending assignment; records
-- how long the conversation was handled, for the line's estimates, only the first time (a
-- repeat of this step must not count it twice).
-- Returns 1 when the agent had it, 0 otherwise.
local agent_convs_key = KEYS[1]
local taken_key = KEYS[2]
local handling_key = KEYS[3]     -- recent handling times (s), newest first
local token = ARGV[1]
local handled_seconds = tonumber(ARGV[2])  -- < 0: do not record
local keep = tonumber(ARGV[3])

redis.call('HDEL', taken_key, token)
local removed = redis.call('SREM', agent_convs_key, token)
if removed == 1 and handled_seconds >= 0 then
  redis.call('LPUSH', handling_key, handled_seconds)
  redis.call('LTRIM', handling_key, 0, keep - 1)
end
return removed
