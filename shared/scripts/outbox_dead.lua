#!lua
-- outbox_dead: WAHA refused a reply for good (a 4xx other than 422), or it ran out of attempts.
-- Moves it from the head of the outbox to the shard's outbox dead-letter list with WAHA's
-- answer, and marks it failed in the history. The conversation's next reply goes on.
-- The list is capped and aged like the queue's dead letters (newest at the RIGHT here): the
-- newest `dlq_max` younger than `dlq_max_age_ms` stay, and what is dropped is counted in the
-- shard's stats (`outbox_dead_dropped`). Call it through shared.dead_letters.outbox_dead.
-- A reply whose last attempt went to WAHA and got no answer may be on the customer's phone: it
-- is noted for its echo (lib/dead_replies), for as long as the letter may be kept.
-- Returns 1 moved; 0 the head is another reply (a repeat).
local outbox_key = KEYS[1]
local dlq_key = KEYS[2]
local meta_key = KEYS[3]
local pending_key = KEYS[4]
local stats_key = KEYS[5]     -- the shard's counters (absent in calls from older callers)
local mid = ARGV[1]
local token = ARGV[2]
local reason = ARGV[3]        -- JSON: {status, answer, error}
local now_ms = tonumber(ARGV[4])
-- The defaults are the settings' (WSM_DEAD_LETTERS_MAX, WSM_DEAD_LETTER_DAYS), for callers
-- that do not pass them.
local dlq_max = tonumber(ARGV[5]) or 10000
local dlq_max_age_ms = tonumber(ARGV[6]) or 30 * 86400000
--#include dead_letters
--#include dead_replies
--#include outbox

local head = outbox_head(outbox_key, mid)
if not head then
  return 0
end
redis.call('LPOP', outbox_key)
local why = cjson.decode(reason)
local entry = cjson.encode({conversation = token, entry = head, reason = why, at = now_ms})
local dropped = push_dead_letter(dlq_key, entry, 'right', dlq_max, dlq_max_age_ms, now_ms)
if dropped > 0 and stats_key then
  redis.call('HINCRBY', stats_key, 'outbox_dead_dropped', dropped)
end
-- Only into a history that still exists (outbox_sent.lua says why).
if redis.call('EXISTS', meta_key) == 1 then
  redis.call('HSET', meta_key, mid .. ':status', 'failed')
  -- The attempt's mark (send_begin.lua) without an HTTP status: sent, and no answer came. A
  -- reply without text (a file without caption) is not noted: its echo could not be told from
  -- any other file sent without one from the phone.
  local try = head['try']
  local text = head['text']
  if type(try) == 'table' and type(why) == 'table' and type(why['status']) ~= 'number'
      and type(text) == 'string' and text ~= '' then
    note_dead_reply(meta_key, {
      mid = mid, at = now_ms, try = tonumber(try['at']) or 0, sha1 = redis.sha1hex(text),
      letter = entry,
    }, now_ms - dlq_max_age_ms)
  end
end
if redis.call('LLEN', outbox_key) == 0 then
  redis.call('ZREM', pending_key, token)
end
return 1
