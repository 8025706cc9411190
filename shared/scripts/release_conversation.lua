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
--#include fence
--#include turn_end

-- No expiry check: a holder past its deadline but not yet reaped still knows best that it has
-- stopped; the state check keeps a retried release from queueing the conversation twice.
if not leased_meta(meta_key, fence) then
  return 0
end
redis.call('ZREM', leases_key, token)
redis.call('HDEL', meta_key, 'owner', 'lease_until')
ready_or_idle(meta_key, messages_key, ready_key, token, to_front, fence_key, fence)
return 1
