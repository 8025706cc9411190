#!lua
-- send_lock_renew: a live sender keeps its conversation's delivery lock (compare-and-renew).
-- Extends the lock only while it still holds this sender's token: a lock that expired and was
-- taken by another sender is never extended by the one that lost it.
-- Returns 1 renewed; 0 the lock is not ours (any more).
local lock_key = KEYS[1]    -- the conversation's delivery lock (`...:sending`)
local lock_token = ARGV[1]
local lock_ms = ARGV[2]

if redis.call('GET', lock_key) == lock_token then
  redis.call('PEXPIRE', lock_key, lock_ms)
  return 1
end
return 0
