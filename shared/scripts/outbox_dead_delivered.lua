#!lua
-- outbox_dead_delivered: the echo of a reply that had been dead-lettered. Its last attempt got
-- no answer from WAHA and the sender gave up (outbox_dead.lua), yet WhatsApp has it: the echo
-- proves it. The letter leaves the outbox's dead-letter list (a replay would send it twice)
-- and the history says `sent`, with its WhatsApp id, instead of `failed`.
-- Only the newest `scan` letters are read: the echo comes within the send's in-flight marker's
-- life (the echo wait), so the letter is among the last ones written. Only a history that
-- still exists is written (outbox_sent.lua says why).
-- Returns 1 the letter was found and removed; 0 no letter of this reply.
local dlq_key = KEYS[1]       -- the shard's outbox dead letters, newest at the RIGHT
local meta_key = KEYS[2]      -- history meta: <mid>:status, <mid>:waha_id, w:<id> -> mid
local token = ARGV[1]         -- the conversation
local mid = ARGV[2]           -- the reply the echo's in-flight marker names
local waha_id = ARGV[3]       -- the echo's id, as WAHA gave it
local short_id = ARGV[4]      -- the WhatsApp id inside it ('' when there is none)
local scan = tonumber(ARGV[5])
--#include status

local letters = redis.call('LRANGE', dlq_key, -scan, -1)
for i = #letters, 1, -1 do
  local ok, letter = pcall(cjson.decode, letters[i])
  if ok and type(letter) == 'table' and letter['conversation'] == token
      and type(letter['entry']) == 'table' and letter['entry']['mid'] == mid then
    redis.call('LREM', dlq_key, -1, letters[i])
    if redis.call('EXISTS', meta_key) == 1 then
      -- Not advance_status: `failed` ranks above `sent`, and it was wrong.
      if redis.call('HGET', meta_key, mid .. ':status') == 'failed' then
        redis.call('HSET', meta_key, mid .. ':status', 'sent')
      end
      if not redis.call('HGET', meta_key, 'w:' .. short_id) then
        record_sent_id(meta_key, mid, waha_id, short_id)
      end
    end
    return 1
  end
end
return 0
