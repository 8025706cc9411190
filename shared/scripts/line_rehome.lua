#!lua
-- line_rehome: a team's line that its session's business no longer uses (the team is gone
-- from the business file, or the business has one team left) joins the session's plain line,
-- which every agent takes from. Each customer keeps their score (when they entered), so their
-- place is by how long they have waited; one already in the plain line keeps that place.
-- Atomic with the takes (line_take.lua): nobody is taken twice, nobody is left behind.
-- Returns how many customers moved.
local team_key = KEYS[1]       -- the team's line
local plain_key = KEYS[2]      -- the session's plain line
local team_lines_key = KEYS[3] -- the set of team lines (line_enter.lua)

local entries = redis.call('ZRANGE', team_key, 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  redis.call('ZADD', plain_key, 'NX', entries[i + 1], entries[i])
end
redis.call('DEL', team_key)
redis.call('SREM', team_lines_key, team_key)
return #entries / 2
