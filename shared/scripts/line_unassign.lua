#!lua
-- line_unassign: the reconcile takes a conversation out of an agent's set because the
-- conversation's own state says it is not with that agent (its handler committed a close, a
-- handback or another agent, and its process died before `line_release`). Refused when the
-- conversation has an assignment in flight (`taken`: the state catches up when the handler
-- confirms it) or joined the set after the reconcile read the counter (ARGV[2]): its state was
-- read before it joined and says nothing about it.
-- Returns 1 removed, 0 refused or not there.
local agent_convs_key = KEYS[1]
local taken_key = KEYS[2]
local joined_key = KEYS[3]
local token = ARGV[1]
local read_at_seq = tonumber(ARGV[2])

if redis.call('SISMEMBER', agent_convs_key, token) == 0 then
  return 0
end
if redis.call('HEXISTS', taken_key, token) == 1 then
  return 0
end
local joined = tonumber(redis.call('HGET', joined_key, token) or '0')
if joined > read_at_seq then
  return 0
end
redis.call('SREM', agent_convs_key, token)
return 1
