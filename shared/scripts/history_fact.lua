#!lua flags=no-writes
-- history_fact: the history entry a WhatsApp id names, and one fact about it, in one round trip.
-- Apart they were two HGETs in a row (the fact's field needs the entry's id), and every reply
-- brings two acks. Read-only: the turn's commit writes what follows from it.
-- KEYS[1]: the conversation's history meta (histmeta).
-- ARGV[1]: the field naming the entry (`w:<short WhatsApp id>`); ARGV[2]: the fact (`status`,
-- `reactions`): read from `<entry>:<fact>`; ARGV[3]: where the fact waits while the id is not
-- recorded yet (`w:<id>:ack`), or "" for nowhere.
-- Returns {entry id or nil, the fact or nil}.
local meta_key = KEYS[1]
local mid = redis.call('HGET', meta_key, ARGV[1])
if mid then
  return {mid, redis.call('HGET', meta_key, mid .. ':' .. ARGV[2])}
end
if ARGV[3] ~= '' then
  return {false, redis.call('HGET', meta_key, ARGV[3])}
end
return {false, false}
