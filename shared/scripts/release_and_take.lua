#!lua
-- release_and_take: release_conversation to the back of the line, then, in the same step, move
-- the conversation now at the front of the shard's line into `claimed`, as the BLMOVE a free
-- slot would send next does. The slot claims it (claim_conversation.lua) without a BLMOVE
-- round trip of its own: under load the line is rarely empty when a turn ends.
-- The take happens whether or not the release was still ours: either way the slot is free.
-- A lost answer leaves the taken token in `claimed`, where the reaper hands it back, as for a
-- BLMOVE whose answer was lost; so a retry must not take again (QueueConsumer.release_and_take).
-- KEYS[1..5]: as release_turn (lib/turn_end.lua) reads them; KEYS[6]: the shard's `claimed`.
-- ARGV: the conversation's token, the holder's fence.
-- Returns {1 released or 0 not ours any more, the taken token or false when the line is empty}.
--#include turn_end

local released = release_turn(ARGV[1], ARGV[2], false)
return {released, redis.call('LMOVE', KEYS[4], KEYS[6], 'RIGHT', 'LEFT')}
