#!lua
-- erase_conversation: the LGPD erase's step on the conversation's own hash tag (its queue
-- shard). In one atomic step: refuse while the conversation is being handled; else delete
-- everything of it on this tag and take its lease, as a worker's claim does, so that nothing
-- handles it while the erase clears its dedupe markers and the other tags (line, indexes,
-- session, calendar). The erase ends with release_conversation.lua: a message queued meanwhile
-- waited behind the lease and is handled then, from scratch.
-- The fence comes from the shard's counter like every lease's: a worker holding an older
-- lease of this conversation stays fenced out after the erase.
-- Returns {'busy', why} (nothing changed) or {'erased', fence, removed}.
local meta_key = KEYS[1]          -- state, fence, owner, lease_until (no meta = idle)
local messages_key = KEYS[2]
local leases_key = KEYS[3]        -- the shard's conversation -> lease deadline
local fence_key = KEYS[4]         -- the shard's fencing counter
local claimed_seen_key = KEYS[5]  -- the reaper's snapshot of popped tokens
local dlq_key = KEYS[6]           -- the shard's dead letters: "<JSON header>\n<record>"
local outbox_dlq_key = KEYS[7]    -- the shard's outbox dead letters (JSON)
local pending_key = KEYS[8]       -- the shard's outbox pending index
local sending_key = KEYS[9]       -- the sender's delivery lock of this conversation
local outbox_key = KEYS[10]       -- the conversation's replies (its head may carry an attempt)
-- KEYS[11..]: the conversation's other own keys (bodies, state, history, outbox, ...): deleted.
local token = ARGV[1]
local owner = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local echo_wait_ms = tonumber(ARGV[4])  -- how long a send's outcome may stay unknown
--#include clock
--#include fence
--#include dead_letters

local busy_states = {ready = true, leased = true, delayed = true}
local meta = redis.call('HMGET', meta_key, 'state', 'fence')
if meta[1] and busy_states[meta[1]] then
  return {'busy', meta[1]}
end
if redis.call('LLEN', messages_key) > 0 then
  return {'busy', 'messages'}
end
-- A reply is on its way to WAHA: erasing under it would let the sender record it back.
if redis.call('EXISTS', sending_key) == 1 then
  return {'busy', 'sending'}
end
-- A send whose sender stopped between WAHA's answer and recording it: its lock has lapsed, but
-- the head still carries the attempt (send_begin.lua) until its echo records it or the echo
-- wait is over. Erasing now would leave that echo nothing to match: it would be taken for the
-- business answering from its phone, and bring the conversation back, paused.
local head = redis.call('LINDEX', outbox_key, 0)
if head then
  local try = cjson.decode(head)['try']
  if type(try) == 'table' then
    local age = redis_now_ms() - (tonumber(try['at']) or 0)
    if age >= 0 and age < echo_wait_ms then
      return {'busy', 'sending'}
    end
  end
end

local removed = 0
for i = 11, #KEYS do
  removed = removed + redis.call('DEL', KEYS[i])
end
removed = removed + redis.call('ZREM', pending_key, token)
removed = removed + redis.call('SREM', claimed_seen_key, token)

-- Dead letters name their conversation in a field: matched exactly, never by substring, so
-- erasing `1@c.us` leaves `5511987650001@c.us` alone.
local function drop_matching(list_key, conversation_of)
  local gone = 0
  for _, entry in ipairs(redis.call('LRANGE', list_key, 0, -1)) do
    if conversation_of(entry) == token then
      gone = gone + redis.call('LREM', list_key, 0, entry)
    end
  end
  return gone
end
-- Both lists' entries open with a JSON line (an outbox dead letter is that line alone).
local function conversation_of(entry)
  local header = dead_letter_header(entry)
  return header and header['conversation'] or nil
end
removed = removed + drop_matching(dlq_key, conversation_of)
removed = removed + drop_matching(outbox_dlq_key, conversation_of)

-- The lease, exactly as claim_conversation.lua takes one.
local fence = draw_fence(fence_key, meta[2])
local lease_until = redis_now_ms() + lease_ms
redis.call('HSET', meta_key, 'fence', fence, 'state', 'leased', 'owner', owner,
  'lease_until', lease_until)
redis.call('ZADD', leases_key, lease_until, token)
return {'erased', fence, removed}
