#!lua
-- extend_lease: push the holder's lease deadline to now + lease, if the lease is still its own
-- and has not run out (an expired lease may be reaped at any moment, so it is not revived).
-- Returns the new deadline (ms, Redis clock); 0 fenced out; -1 expired.
local meta_key = KEYS[1]     -- the conversation's state, fence, lease_until
local leases_key = KEYS[2]   -- the shard's conversation -> lease deadline
local token = ARGV[1]
local fence = ARGV[2]
local lease_ms = tonumber(ARGV[3])

local meta = redis.call('HMGET', meta_key, 'fence', 'state', 'lease_until')
if meta[1] ~= fence or meta[2] ~= 'leased' then
  return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(meta[3]) < now_ms then
  return -1
end
local lease_until = now_ms + lease_ms
redis.call('HSET', meta_key, 'lease_until', lease_until)
redis.call('ZADD', leases_key, lease_until, token)
return lease_until
