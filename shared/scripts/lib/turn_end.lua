-- lib/turn_end: where a conversation goes when a turn ends without a holder.
--#include fence

-- ready_or_idle(meta_key, messages_key, ready_key, token, front, fence_key, fence): with
-- messages left it is ready again, at the front of the ready list (its right end) when `front`,
-- else at the back; with none it goes idle: no meta (the fence lives on in the shard's counter,
-- carried there first when `fence_key` is given). Returns true when it is ready.
local function ready_or_idle(meta_key, messages_key, ready_key, token, front, fence_key, fence)
  if redis.call('LLEN', messages_key) > 0 then
    redis.call('HSET', meta_key, 'state', 'ready')
    redis.call(front and 'RPUSH' or 'LPUSH', ready_key, token)
    return true
  end
  if fence_key then
    keep_fence(fence_key, fence)
  end
  redis.call('DEL', meta_key)
  return false
end

-- release_turn(token, fence, front): the holder under `fence` ends its turn: the lease goes,
-- and the conversation is ready again (ready_or_idle) or idle. For the release scripts, whose
-- KEYS[1..5] are: the conversation's meta and messages, the shard's leases, ready list and
-- fencing counter (QueueConsumer._end_turn). Returns 1 released; 0 not ours any more (fenced
-- out, or already released by a retried call). No expiry check: a holder past its deadline
-- but not yet reaped still knows best that it has stopped; the state check keeps a retried
-- release from queueing the conversation twice.
local function release_turn(token, fence, front)
  local meta_key, messages_key, leases_key, ready_key, fence_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
  if not leased_meta(meta_key, fence) then
    return 0
  end
  redis.call('ZREM', leases_key, token)
  redis.call('HDEL', meta_key, 'owner', 'lease_until')
  ready_or_idle(meta_key, messages_key, ready_key, token, front, fence_key, fence)
  return 1
end
