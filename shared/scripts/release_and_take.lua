#!lua
-- release_and_take: release_conversation to the back of the line, then, in the same step, move
-- the conversation now at the front of the shard's line into `claimed`, as the BLMOVE a free
-- slot would send next does. The slot claims it (claim_conversation.lua) without a BLMOVE
-- round trip of its own: under load the line is rarely empty when a turn ends.
-- The take happens whether or not the release was still ours: either way the slot is free.
-- A lost answer leaves the taken token in `claimed`, where the reaper hands it back, as for a
-- BLMOVE whose answer was lost; so a retry must not take again (QueueConsumer.release_and_take).
-- Returns {1 released or 0 not ours any more, the taken token or false when the line is empty}.
local meta_key = KEYS[1]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[2]   -- its message ids
local leases_key = KEYS[3]     -- the shard's conversation -> lease deadline
local ready_key = KEYS[4]      -- the shard's claimable conversations (front at the right)
local fence_key = KEYS[5]      -- the shard's fencing counter
local claimed_key = KEYS[6]    -- the shard's popped-but-not-leased tokens
local token = ARGV[1]
local fence = ARGV[2]
--#include turn_end

local released = release_turn(meta_key, messages_key, leases_key, ready_key, fence_key, token,
                              fence, false)
return {released, redis.call('LMOVE', ready_key, claimed_key, 'RIGHT', 'LEFT')}
