#!lua
-- index_prune: forget conversations whose state expired (WSM_HISTORY_RETENTION_DAYS without
-- activity) in the engine's indexes: `convs`, the timers and every state set. A conversation
-- is forgotten only if its `convs` score is still the one the caller saw with its state gone:
-- a turn re-indexes it (new score) before committing a new state, so a conversation that
-- comes back meanwhile keeps its place.
-- ARGV: token, score, token, score, ... Returns how many were forgotten.
local convs_key = KEYS[1]
local timers_key = KEYS[2]
-- KEYS[3..]: the state sets

local forgotten = 0
for i = 1, #ARGV, 2 do
  local token = ARGV[i]
  local score = redis.call('ZSCORE', convs_key, token)
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', convs_key, token)
    redis.call('ZREM', timers_key, token)
    for k = 3, #KEYS do
      redis.call('SREM', KEYS[k], token)
    end
    forgotten = forgotten + 1
  end
end
return forgotten
