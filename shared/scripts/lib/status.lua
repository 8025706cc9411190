-- lib/status: a message's delivery status only moves forward. The same ranking as
-- shared/delivery_status.py STATUS_RANK (tests/shared/test_delivery_status.py keeps them equal).
local status_rank = {received = 0, queued = 0, pending = 1, sent = 2, server = 3, device = 4,
                     read = 5, played = 6, error = 7, failed = 7}

-- advance_status(hash, field, status): sets `field` of `hash` to `status` when that moves it
-- forward; true when it did.
local function advance_status(hash, field, status)
  local current = redis.call('HGET', hash, field)
  if (status_rank[status] or -1) > (status_rank[current] or -1) then
    redis.call('HSET', hash, field, status)
    return true
  end
  return false
end
