#!lua
-- send_mark: the in-flight marker of a send send_begin.lua has just let go (engine/sender.py
-- InflightSend): it names the reply, its text and when the attempt began, so an echo that
-- overtakes WAHA's answer, or comes after its sender died, is known as ours
-- (engine/turn/business.py is_our_send). Sent in send_begin.lua's pipeline, right behind it, on
-- one Redis only (its keys span the conversation's and the session's hash tags; a cluster sets
-- the marker in a round trip of its own once send_begin.lua answered 0): one round trip for
-- both. It writes only what send_begin.lua decided, read back from what it wrote: the lock is
-- this sender's and the head is this reply, marked with this sender's attempt. Otherwise (the
-- lock was lost, the head moved, another attempt's echo is awaited) the marker of whatever
-- send is under way stays as it is.
-- Returns 1 written; 0 not this send's to mark.
local marker_key = KEYS[1]    -- {s:<session>}:inflight:<chat>
local lock_key = KEYS[2]      -- the conversation's delivery lock
local outbox_key = KEYS[3]    -- the conversation's replies, head = next
local lock_token = ARGV[1]
local mid = ARGV[2]
local marker = ARGV[3]        -- {"mid", "text", "at"} (JSON)
local px = tonumber(ARGV[4])
--#include outbox

if redis.call('GET', lock_key) ~= lock_token then
  return 0
end
local entry = outbox_head(outbox_key, mid)
if not entry or type(entry['try']) ~= 'table' or entry['try']['lock'] ~= lock_token then
  return 0
end
redis.call('SET', marker_key, marker, 'PX', px)
return 1
