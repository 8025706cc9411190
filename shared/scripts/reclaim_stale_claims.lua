#!lua
-- reclaim_stale_claims: hand back conversations a worker popped into `claimed` but never
-- leased (it died between BLMOVE and claim_conversation). A token seen in `claimed` by two
-- consecutive reaper passes goes back to the FRONT of the ready list. Harmless if the worker
-- was merely slow: its claim then finds the token gone and gives up.
-- Returns how many tokens were handed back.
local claimed_key = KEYS[1]    -- the shard's popped-but-not-leased tokens
local ready_key = KEYS[2]      -- the shard's claimable conversations (front at the right)
local seen_key = KEYS[3]       -- the tokens in `claimed` at the previous pass

local handed_back = 0
local remaining = {}
for _, token in ipairs(redis.call('LRANGE', claimed_key, 0, -1)) do
  if redis.call('SISMEMBER', seen_key, token) == 1 then
    if redis.call('LREM', claimed_key, 1, token) == 1 then
      redis.call('RPUSH', ready_key, token)
      handed_back = handed_back + 1
    end
  else
    remaining[#remaining + 1] = token
  end
end
redis.call('DEL', seen_key)
for i = 1, #remaining, 1000 do
  redis.call('SADD', seen_key, unpack(remaining, i, math.min(i + 999, #remaining)))
end
return handed_back
