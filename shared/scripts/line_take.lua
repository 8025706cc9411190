#!lua
-- line_take: give an agent a waiting conversation: the longest-waiting one over the given
-- lines (or a given one), if the agent is online and below its capacity. The conversation
-- leaves the line, joins the agent's set, and is recorded as taken until its handler confirms.
-- Returns {token, entered_at_ms, line index (1-based)}, or {'!offline'}, {'!full'}, {'!empty'}.
local agents_key = KEYS[1]       -- agent id -> JSON {name, online, since}
local taken_key = KEYS[2]        -- conversation -> JSON assignment not yet confirmed
local agent_convs_key = KEYS[3]  -- the agent's conversations
local joined_key = KEYS[4]       -- conversation -> line counter when it joined an agent
local sequence_key = KEYS[5]     -- the line's counter
-- KEYS[6..]: waiting lines to take from
local agent_id = ARGV[1]
local now_ms = tonumber(ARGV[2])
local per_agent = tonumber(ARGV[3])
local wanted = ARGV[4]           -- '' = the longest-waiting

local raw = redis.call('HGET', agents_key, agent_id)
if not raw then
  return {'!offline'}
end
local agent = cjson.decode(raw)
if not agent['online'] then
  return {'!offline'}
end
if redis.call('SCARD', agent_convs_key) >= per_agent then
  return {'!full'}
end

local best_token, best_score, best_line = nil, nil, nil
for i = 6, #KEYS do
  if wanted ~= '' then
    local score = redis.call('ZSCORE', KEYS[i], wanted)
    if score then
      best_token, best_score, best_line = wanted, tonumber(score), i
      break
    end
  else
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if head[1] and (not best_score or tonumber(head[2]) < best_score) then
      best_token, best_score, best_line = head[1], tonumber(head[2]), i
    end
  end
end
if not best_token then
  return {'!empty'}
end

local entered_at = math.floor(best_score / 1000)
redis.call('ZREM', KEYS[best_line], best_token)
redis.call('SADD', agent_convs_key, best_token)
redis.call('HSET', joined_key, best_token, redis.call('INCR', sequence_key))
redis.call('HSET', taken_key, best_token, cjson.encode({
  agent = agent_id, name = agent['name'] or agent_id, at = now_ms, entered_at = entered_at,
}))
return {best_token, entered_at, best_line - 5}
