#!lua
-- line_attach: a conversation counts against an agent's capacity without a take (the agent
-- wrote to it directly, or the reconcile found it with the agent and not in their set).
-- Stamps when it joined, so a reconcile that read the conversation's state before this step
-- does not take it away again.
-- Returns 1 when it was added, 0 when the agent had it already.
local agent_convs_key = KEYS[1]
local joined_key = KEYS[2]
local sequence_key = KEYS[3]
local sessions_key = KEYS[4]
local token = ARGV[1]
local session = ARGV[2]

local added = redis.call('SADD', agent_convs_key, token)
redis.call('HSET', joined_key, token, redis.call('INCR', sequence_key))
redis.call('SADD', sessions_key, session)
return added
