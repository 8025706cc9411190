#!lua
-- outbox_retry: a send failed with a retryable error (network, 5xx, 429). Counts the attempt on
-- the reply at the head, clears the attempt's mark (send_begin: the next attempt need not wait
-- for an echo) and makes the conversation due again at `due_ms` (backoff).
-- Returns the attempts so far, or 0 when the head is another reply (a repeat).
local outbox_key = KEYS[1]
local pending_key = KEYS[2]
local mid = ARGV[1]
local due_ms = tonumber(ARGV[2])
local token = ARGV[3]
local last_error = ARGV[4]
--#include outbox

local entry = outbox_head(outbox_key, mid)
if not entry then
  return 0
end
entry['attempts'] = (tonumber(entry['attempts']) or 0) + 1
entry['last_error'] = last_error
entry['try'] = nil
redis.call('LSET', outbox_key, 0, cjson.encode(entry))
redis.call('ZADD', pending_key, due_ms, token)
return entry['attempts']
