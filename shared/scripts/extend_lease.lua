#!lua
-- extend_lease: push the holder's lease deadline to now + lease, if the lease is still its own
-- and has not run out (an expired lease may be reaped at any moment, so it is not revived).
-- Returns the new deadline (ms, Redis clock); 0 fenced out; -1 expired.
local meta_key = KEYS[1]     -- the conversation's state, fence, lease_until
local leases_key = KEYS[2]   -- the shard's conversation -> lease deadline
local token = ARGV[1]
local fence = ARGV[2]
local lease_ms = tonumber(ARGV[3])
--#include clock
--#include fence

local meta = leased_meta(meta_key, fence, 'lease_until')
if not meta then
  return 0
end
local now_ms = redis_now_ms()
if tonumber(meta[3]) < now_ms then
  return -1
end
local lease_until = now_ms + lease_ms
redis.call('HSET', meta_key, 'lease_until', lease_until)
redis.call('ZADD', leases_key, lease_until, token)
return lease_until
