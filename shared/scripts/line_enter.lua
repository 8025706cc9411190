#!lua
-- line_enter: put a conversation at the back of its session's waiting line, unless it is in it
-- already (a redelivered message re-runs this: it must not move the customer back).
-- Returns {position (1 = front), entered_at_ms}.
local waiting_key = KEYS[1]    -- the session's line: conversation -> score
local sessions_key = KEYS[2]   -- sessions that have a line
local sequence_key = KEYS[3]   -- tie-breaker counter
local team_lines_key = KEYS[4] -- a team's line only: the set of team lines (line_rehome.lua)
local token = ARGV[1]
local now_ms = tonumber(ARGV[2])
local session = ARGV[3]

-- score = ms * 1000 + (n mod 1000): FIFO even for entries in the same millisecond, and still
-- exact in a double (epoch ms * 1000 < 2^53).
if not redis.call('ZSCORE', waiting_key, token) then
  local seq = redis.call('INCR', sequence_key) % 1000
  redis.call('ZADD', waiting_key, now_ms * 1000 + seq, token)
  redis.call('SADD', sessions_key, session)
  if team_lines_key then
    redis.call('SADD', team_lines_key, waiting_key)
  end
end
local rank = redis.call('ZRANK', waiting_key, token)
local score = tonumber(redis.call('ZSCORE', waiting_key, token))
return {rank + 1, math.floor(score / 1000)}
