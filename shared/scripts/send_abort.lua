#!lua
-- send_abort: WAHA refused a send without making it (422: the session is not WORKING). The
-- attempt's outcome is known, so its mark on the head (send_begin) is cleared: the next sender
-- need not wait for an echo that cannot come.
-- Returns 1 cleared; 0 nothing of this attempt's to clear (another head, another attempt).
local outbox_key = KEYS[1]
local mid = ARGV[1]
local lock_token = ARGV[2]
--#include outbox

local entry = outbox_head(outbox_key, mid)
if not entry or type(entry['try']) ~= 'table' or entry['try']['lock'] ~= lock_token then
  return 0
end
entry['try'] = nil
redis.call('LSET', outbox_key, 0, cjson.encode(entry))
return 1
