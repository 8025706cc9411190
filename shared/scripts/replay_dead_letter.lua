#!lua
-- replay_dead_letter: put a dead letter back at the head of its conversation (it is handled
-- next, with fresh attempts) and make the conversation claimable if it was idle.
-- Refused while the conversation is leased: inserting a head under a holder's feet would make
-- it ack out of order. Returns 1 replayed; 0 no such dead letter (already replayed or dropped);
-- -1 conversation busy (try again shortly).
local dlq_key = KEYS[1]        -- the shard's dead letters
local messages_key = KEYS[2]   -- the conversation's message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local meta_key = KEYS[5]       -- the conversation's state
local ready_key = KEYS[6]      -- the shard's claimable conversations (front at the right)
local stats_key = KEYS[7]      -- the shard's counters
local entry = ARGV[1]          -- the dead letter exactly as stored
local message_id = ARGV[2]
local token = ARGV[3]
local record = ARGV[4]

if not redis.call('LPOS', dlq_key, entry) then
  return 0
end
local state = redis.call('HGET', meta_key, 'state')
if state == 'leased' then
  return -1
end
redis.call('LREM', dlq_key, 1, entry)
if redis.call('HSETNX', bodies_key, message_id, record) == 1 then
  redis.call('RPUSH', messages_key, message_id)
  redis.call('HDEL', attempts_key, message_id)
  redis.call('HINCRBY', stats_key, 'waiting', 1)
end
if not state or state == 'idle' then
  redis.call('HSET', meta_key, 'state', 'ready')
  redis.call('RPUSH', ready_key, token)
end
return 1
