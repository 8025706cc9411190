#!lua
-- outbox_dead_delivered: the echo of a reply that had been dead-lettered. Its last attempt got
-- no answer from WAHA and the sender gave up (outbox_dead.lua), yet WhatsApp has it: the echo
-- proves it. The letter leaves the outbox's dead-letter list (a replay would send it twice)
-- and the history says `sent`, with its WhatsApp id, instead of `failed`.
-- The reply is the one the send's in-flight marker names (`mid`) while the marker lives; after
-- it lapsed (`mid` empty), the one noted with the echo's text (lib/dead_replies), oldest first.
-- A noted reply's letter is removed by value: no letter is decoded. One the marker names that
-- has no note (WAHA answered its last attempt with an error) is looked for among the newest
-- `scan` letters: the echo comes within the marker's life (the echo wait), so the letter is
-- among the last ones written. Only a history that still says `failed` is written (not one
-- erased or trimmed, see outbox_sent.lua; nor a reply replayed meanwhile, whose history is
-- its new send's).
-- Returns the reply's mid when it was found; 0 no dead reply of this echo.
local dlq_key = KEYS[1]       -- the shard's outbox dead letters, newest at the RIGHT
local meta_key = KEYS[2]      -- history meta: <mid>:status, <mid>:waha_id, w:<id> -> mid
local token = ARGV[1]         -- the conversation
local mid = ARGV[2]           -- the reply the echo's in-flight marker names ('': none lives)
local waha_id = ARGV[3]       -- the echo's id, as WAHA gave it
local short_id = ARGV[4]      -- the WhatsApp id inside it ('' when there is none)
local scan = tonumber(ARGV[5])
local text = ARGV[6]          -- the echo's text
local now_ms = tonumber(ARGV[7])
local max_age_ms = tonumber(ARGV[8])  -- how long dead letters are kept
-- An attempt begun after this cannot be the echo's (its WhatsApp time, plus slack for clocks
-- apart): an older message from the phone with the same text is not taken for it. 0: no bound.
local not_after = tonumber(ARGV[9])
--#include status
--#include dead_replies

local function delivered(reply)
  -- Not advance_status: `failed` ranks above `sent`, and it was wrong.
  if redis.call('HGET', meta_key, reply .. ':status') == 'failed' then
    redis.call('HSET', meta_key, reply .. ':status', 'sent')
    if not redis.call('HGET', meta_key, 'w:' .. short_id) then
      record_sent_id(meta_key, reply, waha_id, short_id)
    end
  end
  return reply
end

local digest = redis.sha1hex(text)
local notes = dead_replies(meta_key, now_ms - max_age_ms)
for i, note in ipairs(notes) do
  local match
  if mid ~= '' then
    match = note['mid'] == mid
  else
    match = note['sha1'] == digest and (not_after == 0 or (tonumber(note['try']) or 0) <= not_after)
  end
  if match and type(note['mid']) == 'string' then
    table.remove(notes, i)
    store_dead_replies(meta_key, notes)
    if type(note['letter']) == 'string' then
      redis.call('LREM', dlq_key, -1, note['letter'])
    end
    return delivered(note['mid'])
  end
end
if mid == '' then
  return 0
end

local letters = redis.call('LRANGE', dlq_key, -scan, -1)
for i = #letters, 1, -1 do
  local ok, letter = pcall(cjson.decode, letters[i])
  if ok and type(letter) == 'table' and letter['conversation'] == token
      and type(letter['entry']) == 'table' and letter['entry']['mid'] == mid then
    redis.call('LREM', dlq_key, -1, letters[i])
    return delivered(mid)
  end
end
return 0
