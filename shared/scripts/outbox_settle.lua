#!lua
-- outbox_settle: a sender's turn on a conversation ends. Releases its delivery lock (only if it
-- still holds it) and takes the conversation off the pending index if its outbox is empty.
-- Returns the replies left in the outbox.
local lock_key = KEYS[1]
local outbox_key = KEYS[2]
local pending_key = KEYS[3]
local lock_token = ARGV[1]
local token = ARGV[2]

if redis.call('GET', lock_key) == lock_token then
  redis.call('DEL', lock_key)
end
local left = redis.call('LLEN', outbox_key)
if left == 0 then
  redis.call('ZREM', pending_key, token)
end
return left
