#!lua
-- release_conversation: the holder ends its turn. A conversation with messages left goes back
-- to the ready list — at the back after a normal turn (fairness: a chat with a long backlog
-- gets at most one batch per turn), at the front when handed back unhandled (shutdown). One
-- with none left becomes idle: its meta is deleted (the fence lives on in the shard's counter).
-- Returns 1 released; 0 not ours any more (fenced out, or already released by a retried call).
local meta_key = KEYS[1]       -- the conversation's state, fence, owner, lease_until
local messages_key = KEYS[2]   -- its message ids
local leases_key = KEYS[3]     -- the shard's conversation -> lease deadline
local ready_key = KEYS[4]      -- the shard's claimable conversations (front at the right)
local fence_key = KEYS[5]      -- the shard's fencing counter
local token = ARGV[1]
local fence = ARGV[2]
local to_front = ARGV[3] == 'front'
--#include turn_end

return release_turn(meta_key, messages_key, leases_key, ready_key, fence_key, token, fence,
                    to_front)
