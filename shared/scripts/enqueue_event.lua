#!lua
-- enqueue_event: drop a repeat of an event, else append it to its conversation's queue and make
-- the conversation claimable. The gateway's only Redis round trip per webhook.
-- A receipt (given KEYS[8], ARGV[6], ARGV[7]) whose message is in the history already is
-- settled here instead of queued: an ack's status moves forward (lib/status.lua), as the
-- engine's ack turn would have moved it; the echo of a message the history has (status "")
-- changes nothing, as it would change nothing in the engine. Nothing is queued. A receipt
-- whose message is not recorded yet is queued.
-- Returns 1 when queued, 2 when settled on its message, 0 when it was a duplicate.
local seen_event_key = KEYS[1]     -- marker for the WAHA envelope id
local seen_message_key = KEYS[2]   -- marker for the WhatsApp message id (= KEYS[1] when none)
local messages_key = KEYS[3]       -- the conversation's message ids, oldest at the right
local bodies_key = KEYS[4]         -- message id -> record
local meta_key = KEYS[5]           -- the conversation's queue state
local ready_key = KEYS[6]          -- the shard's claimable conversations
local stats_key = KEYS[7]          -- the shard's counters
local message_id = ARGV[1]
local token = ARGV[2]
local record = ARGV[3]
local dedupe_ttl = tonumber(ARGV[4])
local check_message = ARGV[5] == '1'
local history_meta_key = KEYS[8]   -- optional: the conversation's history meta (a receipt)
local receipt_message = ARGV[6]    -- with it: the message's short WhatsApp id
local receipt_status = ARGV[7]     -- and the status an ack reports ("" for an echo)
--#include status

if redis.call('EXISTS', seen_event_key) == 1 then
  return 0
end
if check_message and redis.call('EXISTS', seen_message_key) == 1 then
  return 0
end
-- Still queued from before its marker expired (a backlog older than the dedupe window).
if redis.call('HEXISTS', bodies_key, message_id) == 1 then
  return 0
end

local function mark_seen()
  redis.call('SET', seen_event_key, '1', 'EX', dedupe_ttl)
  if check_message then
    redis.call('SET', seen_message_key, '1', 'EX', dedupe_ttl)
  end
end

if history_meta_key then
  local mid = redis.call('HGET', history_meta_key, 'w:' .. receipt_message)
  if mid then
    mark_seen()
    if receipt_status ~= '' then
      advance_status(history_meta_key, mid .. ':status', receipt_status)
    end
    return 2
  end
end

mark_seen()
redis.call('LPUSH', messages_key, message_id)
redis.call('HSET', bodies_key, message_id, record)
redis.call('HINCRBY', stats_key, 'waiting', 1)

-- A conversation is in the ready list at most once: only an idle one is added. A leased or
-- delayed one is put back by whoever holds it when it is released.
local state = redis.call('HGET', meta_key, 'state')
if not state or state == 'idle' then
  redis.call('HSET', meta_key, 'state', 'ready')
  redis.call('LPUSH', ready_key, token)
end
return 1
