#!lua
-- outbox_failed: WAHA can never make this reply (it is a file and this WAHA is Core: 422
-- AvailableInPlusVersion). Unlike outbox_dead it is no dead letter - nothing an operator could
-- replay would succeed, and it carries no customer data worth keeping - so the reply leaves the
-- head of the outbox, its history status becomes `failed` with the reason in `<mid>:error`,
-- and the conversation's next reply goes on.
-- Returns 1 removed; 0 the head is another reply (a repeat).
local outbox_key = KEYS[1]
local meta_key = KEYS[2]      -- history meta: <mid>:status, <mid>:error
local pending_key = KEYS[3]
local mid = ARGV[1]
local token = ARGV[2]
local reason = ARGV[3]
local now_ms = ARGV[4]
--#include outbox

if not outbox_head(outbox_key, mid) then
  return 0
end
redis.call('LPOP', outbox_key)
-- Only into a history that still exists (outbox_sent.lua says why).
if redis.call('EXISTS', meta_key) == 1 then
  redis.call('HSET', meta_key, mid .. ':status', 'failed', mid .. ':error', reason)
end
if redis.call('LLEN', outbox_key) == 0 then
  redis.call('ZREM', pending_key, token)
else
  redis.call('ZADD', pending_key, 'LT', now_ms, token)
end
return 1
