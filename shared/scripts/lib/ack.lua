-- lib/ack: the lease holder's ack of its conversation's head message, written once for
-- ack_message.lua (one message, with the handler's writes) and ack_messages.lua (several that
-- committed nothing): fenced, within the lease, only as the head, and "already acked" first,
-- so repeating a call whose answer was lost is safe.

-- ack_queue(): the conversation's keys every ack script takes first, KEYS[1..6], by name.
local function ack_queue()
  return {
    meta = KEYS[1],       -- the conversation's state, fence, lease_until
    messages = KEYS[2],   -- its message ids, oldest at the right
    bodies = KEYS[3],     -- message id -> record
    attempts = KEYS[4],   -- message id -> attempts so far
    stats = KEYS[5],      -- the shard's counters
    reaped = KEYS[6],     -- the last ack of a lease the reaper took back (reap_expired_lease.lua)
  }
end

-- ack_head(queue, fence, message_id, now_ms, apply_writes): ack `message_id` under `fence`.
-- Returns 1 acked (`apply_writes`, when given, ran just before the message was removed); 2
-- already acked (a retry whose first answer was lost), lease still good; 3 already acked, but
-- the lease has run out or been taken back since (the work stands; the turn must end); 0 fenced
-- out (the lease was taken away); -1 lease expired; -2 the message is not the conversation's
-- head. Refusals (0, -1, -2) change nothing.
-- Each ack leaves `last_ack` = "<fence>:<message id>" in the meta: it is how a retry knows its
-- work was committed whatever happened to the lease since, and how the reaper knows the holder
-- was between messages (see reap_expired_lease.lua). The meta does not outlive the reaper for
-- long (it deletes it when no message is left; the next holder's acks overwrite it), so the
-- reaper copies that mark to `queue.reaped`, read only on a refusal: a fenced-out holder whose
-- mark it is learns its work stands (3), not that it was lost.
local function ack_head(queue, fence, message_id, now_ms, apply_writes)
  local meta = redis.call('HMGET', queue.meta, 'fence', 'state', 'lease_until', 'last_ack')
  local live = meta[1] == fence and meta[2] == 'leased' and (tonumber(meta[3]) or 0) >= now_ms

  -- "Already acked" comes first: a retry whose first answer was lost must learn that its work
  -- is committed even when the lease ran out (or was reaped) meanwhile. Reporting LeaseLost
  -- there would drop committed work as lost and leave the lease to the reaper.
  local acked = meta[4] == fence .. ':' .. message_id
  if not acked and meta[1] == fence and meta[2] == 'leased'
      and redis.call('LINDEX', queue.messages, -1) ~= message_id
      and redis.call('HEXISTS', queue.bodies, message_id) == 0 then
    -- No marker (an ack by an older version): only the lease holder removes messages, so a
    -- missing body under our own lease means our earlier call went through.
    acked = true
  end
  if acked then
    return live and 2 or 3
  end

  if meta[1] ~= fence or meta[2] ~= 'leased' then
    if redis.call('GET', queue.reaped) == fence .. ':' .. message_id then
      return 3
    end
    return 0
  end
  if not live then
    return -1
  end
  if redis.call('LINDEX', queue.messages, -1) ~= message_id then
    return -2
  end

  if apply_writes then
    apply_writes()
  end
  redis.call('RPOP', queue.messages)
  redis.call('HDEL', queue.bodies, message_id)
  redis.call('HDEL', queue.attempts, message_id)
  redis.call('HINCRBY', queue.stats, 'waiting', -1)
  redis.call('HSET', queue.meta, 'last_ack', fence .. ':' .. message_id)
  return 1
end
