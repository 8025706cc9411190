#!lua
-- erase_line: the LGPD erase's step on the line's hash tag: the conversation leaves its
-- session's waiting line, every agent's set, the pending takes and the join stamps. Run while
-- the erase holds the conversation's lease (see erase_conversation.lua).
-- Agents' sets are keys, and a script may only touch keys it declares, so the caller passes
-- the set of every agent it read; if an agent was added since, nothing is changed and -1
-- tells the caller to read again (an agent added meanwhile could have taken the customer).
-- Returns how many entries went, or -1.
local agents_key = KEYS[1]    -- agent id -> {name, online, since}
local waiting_key = KEYS[2]   -- the session's waiting line
-- KEYS[3..]: hashes whose field is the conversation (taken, joined), then (from
-- KEYS[3 + hash_count]) the agents' sets, in the order of ARGV[3..].
local token = ARGV[1]
local hash_count = tonumber(ARGV[2])
local first_set = 3 + hash_count

local known = {}
for i = 3, #ARGV do
  known[ARGV[i]] = true
end
local agents = redis.call('HKEYS', agents_key)
if #agents ~= #ARGV - 2 then
  return -1
end
for _, agent in ipairs(agents) do
  if not known[agent] then
    return -1
  end
end

local removed = redis.call('ZREM', waiting_key, token)
for i = 3, first_set - 1 do
  removed = removed + redis.call('HDEL', KEYS[i], token)
end
for i = first_set, #KEYS do
  removed = removed + redis.call('SREM', KEYS[i], token)
end
return removed
