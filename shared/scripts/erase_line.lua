#!lua
-- erase_line: the LGPD erase's step on the line's hash tag: the conversation leaves its
-- session's waiting lines (the plain one and each team's), every agent's set, the pending
-- takes and the join stamps. Run while the erase holds the conversation's lease (see
-- erase_conversation.lua).
-- Agents' sets are keys, and a script may only touch keys it declares, so the caller passes
-- the set of every agent it read; if an agent was added since, nothing is changed and -1
-- tells the caller to read again (an agent added meanwhile could have taken the customer).
-- Returns how many entries went, or -1.
local agents_key = KEYS[1]    -- agent id -> {name, online, since}
-- KEYS[2 .. 1 + line_count]: the session's waiting lines (its plain line, then each team's);
-- then hashes whose field is the conversation (taken, joined); then the agents' sets, in the
-- order of ARGV[4..].
local token = ARGV[1]
local line_count = tonumber(ARGV[2])
local hash_count = tonumber(ARGV[3])
local first_hash = 2 + line_count
local first_set = first_hash + hash_count

local known = {}
for i = 4, #ARGV do
  known[ARGV[i]] = true
end
local agents = redis.call('HKEYS', agents_key)
if #agents ~= #ARGV - 3 then
  return -1
end
for _, agent in ipairs(agents) do
  if not known[agent] then
    return -1
  end
end

local removed = 0
for i = 2, first_hash - 1 do
  removed = removed + redis.call('ZREM', KEYS[i], token)
end
for i = first_hash, first_set - 1 do
  removed = removed + redis.call('HDEL', KEYS[i], token)
end
for i = first_set, #KEYS do
  removed = removed + redis.call('SREM', KEYS[i], token)
end
return removed
