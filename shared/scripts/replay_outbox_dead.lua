#!lua
-- replay_outbox_dead: put replies of one conversation back from the shard's outbox dead
-- letters (outbox_dead.lua) into its outbox, at the tail, in the order given (oldest first),
-- as fresh replies (no attempts, no attempt mark), and make the conversation due now: the
-- sender sends them as it sends any reply, exactly once by its own markers (send_begin.lua,
-- outbox_sent.lua, the echo). In the same step each dead letter leaves the list and its
-- history status goes from `failed` back to `queued`, so a repeated replay finds it gone and
-- stores nothing: a reply is never put back twice.
-- At the tail, never the head: the sender's scripts all act on the head reply it read (a send
-- under way is recorded by outbox_sent.lua only if its reply is still the head), so a reply
-- slipped in front of one in flight would have it recorded nowhere and sent again.
-- A letter is refused (it stays, nothing of it is stored) when:
--   no_history   its conversation's history has no such reply (the customer was erased, or it
--                was trimmed past the retention or the cap): nothing to send it for;
--   recorded:<s> the history says something else than `failed` happened to it;
--   expired      it was written more than `max_age_ms` ago (the history's retention);
--   unknown      its last send got no answer from WAHA (timeout, connection lost: the outcome
--                is unknown, it may be on the customer's phone), unless `resend_unknown`;
--   invalid      the entry cannot be read.
-- Returns, for each letter given, in order: 'replayed', 'gone' (no longer in the list:
-- replayed, dropped or erased meanwhile, or given twice) or the refusal's code above.
local dlq_key = KEYS[1]       -- the shard's outbox dead letters (JSON, oldest at the left)
local outbox_key = KEYS[2]    -- the conversation's replies, head = next
local meta_key = KEYS[3]      -- history meta: <mid>:status
local pending_key = KEYS[4]   -- the shard's conversations with something to send -> due (ms)
local token = ARGV[1]
local now_ms = tonumber(ARGV[2])             -- the pending index's clock (the workers')
local max_age_ms = tonumber(ARGV[3])
local retention_seconds = tonumber(ARGV[4])  -- the outbox's expiry, as a commit sets it
local resend_unknown = ARGV[5] == '1'
-- ARGV[6..]: each letter's entry exactly as stored, oldest first.
local FIRST = 6

local function verdict_of(letter)
  if type(letter) ~= 'table' or type(letter['entry']) ~= 'table'
      or type(letter['entry']['mid']) ~= 'string' then
    return 'invalid'
  end
  if letter['conversation'] ~= token then
    return redis.error_reply('replay_outbox_dead: a letter of another conversation')
  end
  local entry = letter['entry']
  local status = redis.call('HGET', meta_key, entry['mid'] .. ':status')
  if not status then
    return 'no_history'
  end
  if status ~= 'failed' then
    return 'recorded:' .. status
  end
  local created = tonumber(entry['created'])
  if created and now_ms - created > max_age_ms then
    return 'expired'
  end
  -- A mark (send_begin.lua) says its last attempt went to WAHA; an HTTP status that WAHA
  -- answered with an error (it sent nothing). A mark without a status: no answer came.
  local reason = letter['reason']
  local answered = type(reason) == 'table' and type(reason['status']) == 'number'
  if type(entry['try']) == 'table' and not answered and not resend_unknown then
    return 'unknown'
  end
  return 'replayed'
end

local results = {}
local replayed = {}
local given = {}       -- entries looked at already: one given twice goes back once
local accepted = {}    -- reply ids going back: two letters of one reply put it back once
for i = FIRST, #ARGV do
  local raw = ARGV[i]
  local verdict = 'gone'
  if not given[raw] and redis.call('LPOS', dlq_key, raw) then
    local ok, letter = pcall(cjson.decode, raw)
    verdict = verdict_of(ok and letter or nil)
    if type(verdict) == 'table' then
      return verdict  -- an error reply: nothing was written
    end
    if verdict == 'replayed' then
      local mid = letter['entry']['mid']
      if accepted[mid] then
        verdict = 'recorded:queued'  -- what its status is about to say
      end
      accepted[mid] = true
    end
  end
  given[raw] = true
  results[#results + 1] = verdict
  if verdict == 'replayed' then
    replayed[#replayed + 1] = raw
  end
end

-- Nothing is written before every letter was looked at (a guard's error leaves all as it was).
for _, raw in ipairs(replayed) do
  local entry = cjson.decode(raw)['entry']
  entry['attempts'] = 0
  entry['last_error'] = ''
  entry['try'] = nil
  redis.call('LREM', dlq_key, 1, raw)
  redis.call('RPUSH', outbox_key, cjson.encode(entry))
  redis.call('HSET', meta_key, entry['mid'] .. ':status', 'queued')
end
if #replayed > 0 then
  if retention_seconds and retention_seconds > 0 then
    redis.call('EXPIRE', outbox_key, retention_seconds)
  end
  -- As a commit does: due now, never later than it was (LT adds an absent member).
  redis.call('ZADD', pending_key, 'LT', now_ms, token)
end
return results
