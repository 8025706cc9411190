#!lua
-- replay_dead_letter: put one conversation's dead letters back at the head of it, in the order
-- they were queued (they are handled next, with fresh attempts), and make the conversation
-- claimable if it was idle. All of them in one step: replayed one by one, a worker could take
-- the newer before the older is back, and the chat's order would be lost (found by an audit).
-- Refused while the conversation is leased: inserting a head under a holder's feet would make
-- it ack out of order. Returns -1 (conversation busy: try again shortly), or for each letter
-- given, in order: 1 replayed, 0 no such dead letter (already replayed or dropped).
local dlq_key = KEYS[1]        -- the shard's dead letters
local messages_key = KEYS[2]   -- the conversation's message ids, oldest at the right
local bodies_key = KEYS[3]     -- message id -> record
local attempts_key = KEYS[4]   -- message id -> attempts so far
local meta_key = KEYS[5]       -- the conversation's state
local ready_key = KEYS[6]      -- the shard's claimable conversations (front at the right)
local stats_key = KEYS[7]      -- the shard's counters
local token = ARGV[1]
-- ARGV[2..]: (entry exactly as stored, message id, record) per letter, oldest first.
local count = (#ARGV - 1) / 3

local results = {}
local any = false
for i = 1, count do
  results[i] = 0
  if redis.call('LPOS', dlq_key, ARGV[3 * i - 1]) then
    results[i] = 1
    any = true
  end
end
if not any then
  return results  -- all gone already: nothing to wait for
end
local state = redis.call('HGET', meta_key, 'state')
if state == 'leased' then
  return -1
end
-- Newest first: each goes to the head (the right), so the oldest ends up handled first.
for i = count, 1, -1 do
  local entry = ARGV[3 * i - 1]
  local message_id = ARGV[3 * i]
  local record = ARGV[3 * i + 1]
  if results[i] == 1 then
    redis.call('LREM', dlq_key, 1, entry)
    if redis.call('HSETNX', bodies_key, message_id, record) == 1 then
      redis.call('RPUSH', messages_key, message_id)
      redis.call('HDEL', attempts_key, message_id)
      redis.call('HINCRBY', stats_key, 'waiting', 1)
    end
  end
end
if not state or state == 'idle' then
  redis.call('HSET', meta_key, 'state', 'ready')
  redis.call('RPUSH', ready_key, token)
end
return results
