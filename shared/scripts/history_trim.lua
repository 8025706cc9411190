#!lua
-- history_trim: bound a conversation's history. Removes the oldest entries of the stream that
-- are older than the retention (ARGV[1], ms) or beyond the length cap (ARGV[2], 0 = none), at
-- most ARGV[3] per call, together with their fields in the meta hash (status, WhatsApp id,
-- edit, revoke, reactions, the WhatsApp-id lookup and a parked ack): the meta hash shrinks
-- with the stream instead of keeping every message's facts while the conversation is active.
-- Then, when the meta hash holds far more fields than its entries can own (facts written for
-- messages already trimmed, acks parked for messages never recorded), it is compacted.
-- Returns {trimmed, trimmed_by_length (within the retention: data loss), compacted fields,
-- more (1: call again, this call stopped at its limit)}.
local stream_key = KEYS[1]
local meta_key = KEYS[2]
local min_ms = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
local batch = tonumber(ARGV[3])

local NAMES = {'status', 'waha_id', 'edit', 'revoked', 'reactions'}
local FIELDS_PER_ENTRY = 7   -- the names above, w:<id> and w:<id>:ack

-- The WhatsApp id inside WAHA's serialized form (engine/waha_client.py short_message_id).
local function short_id(waha_id)
  if waha_id:sub(1, 5) == 'true_' or waha_id:sub(1, 6) == 'false_' then
    local parts = {}
    for part in string.gmatch(waha_id, '[^_]+') do
      parts[#parts + 1] = part
    end
    if #parts >= 3 then
      return parts[3]
    end
  end
  return waha_id
end

local function mid_of(values)
  for i = 1, #values, 2 do
    if values[i] == 'mid' then
      return values[i + 1]
    end
  end
  return nil
end

local length = redis.call('XLEN', stream_key)
local over = 0
if max_len > 0 and length > max_len then
  over = length - max_len
end
local trimmed, by_length = 0, 0
-- The entries beyond the cap, and a few more to see whether they are past the retention (a
-- conversation with nothing to trim costs one small read).
local count = math.min(batch, over + 16)
local entries = redis.call('XRANGE', stream_key, '-', '+', 'COUNT', count)
for i, entry in ipairs(entries) do
  local id = entry[1]
  local ms = tonumber(string.match(id, '^(%d+)'))
  local expired = ms < min_ms
  if not expired and i > over then
    break
  end
  redis.call('XDEL', stream_key, id)
  trimmed = trimmed + 1
  if not expired then
    by_length = by_length + 1
  end
  local mid = mid_of(entry[2])
  if mid then
    local waha_id = redis.call('HGET', meta_key, mid .. ':waha_id')
    local fields = {}
    for _, name in ipairs(NAMES) do
      fields[#fields + 1] = mid .. ':' .. name
    end
    for _, short in ipairs({mid, waha_id and short_id(waha_id) or nil}) do
      if redis.call('HGET', meta_key, 'w:' .. short) == mid then
        fields[#fields + 1] = 'w:' .. short
        fields[#fields + 1] = 'w:' .. short .. ':ack'
      end
    end
    redis.call('HDEL', meta_key, unpack(fields))
  end
end

-- Compaction: rare (only once orphans outnumber what the entries can own), so its cost
-- (every field and entry once) is spread over the writes that made the orphans.
local compacted = 0
local kept = redis.call('XLEN', stream_key)
if redis.call('HLEN', meta_key) > FIELDS_PER_ENTRY * kept + 64 then
  local live = {}
  for _, entry in ipairs(redis.call('XRANGE', stream_key, '-', '+')) do
    local mid = mid_of(entry[2])
    if mid then
      live[mid] = true
    end
  end
  for _, field in ipairs(redis.call('HKEYS', meta_key)) do
    local drop = false
    if field:sub(1, 2) == 'w:' then
      if field:sub(-4) == ':ack' then
        drop = true   -- parked for a message that was never recorded
      else
        drop = not live[redis.call('HGET', meta_key, field)]
      end
    else
      local mid = string.match(field, '^(.*):[a-z_]+$')
      drop = mid ~= nil and not live[mid]
    end
    if drop then
      redis.call('HDEL', meta_key, field)
      compacted = compacted + 1
    end
  end
end
local more = 0
if trimmed == count then
  more = 1
end
return {trimmed, by_length, compacted, more}
