-- lib/fence: the conversation's fence. It grows with every lease and every reaping, so a holder
-- whose lease was taken away presents an old fence and is refused by ack, extend, release and
-- fail. It is drawn from the shard's counter, so it also grows across the conversation's idle
-- periods, when its meta is gone.

-- draw_fence(fence_key, previous): the next fence from the shard's counter, never at or below
-- `previous` (the meta's own, possibly written by a version without the counter; nil if none).
local function draw_fence(fence_key, previous)
  local fence = redis.call('INCR', fence_key)
  previous = tonumber(previous)
  if previous and fence <= previous then
    fence = previous + 1
    redis.call('SET', fence_key, fence)
  end
  return fence
end

-- keep_fence(fence_key, fence): before a meta is deleted (the conversation goes idle), carry its
-- fence into the shard's counter when it is higher (one written by an older version).
local function keep_fence(fence_key, fence)
  fence = tonumber(fence)
  if fence and fence > (tonumber(redis.call('GET', fence_key)) or 0) then
    redis.call('SET', fence_key, fence)
  end
end

-- leased_meta(meta_key, fence, ...): the meta's 'fence', 'state' and the fields named, or nil
-- when the conversation is not leased under `fence` (the caller was fenced out).
local function leased_meta(meta_key, fence, ...)
  local meta = redis.call('HMGET', meta_key, 'fence', 'state', ...)
  if meta[1] ~= fence or meta[2] ~= 'leased' then
    return nil
  end
  return meta
end
