#!lua flags=no-writes
-- due_conversations: what the reaper has to do on one shard, by the shard's own clock.
-- Returns {expired leases, delayed conversations now due}, each at most `limit` tokens.
local leases_key = KEYS[1]    -- conversation -> lease deadline (ms)
local delayed_key = KEYS[2]   -- conversation -> retry time (ms)
local limit = tonumber(ARGV[1])
--#include clock

local now_ms = redis_now_ms()
return {
  redis.call('ZRANGE', leases_key, '-inf', '(' .. now_ms, 'BYSCORE', 'LIMIT', 0, limit),
  redis.call('ZRANGE', delayed_key, '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, limit),
}
