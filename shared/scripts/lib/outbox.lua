-- lib/outbox: a conversation's replies waiting for WAHA, oldest (the next to send) at the left,
-- each a JSON object with its id (`mid`).

-- outbox_head(outbox_key, mid): the head reply as a table when it is reply `mid`; else nil
-- (the outbox is empty, or its head is another reply: the call is a repeat or too late).
local function outbox_head(outbox_key, mid)
  local head = redis.call('LINDEX', outbox_key, 0)
  if not head then
    return nil
  end
  local entry = cjson.decode(head)
  if entry['mid'] ~= mid then
    return nil
  end
  return entry
end
