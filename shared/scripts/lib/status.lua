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

-- record_sent_id(meta, mid, waha_id, short_id): the history meta of one of our replies that
-- WhatsApp has: its WhatsApp id both ways (`<mid>:waha_id`, `w:<short id>` -> mid), and an ack
-- that came before this step (WAHA may deliver the ack webhook before its answer to sendText
-- reached us: parked as `w:<short id>:ack`) applied. Nothing without a short id.
local function record_sent_id(meta_key, mid, waha_id, short_id)
  if short_id == '' then
    return
  end
  redis.call('HSET', meta_key, mid .. ':waha_id', waha_id, 'w:' .. short_id, mid)
  local early = redis.call('HGET', meta_key, 'w:' .. short_id .. ':ack')
  if early then
    advance_status(meta_key, mid .. ':status', early)
    redis.call('HDEL', meta_key, 'w:' .. short_id .. ':ack')
  end
end
