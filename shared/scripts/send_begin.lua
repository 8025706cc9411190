#!lua
-- send_begin: the one check just before `sendText`. The send may go only if this sender still
-- holds the conversation's delivery lock and the reply it is about to send is still the head of
-- the outbox. It then marks the head with this attempt ({lock, at}), renews the lock and answers
-- 0. The mark stays until the attempt's outcome is known (outbox_sent pops the reply,
-- outbox_retry and send_abort clear it). A sender that finds another sender's mark younger than
-- `echo_wait_ms` does not send: that attempt may have reached WhatsApp (its sender stopped
-- between WAHA's 201 and recording it), and its echo (`message.any`) will record it: the
-- conversation is made due again when the wait is over, in this same step, so a recording of
-- that attempt (outbox_sent.lua, which makes the rest due at once) can never be overtaken.
-- Returns 0 go; -1 the lock is not ours; -2 the head is another reply (or none);
-- n > 0: another attempt's outcome is unknown, looked at again in n ms.
local lock_key = KEYS[1]      -- the conversation's delivery lock
local outbox_key = KEYS[2]    -- the conversation's replies, head = next
local pending_key = KEYS[3]   -- the shard's conversations with something to send -> due (ms)
local lock_token = ARGV[1]
local mid = ARGV[2]
local lock_ms = tonumber(ARGV[3])
local echo_wait_ms = tonumber(ARGV[4])
local token = ARGV[5]         -- the conversation
local caller_now_ms = tonumber(ARGV[6])  -- the pending index's clock (the workers')
--#include clock
--#include outbox

if redis.call('GET', lock_key) ~= lock_token then
  return -1
end
local entry = outbox_head(outbox_key, mid)
if not entry then
  return -2
end
local now_ms = redis_now_ms()
local try = entry['try']
if type(try) == 'table' and try['lock'] ~= lock_token then
  local age = now_ms - (tonumber(try['at']) or 0)
  if age >= 0 and age < echo_wait_ms then
    redis.call('ZADD', pending_key, caller_now_ms + echo_wait_ms - age, token)
    return echo_wait_ms - age
  end
end
entry['try'] = {lock = lock_token, at = now_ms}
redis.call('LSET', outbox_key, 0, cjson.encode(entry))
redis.call('PEXPIRE', lock_key, lock_ms)
return 0
