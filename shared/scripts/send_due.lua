#!lua flags=no-writes
-- send_due: the conversations of one shard whose outbox is due and that no sender holds (no
-- delivery lock), oldest first, at most `limit` of them. Conversations held by a live sender
-- are stepped over instead of filling the answer, so an orphan (its sender died, its lock
-- expired) is never starved behind them. At most `scan` due entries are looked at per call,
-- from offset `from`; the answer says where to go on next time (0: the end was reached).
-- The lock keys share the pending index's hash tag (the shard's), so this is one slot.
-- Returns {tokens, next_from}.
local pending_key = KEYS[1]   -- the shard's conversations with something to send -> due (ms)
local now_ms = ARGV[1]
local limit = tonumber(ARGV[2])
local from = tonumber(ARGV[3])
local scan = tonumber(ARGV[4])
local lock_prefix = ARGV[5]   -- a conversation's lock key is lock_prefix .. token .. lock_suffix
local lock_suffix = ARGV[6]

local found = {}
local offset = from
local looked = 0
while looked < scan do
  local want = math.min(100, scan - looked)
  local page = redis.call('ZRANGE', pending_key, '-inf', now_ms, 'BYSCORE', 'LIMIT', offset, want)
  for _, token in ipairs(page) do
    offset = offset + 1
    looked = looked + 1
    if redis.call('EXISTS', lock_prefix .. token .. lock_suffix) == 0 then
      found[#found + 1] = token
      if #found >= limit then
        return {found, offset}
      end
    end
  end
  if #page < want then
    return {found, 0}
  end
end
return {found, offset}
