#!lua
-- outbox_sent: WAHA accepted one of our replies (201). Removes it from the head of the outbox,
-- records its WhatsApp id in the history (and an ack that arrived before this step), and takes
-- the conversation off the pending index when nothing is left to send; otherwise, given
-- `now_ms`, makes the rest due by then at the latest (it may have been put off while an earlier
-- attempt's echo was awaited: send_begin.lua).
-- An id already recorded for another of our replies never records this one: the late echo of a
-- recorded send must not settle a later reply with the same text (engine/sender.py,
-- settle_echo). (A message recorded from the phone maps its id to itself; that is no reply.)
-- Given the sender's delivery lock, a reply that leaves the outbox empty also ends the delivery
-- (what outbox_settle.lua does at its end, in this same step): the lock is released if the
-- caller still holds it.
-- Returns 1 removed; 2 removed, and the delivery ended with it (the lock released); 0 the head
-- is another reply (this one was recorded already: a repeat), or the id belongs to another
-- reply.
local outbox_key = KEYS[1]    -- the conversation's replies, head = next
local meta_key = KEYS[2]      -- history meta: <mid>:status, <mid>:waha_id, w:<id> -> mid
local pending_key = KEYS[3]   -- the shard's conversations with something to send
local lock_key = KEYS[4]      -- optional: the conversation's delivery lock
local mid = ARGV[1]
local waha_id = ARGV[2]       -- as WAHA gave it ('' when it gave none)
local short_id = ARGV[3]      -- the WhatsApp id inside it
local token = ARGV[4]
local now_ms = ARGV[5]        -- optional (required with the lock)
local lock_token = ARGV[6]    -- optional: the caller's delivery lock token
--#include outbox
--#include status

if short_id ~= '' then
  local owner = redis.call('HGET', meta_key, 'w:' .. short_id)
  if owner and owner ~= mid and owner ~= short_id then
    return 0
  end
end
if not outbox_head(outbox_key, mid) then
  return 0
end
redis.call('LPOP', outbox_key)
-- The history's meta hash lives as long as the history (its writes set the retention). When
-- it is gone (expired, erased) there is nothing to record the reply in: writing would create
-- the hash again, with no expiry.
if redis.call('EXISTS', meta_key) == 1 then
  advance_status(meta_key, mid .. ':status', 'sent')
  record_sent_id(meta_key, mid, waha_id, short_id)
end
if redis.call('LLEN', outbox_key) == 0 then
  redis.call('ZREM', pending_key, token)
  if lock_key and redis.call('GET', lock_key) == lock_token then
    redis.call('DEL', lock_key)
    return 2
  end
elseif now_ms then
  redis.call('ZADD', pending_key, 'LT', now_ms, token)
end
return 1
