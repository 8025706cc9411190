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
