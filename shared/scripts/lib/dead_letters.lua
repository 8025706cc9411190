-- lib/dead_letters: dead letters are kept for a person to look at, not forever. A list keeps
-- its newest `max` entries younger than `max_age_ms`; each entry opens with a JSON line that
-- has the time it died (`at`, ms).

-- dead_letter_header(entry): an entry's JSON first line as a table, or nil.
local function dead_letter_header(entry)
  local ok, header = pcall(cjson.decode, string.match(entry or '', '^[^\n]*'))
  if ok and type(header) == 'table' then
    return header
  end
  return nil
end

-- push_dead_letter(key, entry, newest_at, max, max_age_ms, now_ms): add `entry` at the list's
-- newest end ('left' or 'right'), then cap and age it. Aging pops from the oldest end, a
-- bounded number per call, so the script stays short. Returns how many entries were dropped
-- (the caller counts them in its stats).
local function push_dead_letter(key, entry, newest_at, max, max_age_ms, now_ms)
  local left = newest_at == 'left'
  local length = redis.call(left and 'LPUSH' or 'RPUSH', key, entry)
  local dropped = 0
  if length > max then
    if left then
      redis.call('LTRIM', key, 0, max - 1)
    else
      redis.call('LTRIM', key, -max, -1)
    end
    dropped = length - max
  end
  for _ = 1, 100 do
    local header = dead_letter_header(redis.call('LINDEX', key, left and -1 or 0))
    local at = header and tonumber(header['at'])
    if not at or at >= now_ms - max_age_ms then
      break
    end
    redis.call(left and 'RPOP' or 'LPOP', key)
    dropped = dropped + 1
  end
  return dropped
end

-- bury_head(q, token, message_id, error_text, attempts, reason, now_ms): move a conversation's
-- head message to its shard's dead letters: one JSON line (what happened), then the record byte
-- for byte, like the queued record itself (the raw WAHA body never goes through a JSON encoder).
-- `q` names the keys (messages, bodies, attempts, stats, dlq) and the limits (dlq_max,
-- dlq_max_age_ms); what the cap drops is counted in the shard's stats (`dead_dropped`).
local function bury_head(q, token, message_id, error_text, attempts, reason, now_ms)
  local header = cjson.encode({
    v = 1, id = message_id, conversation = token, error = error_text,
    attempts = attempts, at = now_ms, reason = reason,
  })
  local record = redis.call('HGET', q.bodies, message_id) or ''
  local dropped = push_dead_letter(
    q.dlq, header .. '\n' .. record, 'left', q.dlq_max, q.dlq_max_age_ms, now_ms)
  if dropped > 0 then
    redis.call('HINCRBY', q.stats, 'dead_dropped', dropped)
  end
  redis.call('RPOP', q.messages)
  redis.call('HDEL', q.bodies, message_id)
  redis.call('HDEL', q.attempts, message_id)
  redis.call('HINCRBY', q.stats, 'waiting', -1)
end
